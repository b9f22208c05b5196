/**
 * Crash tests with a Redis participant: the coordinator runs as a child process, one branch
 * debits a Postgres row, the other credits a Redis counter (incrby, min 0). Redis is a
 * dedicated server this file starts, so it can also be SIGKILLed and restarted.
 *
 *   coordinator killed at a fail point, restarted without it:
 *     after-prepare          -> both stores rolled back
 *     after-decision-logged  -> both committed
 *     between-commits        -> both committed
 *     before-end-record      -> both committed (once)
 *   Redis SIGKILLed while its branch is prepared: the staged record and its lock survive
 *     (AOF, fsync always), and the commit that follows applies them.
 *   Redis down during phase 2: the commit answers 202, the transaction is listed in doubt
 *     with the last error, and completes once Redis is back (also across a coordinator crash).
 *
 * Checked on the real stores: money conserved, same outcome on both, no prepared Postgres
 * transaction, no staged record, no index entry and no lock key left in Redis.
 */
import { randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, describe, expect, inject, it } from 'vitest';
import type { CoordinatorProcess } from '../support/coordinator-process.js';
import { balanceOf, createAccounts, freshDatabase, preparedGids, rollBackLeftovers } from '../support/databases.js';
import { RedisServer } from '../support/redis-server.js';
import { crashLogs, scanKeys, settle, startCrashCoordinator, transferSql, TWO_PHASE_FAIL_POINTS, txIdOfGid, until, waitSettled } from './helpers.js';

const START = 100;
const AMOUNT = 30;
const COMMIT_WAIT_MS = 1_000;

let server: RedisServer;
let redis: Redis;
let db: string;
let coord: CoordinatorProcess | undefined;
const prefix = randomBytes(4).toString('hex');
const walletKey = (name: string): string => `wallet:${prefix}:${name}`;

beforeAll(async () => {
  [server, db] = await Promise.all([RedisServer.start({ name: 'redis-crash' }), freshDatabase(inject('pgUrlA'), 'rcrash')]);
  await createAccounts(db, {});
  // Our own client: it must survive the server's restarts (reconnects by itself).
  redis = new Redis(server.url, { maxRetriesPerRequest: 3, retryStrategy: (times) => Math.min(times * 50, 500) });
  redis.on('error', () => undefined);
});

afterEach(async () => {
  await coord?.destroy();
  coord = undefined;
  if (!server.running) await server.restart();
});

afterAll(async () => {
  await rollBackLeftovers(db);
  redis?.disconnect();
  await server?.destroy();
});

async function startCoordinator(env: Record<string, string> = {}): Promise<{ c: CoordinatorProcess; coordinatorId: string }> {
  const participants = [
    { name: 'bank', kind: 'postgres', connectionString: db },
    { name: 'cache', kind: 'redis', url: server.url },
  ];
  const c = await startCrashCoordinator(participants, { TCX_COMMIT_WAIT_MS: String(COMMIT_WAIT_MS), TCX_PARTICIPANT_TIMEOUT_MS: '1000', ...env });
  coord = c;
  const health = await c.request('GET', '/healthz');
  const coordinatorId = health.body.coordinatorId as string;
  expect(coordinatorId).toMatch(/^[A-Za-z0-9-]+$/);
  return { c, coordinatorId };
}

/** A Postgres account and a Redis wallet, both at START. */
async function openAccounts(name: string): Promise<{ account: string; key: string }> {
  await createAccounts(db, { [name]: START });
  const key = walletKey(name);
  await redis.set(key, String(START));
  return { account: name, key };
}

const pgDebit = (account: string, amount = AMOUNT) => ({ participant: 'bank', operations: [transferSql(account, -amount)] });
const redisCredit = (key: string, amount = AMOUNT) => ({ participant: 'cache', operations: [{ op: 'incrby', key, by: amount, min: 0 }] });

const scan = (pattern: string): Promise<string[]> => scanKeys(redis, pattern);

/** Staged records (and non-empty index hashes) plus lock keys left in Redis. */
async function redisLeftovers(): Promise<{ staged: string[]; locks: string[] }> {
  const staged: string[] = [];
  for (const key of await scan('tcx:*staged*')) {
    // An index hash with no entry does not exist in Redis; be lenient anyway.
    if (key.startsWith('tcx:staged:') && (await redis.hlen(key)) === 0) continue;
    staged.push(key);
  }
  return { staged, locks: await scan('tcx:lock:*') };
}

async function expectRedisClean(): Promise<void> {
  expect(await redisLeftovers()).toEqual({ staged: [], locks: [] });
}

/** Waits until nothing is in doubt or live, nothing prepared in Postgres, nothing staged in Redis. */
async function waitAllSettled(c: CoordinatorProcess, ms = 15_000): Promise<void> {
  await waitSettled(c, [db], ms);
  await until(
    'redis to hold no staged record and no lock',
    async () => {
      const left = await redisLeftovers();
      return left.staged.length === 0 && left.locks.length === 0;
    },
    5_000,
  );
}

async function state(account: string, key: string): Promise<{ pg: number; redis: number }> {
  return { pg: await balanceOf(db, account), redis: Number(await redis.get(key)) };
}

const UNTOUCHED = { pg: START, redis: START };
const TRANSFERRED = { pg: START - AMOUNT, redis: START + AMOUNT };

async function expectSigkilled(c: CoordinatorProcess): Promise<void> {
  const exit = await c.waitExit();
  expect(exit.signal, `coordinator exit ${JSON.stringify(exit)}`).toBe('SIGKILL');
}

/** Transaction ids this coordinator left traces of: prepared gids in Postgres, index entries in Redis. */
async function observedTxIds(coordinatorId: string): Promise<Set<string>> {
  const ids = new Set<string>();
  for (const gid of await preparedGids(db, `tcx:${coordinatorId}:`)) ids.add(txIdOfGid(gid));
  for (const gid of await redis.hkeys(`tcx:staged:${coordinatorId}`)) ids.add(txIdOfGid(gid));
  return ids;
}

describe.each(crashLogs(() => inject('pgUrlB')))('coordinator ($log log) killed at a fail point during a Postgres -> Redis transfer, then restarted', ({ log, env }) => {
  for (const tc of TWO_PHASE_FAIL_POINTS) {
    it(`${tc.failPoint}: both stores end ${tc.outcome}, money conserved, nothing prepared, staged or locked`, async () => {
      const { account, key } = await openAccounts(`fp_${log}_${tc.failPoint.replace(/-/g, '_')}`);
      const { c, coordinatorId } = await startCoordinator({ TCX_FAIL_POINT: tc.failPoint, ...(await env(`redis-${tc.failPoint}`)) });

      const answer = await settle(
        c.request('POST', '/v1/transactions', { branches: [pgDebit(account), redisCredit(key)], commit: true, timeoutMs: 20_000 }),
      );
      expect(answer.ok, 'the request must fail: the coordinator died before answering').toBe(false);
      await expectSigkilled(c);

      // Traces in the stores (after-prepare: at least the first yes vote is durable), and what
      // the killed process logged (from the decision on).
      // The process may exit before its last output lines are read from the pipe: poll (bounded).
      const ids = await until(
        'the transaction to show up in the stores or the log',
        async () => {
          const found = await observedTxIds(coordinatorId);
          for (const l of c.logLines(0)) if (typeof l.txId === 'string') found.add(l.txId);
          return found.size > 0 ? found : undefined;
        },
        3_000,
        25,
      );
      expect(ids.size, 'exactly one transaction left traces').toBe(1);
      const id = [...ids][0] as string;
      if (tc.outcome === 'committed') {
        // The decision was forced before any commit left; before-end-record: every branch committed already.
        const left = await redisLeftovers();
        if (tc.failPoint === 'after-decision-logged') {
          // The staged record and its index entry, and the lock of the wallet key.
          expect(left.staged.length, `the Redis branch is still staged: ${left.staged.join(', ')}`).toBe(2);
          expect(left.locks.length).toBe(1);
          expect(left.locks[0]?.endsWith(`:${key}`)).toBe(true);
        }
        if (tc.failPoint === 'before-end-record') expect(await state(account, key)).toEqual(TRANSFERRED);
      }

      await c.restart();
      await waitAllSettled(c);

      const got = await state(account, key);
      expect(got.pg + got.redis, 'money conserved across Postgres and Redis').toBe(2 * START);
      expect(got).toEqual(tc.outcome === 'committed' ? TRANSFERRED : UNTOUCHED);
      expect(await preparedGids(db)).toEqual([]);
      await expectRedisClean();

      const view = await c.request('GET', `/v1/transactions/${id}`);
      if (tc.outcome === 'committed') {
        expect(view.status, JSON.stringify(view.body)).toBe(200);
        expect(view.body).toMatchObject({ id, state: 'committed', decision: 'commit', inDoubt: false });
        const resumed = c.logLines(1).filter((l) => l.msg === 'recovery: resuming transaction' && l.txId === id);
        expect(resumed.map((l) => l.decision)).toEqual(['commit']);
      } else if (view.status === 200) {
        // Known to the log: aborted. Unknown: presumed abort (the sweep rolled back what it found).
        expect(view.body.state).toBe('aborted');
      } else {
        expect(view.body.error.code).toBe('UNKNOWN_TRANSACTION');
        const swept = c.logLines(1).filter((l) => l.msg === 'recovery: resolved prepared branch' && l.txId === id);
        expect(swept.length).toBeGreaterThan(0);
        for (const l of swept) expect(l).toMatchObject({ action: 'rollback' });
      }

      // The keys are free again: a new transfer on the same wallet commits.
      const again = await c.request('POST', '/v1/transactions', { branches: [pgDebit(account, 1), redisCredit(key, 1)], commit: true });
      expect(again.status, JSON.stringify(again.body)).toBe(200);
      await expectRedisClean();
    });
  }
});

/** begin, enlist the Postgres debit and the Redis credit, prepare: both branches prepared. */
async function preparedTransfer(c: CoordinatorProcess, account: string, key: string): Promise<string> {
  const begun = await c.request('POST', '/v1/transactions', { timeoutMs: 60_000 });
  expect(begun.status).toBe(201);
  const id = begun.body.id as string;
  for (const branch of [pgDebit(account), redisCredit(key)]) {
    const res = await c.request('POST', `/v1/transactions/${id}/branches`, branch);
    expect(res.status, JSON.stringify(res.body)).toBe(201);
  }
  const prepared = await c.request('POST', `/v1/transactions/${id}/prepare`);
  expect(prepared.status, JSON.stringify(prepared.body)).toBe(200);
  expect(prepared.body.state).toBe('prepared');
  expect((await preparedGids(db)).length).toBe(1);
  const left = await redisLeftovers();
  expect(left.staged.length, `staged: ${left.staged.join(', ')}`).toBe(2); // the record and the index hash
  expect(left.locks.length).toBe(1);
  expect(left.locks[0]?.endsWith(`:${key}`)).toBe(true);
  return id;
}

describe('Redis killed and restarted around phase 2', () => {
  it('SIGKILLed while its branch is prepared: the staged record and lock survive; the commit applies them', async () => {
    const { account, key } = await openAccounts('redis_killed_prepared');
    const { c, coordinatorId } = await startCoordinator();
    const id = await preparedTransfer(c, account, key);
    const before = await redisLeftovers();
    const record = before.staged.find((k) => !k.startsWith('tcx:staged:')) as string;
    const recordBefore = await redis.hgetall(record);
    expect(recordBefore.gid).toMatch(new RegExp(`^tcx:${coordinatorId}:${id}:`));

    await server.kill();
    await server.restart();

    // AOF with fsync always: the yes vote was durable.
    expect(await redisLeftovers()).toEqual(before);
    expect(await redis.hgetall(record)).toEqual(recordBefore);
    expect(await redis.get(before.locks[0] as string)).toBe(recordBefore.gid);
    expect(await redis.hget(`tcx:staged:${coordinatorId}`, recordBefore.gid as string)).toBe(record);
    expect(await redis.get(key)).toBe(String(START)); // staged, not applied
    // The lock still holds: another transaction on the same key votes no at once.
    const blocked = await c.request('POST', '/v1/transactions', { branches: [redisCredit(key, 1)], commit: true });
    expect(blocked.status).toBe(409);
    expect(blocked.body.reason).toMatch(/lock/i);

    // The coordinator's client reconnects and reloads its scripts (NOSCRIPT after a restart).
    const committed = await c.request('POST', `/v1/transactions/${id}/commit`);
    expect(committed.status, JSON.stringify(committed.body)).toBe(200);
    expect(committed.body.state).toBe('committed');
    expect(await state(account, key)).toEqual(TRANSFERRED);
    await waitAllSettled(c);
    await expectRedisClean();
  });

  it('down during phase 2: the commit answers 202, stays in doubt with the last error, completes once Redis is back', async () => {
    const { account, key } = await openAccounts('redis_down_phase2');
    const { c } = await startCoordinator();
    const id = await preparedTransfer(c, account, key);

    await server.kill();
    const answer = await c.request('POST', `/v1/transactions/${id}/commit`);
    expect(answer.status, JSON.stringify(answer.body)).toBe(202);
    expect(answer.body).toMatchObject({ id, state: 'committing', decision: 'commit' });

    const inDoubt = await until('the Redis branch to show its last error in the in-doubt list', async () => {
      const res = await c.request('GET', '/v1/transactions?state=in-doubt');
      const tx = (res.body.transactions as { id: string; branches: { participant: string; lastError?: string }[] }[]).find((t) => t.id === id);
      return tx?.branches.find((b) => b.participant === 'cache')?.lastError !== undefined ? tx : undefined;
    });
    expect(inDoubt).toMatchObject({ state: 'committing', decision: 'commit', inDoubt: true });
    const byName = Object.fromEntries((inDoubt.branches as { participant: string; state: string; lastError?: string }[]).map((b) => [b.participant, b]));
    expect(byName.bank?.state).toBe('committed');
    expect(byName.cache?.state).toBe('prepared');
    expect(byName.cache?.lastError).toMatch(/redis|cache|connect|ECONNREFUSED|closed|timed out/i);
    expect(await balanceOf(db, account)).toBe(START - AMOUNT);
    // Still in doubt a while later: delivery never gives up silently.
    await new Promise((r) => setTimeout(r, 1_500));
    expect((await c.request('GET', `/v1/transactions/${id}`)).body).toMatchObject({ state: 'committing', inDoubt: true });

    await server.restart();
    await until('the transaction to be committed', async () => (await c.request('GET', `/v1/transactions/${id}`)).body.state === 'committed');
    await waitAllSettled(c);
    expect(await state(account, key)).toEqual(TRANSFERRED);
    await expectRedisClean();
  });

  it('down during phase 2 while the coordinator is killed too: the restarted coordinator completes once Redis is back', async () => {
    const { account, key } = await openAccounts('redis_down_coord_killed');
    const { c } = await startCoordinator();
    const id = await preparedTransfer(c, account, key);

    await server.kill();
    expect((await c.request('POST', `/v1/transactions/${id}/commit`)).status).toBe(202);
    await c.kill();
    await c.restart();
    // Start-up recovery resumed the commit; Redis is still down, so it stays in doubt.
    const listed = await until('the resumed transaction to be listed in doubt', async () => {
      const res = await c.request('GET', '/v1/transactions?state=in-doubt');
      return (res.body.transactions as { id: string }[]).some((t) => t.id === id) ? res.body : undefined;
    });
    expect(listed.transactions.map((t: { id: string }) => t.id)).toEqual([id]);

    await server.restart();
    await until('the transaction to be committed', async () => (await c.request('GET', `/v1/transactions/${id}`)).body.state === 'committed');
    await waitAllSettled(c);
    expect(await state(account, key)).toEqual(TRANSFERRED);
    await expectRedisClean();
  });
});
