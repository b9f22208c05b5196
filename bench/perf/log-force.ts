/**
 * Forced appends to each log alone, side by side: the file log (the hardware's group-commit
 * ceiling: appends per fdatasync) and the Postgres log in a durable Postgres server (a forced
 * append is a committed transaction with synchronous_commit on; concurrent appends share one
 * multi-row INSERT and one commit).
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { LeaseStore } from '../../src/cluster/lease-store.js';
import { FileLog } from '../../src/log/file-log.js';
import { PostgresLog } from '../../src/log/postgres-log.js';
import { migrate } from '../../src/log/postgres-log-schema.js';
import { freshDatabase } from '../../test/support/databases.js';
import { PostgresServer } from '../../test/support/postgres-server.js';
import { measure } from './measure.js';
import type { Row } from '../run.js';

const RECORD = { t: 'decision', id: '00000000-0000-4000-8000-000000000000', decision: 'commit', branches: [] };
const LEVELS = [1, 16, 64];

interface ForcedLog {
  append(payload: unknown, options: { force: boolean }): Promise<void>;
  stats(): { fsyncs: number; appendedRecords: number };
  close(): Promise<void>;
}

async function cell(variant: string, clients: number, log: ForcedLog, unit: string): Promise<Row> {
  const before = log.stats();
  const measured = await measure(clients, () => log.append(RECORD, { force: true }));
  const after = log.stats();
  const perFlush = (after.appendedRecords - before.appendedRecords) / Math.max(1, after.fsyncs - before.fsyncs);
  return { scenario: 'log-force', variant, clients, ...measured, note: `${perFlush.toFixed(1)} appends per ${unit}` };
}

export async function logForce(): Promise<Row[]> {
  const rows: Row[] = [];
  for (const clients of LEVELS) {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tcx-bench-log-'));
    const { log } = await FileLog.open({ dir, snapshot: () => [] });
    try {
      rows.push(await cell('file', clients, log, 'fdatasync'));
    } finally {
      await log.close();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }
  const server = await PostgresServer.start({ name: 'bench-log-force', durable: true });
  const pool = new pg.Pool({ connectionString: await freshDatabase(server.url(), 'wal'), max: 2 });
  try {
    const client = await pool.connect();
    await migrate(client).finally(() => client.release());
    const leases = new LeaseStore(pool, 600_000);
    for (const clients of LEVELS) {
      const coordinatorId = `bench-${clients}`;
      const lease = await leases.acquire(coordinatorId, coordinatorId, 'http://127.0.0.1:1', true);
      if (lease === undefined) throw new Error('log-force: no lease');
      const connectionString = pool.options.connectionString as string;
      const { log } = await PostgresLog.open({ url: connectionString, coordinatorId, epoch: lease.epoch, snapshot: () => [], maxRecordsBeforeCompaction: 10_000_000 });
      try {
        rows.push(await cell('postgres', clients, log, 'commit'));
      } finally {
        await log.close();
      }
    }
  } finally {
    await pool.end();
    await server.destroy();
  }
  return rows;
}
