/**
 * `npm run bench`: measures the coordinator against baselines taken in the same
 * run, on the same servers, and prints a table (and writes JSON to bench-results/).
 *
 *   log-force          forced appends to the file log: how many share one fdatasync
 *   pg-plain           two UPDATEs in two databases, plain COMMIT each (not atomic)
 *   pg-2pc-by-hand     the same with PREPARE TRANSACTION + COMMIT PREPARED, no coordinator
 *   coordinator-2pc    the same through the coordinator's HTTP API (one request per transfer)
 *   coordinator-3pc    the same with protocol 3pc (can-commit = PREPARE, pre-commit, do-commit)
 *
 * Servers: Postgres clusters started from the machine's binaries, or
 * TCX_BENCH_PG_URL_A / TCX_BENCH_PG_URL_B. Duration per cell: TCX_BENCH_SECONDS (default 5).
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { request } from 'undici';
import { buildServer } from '../src/api/server.js';
import { loadConfig } from '../src/config.js';
import { Coordinator } from '../src/coordinator/coordinator.js';
import { FileLog } from '../src/log/file-log.js';
import { createLogger } from '../src/logger.js';
import { createAccounts, freshDatabase } from '../test/support/databases.js';
import { PostgresServer } from '../test/support/postgres-server.js';

const SECONDS = Number(process.env.TCX_BENCH_SECONDS ?? 5);

interface Row {
  readonly scenario: string;
  readonly clients: number;
  readonly ops: number;
  readonly perSecond: number;
  readonly p50Ms: number;
  readonly p99Ms: number;
  readonly note?: string;
}

async function measure(clients: number, op: (client: number, i: number) => Promise<void>): Promise<Omit<Row, 'scenario' | 'clients'>> {
  const latencies: number[] = [];
  const end = Date.now() + SECONDS * 1000;
  const started = process.hrtime.bigint();
  await Promise.all(
    Array.from({ length: clients }, async (_, c) => {
      for (let i = 0; Date.now() < end; i++) {
        const t = process.hrtime.bigint();
        await op(c, i);
        latencies.push(Number(process.hrtime.bigint() - t) / 1e6);
      }
    }),
  );
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  latencies.sort((a, b) => a - b);
  const pct = (p: number): number => Math.round((latencies[Math.min(latencies.length - 1, Math.floor(latencies.length * p))] ?? 0) * 100) / 100;
  return { ops: latencies.length, perSecond: Math.round(latencies.length / seconds), p50Ms: pct(0.5), p99Ms: pct(0.99) };
}

async function logForce(rows: Row[]): Promise<void> {
  for (const clients of [1, 16, 64]) {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tcx-bench-log-'));
    const { log } = await FileLog.open({ dir, snapshot: () => [] });
    const record = { t: 'decision', id: '00000000-0000-4000-8000-000000000000', decision: 'commit', branches: [] };
    const r = await measure(clients, () => log.append(record, { force: true }));
    const fsyncs = log.stats().fsyncs;
    await log.close();
    fs.rmSync(dir, { recursive: true, force: true });
    rows.push({ scenario: 'log-force', clients, ...r, note: `${(r.ops / Math.max(1, fsyncs)).toFixed(1)} appends per fdatasync` });
  }
}

async function main(): Promise<void> {
  const servers: PostgresServer[] = [];
  let urlA = process.env.TCX_BENCH_PG_URL_A;
  let urlB = process.env.TCX_BENCH_PG_URL_B;
  if (urlA === undefined || urlB === undefined) {
    const [a, b] = await Promise.all([PostgresServer.start({ name: 'bench-a' }), PostgresServer.start({ name: 'bench-b' })]);
    servers.push(a, b);
    urlA = a.url();
    urlB = b.url();
  }
  const dbA = await freshDatabase(urlA, 'bench');
  const dbB = await freshDatabase(urlB, 'bench');
  const accounts = Object.fromEntries(Array.from({ length: 64 }, (_, i) => [`acct${i}`, 1_000_000_000]));
  await createAccounts(dbA, accounts);
  await createAccounts(dbB, accounts);
  const rows: Row[] = [];
  await logForce(rows);

  const poolA = new pg.Pool({ connectionString: dbA, max: 20 });
  const poolB = new pg.Pool({ connectionString: dbB, max: 20 });
  for (const pool of [poolA, poolB]) pool.on('error', (err) => console.error(`bench pool: ${err.message}`));
  const update = 'UPDATE accounts SET balance = balance + $1 WHERE id = $2';
  for (const clients of [1, 16]) {
    rows.push({
      scenario: 'pg-plain',
      clients,
      ...(await measure(clients, async (c) => {
        const account = `acct${c}`;
        await Promise.all([poolA.query(update, [-1, account]), poolB.query(update, [1, account])]);
      })),
    });
  }
  let gidNo = 0;
  for (const clients of [1, 16]) {
    rows.push({
      scenario: 'pg-2pc-by-hand',
      clients,
      ...(await measure(clients, async (c) => {
        const account = `acct${c}`;
        const gid = `bench:${process.pid}:${gidNo++}`;
        await Promise.all(
          [
            [poolA, -1],
            [poolB, 1],
          ].map(async ([pool, delta]) => {
            const client = await (pool as pg.Pool).connect();
            try {
              await client.query('BEGIN');
              await client.query(update, [delta, account]);
              await client.query(`PREPARE TRANSACTION '${gid}'`);
            } finally {
              client.release();
            }
          }),
        );
        await Promise.all([poolA.query(`COMMIT PREPARED '${gid}'`), poolB.query(`COMMIT PREPARED '${gid}'`)]);
      })),
    });
  }

  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'tcx-bench-coord-'));
  const config = loadConfig({ TCX_DATA_DIR: dataDir, TCX_LOG_LEVEL: 'warn', TCX_PORT: '0' });
  const logger = createLogger({ level: 'warn' });
  const coordinator = await Coordinator.start(config, logger);
  const app = buildServer(coordinator, logger);
  const base = await app.listen({ host: '127.0.0.1', port: 0 });
  const post = async (url: string, body: unknown): Promise<{ status: number; json: { state?: string } }> => {
    const res = await request(`${base}${url}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
    return { status: res.statusCode, json: (await res.body.json()) as { state?: string } };
  };
  await post('/v1/participants', { name: 'a', kind: 'postgres', connectionString: dbA });
  await post('/v1/participants', { name: 'b', kind: 'postgres', connectionString: dbB });
  const fsyncsBefore = coordinator.health().log.fsyncs;
  const perProtocol: Record<string, { ops: number; fsyncs: number }> = {};
  for (const protocol of ['2pc', '3pc'] as const) {
    const before = coordinator.health().log.fsyncs;
    for (const clients of [1, 16]) {
      const r = await measure(clients, async (c) => {
        const account = `acct${c}`;
        const res = await post('/v1/transactions', {
          protocol,
          branches: [
            { participant: 'a', operations: [{ sql: update, params: [-1, account] }] },
            { participant: 'b', operations: [{ sql: update, params: [1, account] }] },
          ],
          commit: true,
        });
        if (res.json.state !== 'committed') throw new Error(`transfer ended ${res.status} ${JSON.stringify(res.json)}`);
      });
      rows.push({ scenario: `coordinator-${protocol}`, clients, ...r });
    }
    perProtocol[protocol] = {
      ops: rows.filter((r) => r.scenario === `coordinator-${protocol}`).reduce((a, r) => a + r.ops, 0),
      fsyncs: coordinator.health().log.fsyncs - before,
    };
  }
  const fsyncs = coordinator.health().log.fsyncs - fsyncsBefore;
  const coordOps = rows.filter((r) => r.scenario.startsWith('coordinator-')).reduce((a, r) => a + r.ops, 0);
  await app.close();
  await coordinator.stop(2_000);
  await poolA.end();
  await poolB.end();

  const byHand = (clients: number): number => rows.find((r) => r.scenario === 'pg-2pc-by-hand' && r.clients === clients)?.perSecond ?? 0;
  console.log(`\nbench: ${SECONDS}s per cell, ${os.cpus().length} cores, node ${process.version}\n`);
  console.log('scenario          clients      ops    tx/s   p50 ms   p99 ms  note');
  for (const r of rows) {
    const note =
      r.note ?? (r.scenario.startsWith('coordinator-') ? `${Math.round((100 * r.perSecond) / Math.max(1, byHand(r.clients)))}% of 2PC by hand` : '');
    console.log(
      `${r.scenario.padEnd(17)} ${String(r.clients).padStart(7)} ${String(r.ops).padStart(8)} ${String(r.perSecond).padStart(7)} ${String(r.p50Ms).padStart(8)} ${String(r.p99Ms).padStart(8)}  ${note}`,
    );
  }
  console.log(`\ncoordinator log: ${fsyncs} fdatasyncs for ${coordOps} committed transactions (${(coordOps / Math.max(1, fsyncs)).toFixed(2)} per fsync)`);
  for (const [protocol, p] of Object.entries(perProtocol)) {
    console.log(`  ${protocol}: ${p.fsyncs} fdatasyncs for ${p.ops} transactions (${(p.fsyncs / Math.max(1, p.ops)).toFixed(2)} per transaction)`);
  }
  fs.mkdirSync('bench-results', { recursive: true });
  const file = path.join('bench-results', `bench-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
  fs.writeFileSync(file, JSON.stringify({ seconds: SECONDS, node: process.version, rows, coordinatorFsyncs: fsyncs, perProtocol }, null, 2));
  console.log(`wrote ${file}`);
  for (const server of servers) await server.destroy();
  fs.rmSync(dataDir, { recursive: true, force: true });
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
