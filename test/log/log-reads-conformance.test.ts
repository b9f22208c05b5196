/**
 * One set of reads (src/log/log-reads.ts), three ways of answering them, one suite: the
 * owner's CoordinatorLog over the file log, the owner's CoordinatorLog over the Postgres log,
 * and another instance reading that Postgres log from the database (SharedLogReader.reads).
 * The same records are written; every way answers the same — after the writes, after a
 * compaction (finished transactions move into sealed buckets), and after the owner reopens
 * its log (replay of a snapshot plus the records after it).
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { afterAll, describe, expect, inject, it } from 'vitest';
import { LeaseStore } from '../../src/cluster/lease-store.js';
import { SharedLogReader } from '../../src/cluster/shared-log-reader.js';
import { CoordinatorLog } from '../../src/coordinator/coordinator-log.js';
import type { LogReads } from '../../src/log/log-reads.js';
import type { BranchRecord, LogRecord } from '../../src/log/log-records.js';
import { migrate } from '../../src/log/postgres-log-schema.js';
import { silentLogger } from '../../src/logger.js';
import { freshDatabase } from '../support/databases.js';

const cleanup: (() => Promise<void>)[] = [];
afterAll(async () => {
  for (const c of cleanup.reverse()) await c().catch(() => undefined);
});

const ID = 'reads-1';
// Recent (whole seconds): finished transactions older than the retention window would be pruned at compaction.
const at = new Date(Math.floor(Date.now() / 1000) * 1000 - 60_000).toISOString();
const summary = { protocol: '2pc' as const, timeoutMs: 30_000, createdAt: at };
const messages = [{ subject: 'orders.created', data: { id: 1 } }];
const branch = (tx: string, n: number, extra: Partial<BranchRecord> = {}): BranchRecord => ({
  branchId: `b${n}`,
  participant: n === 1 ? 'bank' : 'events',
  kind: n === 1 ? 'postgres' : 'nats',
  gid: `tcx:${ID}:${tx}:${n}`,
  ...extra,
});

/** A committed and ended transaction, one decided and not ended, one only announced, one aborting with a forgotten branch, a manual resolution, a participant registered then removed. */
async function writeHistory(log: CoordinatorLog): Promise<void> {
  await log.force({ t: 'coordinator', coordinatorId: ID, at });
  for (const [name, kind] of [['bank', 'postgres'], ['events', 'nats'], ['old', 'redis']] as const) {
    await log.force({ t: 'participant-registered', participant: { name, kind, ...(kind === 'nats' || kind === 'redis' ? { url: `${kind}://127.0.0.1:1` } : { connectionString: 'postgres://u:p@127.0.0.1:1/bank' }), registeredAt: at } });
  }
  await log.force({ t: 'decision', id: 'tx-a', decision: 'commit', branches: [branch('tx-a', 1), branch('tx-a', 2, { payload: messages })], at, ...summary });
  log.record({ t: 'ended', id: 'tx-a', outcome: 'commit', at });
  await log.force({ t: 'decision', id: 'tx-c', decision: 'commit', branches: [branch('tx-c', 1), branch('tx-c', 2, { payload: messages })], at, ...summary });
  await log.force({ t: 'prepare-intent', id: 'tx-b', branches: [branch('tx-b', 2, { participant: 'svc', kind: 'http', payload: { amount: 5 } })], at, ...summary });
  await log.force({ t: 'prepare-intent', id: 'tx-d', branches: [branch('tx-d', 1), branch('tx-d', 2, { payload: messages })], at, ...summary });
  const forgotten: LogRecord = { t: 'branch-forgotten', id: 'tx-d', branchId: 'b2', participant: 'events', gid: `tcx:${ID}:tx-d:2`, reason: 'gone', actor: 'token:ops', at };
  await log.force(forgotten);
  await log.force({ t: 'manual-resolution', gid: 'tcx:lost:tx-9:1', transactionId: 'tx-9', participant: 'bank', outcome: 'commit', reason: 'OPS-7', actor: 'token:ops', at });
  await log.force({ t: 'participant-removed', name: 'old', at });
  await log.flush();
}

/** What a reader answers, in a form to compare. */
async function answers(r: LogReads) {
  const tx = async (id: string) => {
    const t = await r.transaction(id);
    return t === undefined ? undefined : { id: t.id, decision: t.decision ?? null, outcome: t.outcome ?? null, branches: t.branches.map((b) => ({ gid: b.gid, payload: b.payload ?? null })) };
  };
  return {
    coordinatorId: await r.coordinatorId(),
    participants: (await r.participants()).map((p) => `${p.name}:${p.kind}`).sort(),
    a: await tx('tx-a'),
    b: await tx('tx-b'),
    c: await tx('tx-c'),
    unknown: await tx('tx-nope'),
    unfinished: (await r.unfinished()).map((t) => t.id).sort(),
    forgotten: (await r.forgottenBranches('tx-d')).map((f) => `${f.branchId}:${f.reason}`),
    noneForgotten: await r.forgottenBranches('tx-a'),
    manual: (await r.manualResolution('lost', 'tx-9'))?.outcome,
    noManual: await r.manualResolution(ID, 'tx-a'),
  };
}

const EXPECTED = {
  coordinatorId: ID,
  participants: ['bank:postgres', 'events:nats'],
  // Finished: without the work it kept in the log (nothing needs it any more).
  a: { id: 'tx-a', decision: 'commit', outcome: 'commit', branches: [{ gid: `tcx:${ID}:tx-a:1`, payload: null }, { gid: `tcx:${ID}:tx-a:2`, payload: null }] },
  b: { id: 'tx-b', decision: null, outcome: null, branches: [{ gid: `tcx:${ID}:tx-b:2`, payload: { amount: 5 } }] },
  // Decided, not ended: its messages are there for phase 2.
  c: { id: 'tx-c', decision: 'commit', outcome: null, branches: [{ gid: `tcx:${ID}:tx-c:1`, payload: null }, { gid: `tcx:${ID}:tx-c:2`, payload: messages }] },
  unknown: undefined,
  unfinished: ['tx-b', 'tx-c', 'tx-d'],
  forgotten: ['b2:gone'],
  noneForgotten: [],
  manual: 'commit',
  noManual: undefined,
};

interface Way {
  readonly name: string;
  /** Opens the owner's log (a restart each time) and, for a shared log, a reader of it from the database. */
  open(): Promise<{ log: CoordinatorLog; shared?: LogReads }>;
}

const common = { segmentMaxBytes: 1 << 20, retentionMs: 86_400_000, maxRetainedTransactions: 10_000, logger: silentLogger() };

function fileWay(): Way {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tcx-reads-'));
  cleanup.push(async () => fs.rmSync(dir, { recursive: true, force: true }));
  return { name: 'file', open: async () => ({ log: (await CoordinatorLog.open({ dir, ...common })).log }) };
}

async function postgresWay(): Promise<Way> {
  const url = await freshDatabase(inject('pgUrlA'), 'reads');
  const pool = new pg.Pool({ connectionString: url, max: 3 });
  cleanup.push(() => pool.end());
  const client = await pool.connect();
  await migrate(client).finally(() => client.release());
  const leases = new LeaseStore(pool, 60_000);
  const reader = new SharedLogReader(pool, silentLogger());
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tcx-reads-'));
  cleanup.push(async () => fs.rmSync(dir, { recursive: true, force: true }));
  return {
    name: 'postgres',
    open: async () => {
      const lease = await leases.acquire(ID, ID, 'http://127.0.0.1:1', true);
      if (lease === undefined) throw new Error('lease not taken');
      const { log } = await CoordinatorLog.open({ dir, url, coordinatorId: ID, leaseEpoch: lease.epoch, leaseMs: 60_000, ...common });
      return { log, shared: reader.reads(ID) };
    },
  };
}

describe.each([
  ['file', async () => fileWay()],
  ['postgres', postgresWay],
] as const)('%s log: the reads', (_name, make) => {
  it('answer the same after the writes, after a compaction and after a reopen — from the owner and, for a shared log, from the database', async () => {
    const way = await make();
    let { log, shared } = await way.open();
    await writeHistory(log);
    expect(await answers(log)).toEqual(EXPECTED);
    // The shared reader keeps a loaded state for a second: wait it out between stages.
    const fromDatabase = async (): Promise<unknown> => {
      await new Promise((r) => setTimeout(r, 1_100));
      return answers(shared as LogReads);
    };
    if (shared !== undefined) expect(await fromDatabase()).toEqual(EXPECTED);

    await log.compact();
    expect(await answers(log)).toEqual(EXPECTED);
    if (shared !== undefined) expect(await fromDatabase()).toEqual(EXPECTED);

    await log.close();
    ({ log, shared } = await way.open());
    cleanup.push(() => log.close());
    expect(await answers(log)).toEqual(EXPECTED);
    if (shared !== undefined) expect(await fromDatabase()).toEqual(EXPECTED);
  }, 30_000);
});
