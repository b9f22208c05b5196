/**
 * Reading a coordinator id's transactions straight from the shared Postgres log (what other
 * instances do while no running coordinator answers for that id) gives what its owner says:
 * for transactions still in the log's records and for those a compaction moved into the
 * snapshot's finished buckets, read while compactions run. One no log holds is not found.
 */
import pg from 'pg';
import { afterAll, expect, inject, it } from 'vitest';
import { SharedLogReader } from '../../src/cluster/shared-log-reader.js';
import { createLogger } from '../../src/logger.js';
import { CoordinatorProcess } from '../support/coordinator-process.js';
import { createAccounts, eventually, freshDatabase, preparedGids, withClient } from '../support/databases.js';

const cleanup: (() => Promise<void>)[] = [];
afterAll(async () => {
  for (const f of cleanup.reverse()) await f();
});

const sql = (delta: number, account = 'r1') => ({ sql: 'UPDATE accounts SET balance = balance + $1 WHERE id = $2', params: [delta, account] });

it("answers as the owner does, for records and for finished transactions compacted into the snapshot, read while compactions run", async () => {
  const logUrl = await freshDatabase(inject('pgUrlB'), 'cluster');
  const db = await freshDatabase(inject('pgUrlA'), 'bank');
  await createAccounts(db, { r1: 1_000_000, r2: 100 });
  // The smallest segment size: a compaction about every thousand records.
  const owner = await CoordinatorProcess.start({ env: { TCX_LOG_URL: logUrl, TCX_COORDINATOR_ID: 'reader-1', TCX_SEGMENT_MAX_BYTES: '4096' } });
  cleanup.push(() => owner.destroy());
  expect((await owner.request('POST', '/v1/participants', { name: 'bank', kind: 'postgres', connectionString: db })).status).toBe(201);
  const pool = new pg.Pool({ connectionString: logUrl, max: 2 });
  cleanup.push(() => pool.end());
  const reader = new SharedLogReader(pool, createLogger({ level: 'silent' }));

  const early: string[] = [];
  for (let i = 0; i < 5; i++) {
    const res = await owner.request('POST', '/v1/transactions', { branches: [{ participant: 'bank', operations: [sql(-1)] }], commit: true });
    expect(res.body.state).toBe('committed');
    early.push(res.body.id as string);
  }
  const refused = await owner.request('POST', '/v1/transactions', { branches: [{ participant: 'bank', operations: [sql(-2_000_000)] }], commit: true });
  expect(refused.body.state).toBe('aborted');
  // Prepared and not decided: only its owner may say what it becomes (a Postgres-only transaction
  // logs nothing before its decision: presumed abort — no record is the answer "abort unless decided").
  const open = (await owner.request('POST', '/v1/transactions', { branches: [{ participant: 'bank', operations: [sql(-1, 'r2')] }] })).body.id as string;
  expect((await owner.request('POST', `/v1/transactions/${open}/prepare`)).body.state).toBe('prepared');

  const same = async (id: string): Promise<void> => {
    const fromOwner = (await owner.request('GET', `/v1/transactions/${id}`)).body;
    const logged = await reader.transaction(['reader-1'], id);
    expect(logged?.view, id).toEqual(fromOwner);
  };
  for (const id of [...early, refused.body.id as string]) await same(id);
  expect(await reader.transaction(['reader-1'], open)).toBeUndefined();
  expect(await reader.transaction(['reader-1'], '00000000-0000-4000-8000-000000000000')).toBeUndefined();
  expect(await reader.transaction(['nobody'], early[0]!)).toBeUndefined();

  // Enough transactions for compactions; read from the log meanwhile (its snapshot and records stay consistent).
  const compactionsBefore = ((await owner.request('GET', '/healthz')).body.log as { compactions: number }).compactions;
  let stop = false;
  let reads = 0;
  const reading = (async () => {
    while (!stop) {
      await new Promise((r) => setTimeout(r, 60)); // past the reader's cache: a fresh load each time
      const logged = await reader.transaction(['reader-1'], early[0]!);
      expect(logged?.view?.state).toBe('committed');
      reads++;
    }
  })();
  const compactions = async (): Promise<number> => ((await owner.request('GET', '/healthz')).body.log as { compactions: number }).compactions;
  // Until two compactions ran (bounded), then some more.
  for (let i = 0; i < 5_000 && (i % 50 !== 0 || (await compactions()) < compactionsBefore + 2); i++) {
    const res = await owner.request('POST', '/v1/transactions', { branches: [{ participant: 'bank', operations: [sql(-1)] }], commit: true });
    expect(res.body.state).toBe('committed');
  }
  stop = true;
  await reading;
  expect(reads).toBeGreaterThan(0);
  expect(await compactions()).toBeGreaterThanOrEqual(compactionsBefore + 2);
  await new Promise((r) => setTimeout(r, 1_100)); // the reader's cache expires
  for (const id of [...early, refused.body.id as string]) await same(id);
  // The early ones are in the snapshot's finished buckets now, not in the records.
  const inRecords = await withClient(logUrl, async (c) => Number((await c.query(`SELECT count(*) AS n FROM tcx_log WHERE coordinator_id = 'reader-1' AND record LIKE '%' || $1 || '%'`, [early[0]])).rows[0].n));
  expect(inRecords).toBe(0);

  expect((await owner.request('POST', `/v1/transactions/${open}/abort`)).body.state).toBe('aborted');
  // Its end record is not forced: the log has it once the owner's next flush committed it.
  await eventually(async () => (await reader.transaction(['reader-1'], open))?.view?.state === 'aborted');
  await new Promise((r) => setTimeout(r, 1_100));
  await same(open);
  expect(await preparedGids(db)).toEqual([]);
}, 120_000);
