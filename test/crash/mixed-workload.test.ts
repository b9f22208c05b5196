/**
 * The acceptance test for Redis as a participant: a concurrent transfer workload across two
 * Postgres databases (A, B) and one Redis (R), while the coordinator (a child process) is
 * SIGKILLed several times and restarted.
 *
 * Every store holds 6 accounts of 100. Each transfer moves an amount between two of the
 * three stores: Postgres via UPDATE (CHECK balance >= 0 refuses an overdraft at enlist),
 * Redis via incrby with min 0 (an overdraft votes no at prepare; a key locked by a prepared
 * branch votes no too). Branches are enlisted in the fixed store order A, B, R, so no
 * cross-database deadlock can form. Transfers run step by step (begin, enlist, enlist,
 * commit), so the client knows every transaction id, even of a transfer whose request died
 * with the coordinator.
 *
 * Kills (seeded): a plain SIGKILL at a random moment, then a restart with a fail point armed
 * for its N-th hit (after-decision-logged, then after-prepare), each restarted without it.
 *
 * After the workload: nothing in doubt, then
 *   - the total over the three stores is conserved,
 *   - no prepared transaction in A or B, no staged record, index entry or lock in Redis,
 *   - every transfer the client saw committed (200, or 202 committing) is committed per
 *     GET /v1/transactions/{id}; every one it saw aborted is aborted (or unknown: presumed abort),
 *   - exact reconciliation: every account's balance is its start plus the deltas of the
 *     transfers the coordinator reports committed, and nothing else.
 */
import { randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, describe, expect, inject, it } from 'vitest';
import { CoordinatorProcess } from '../support/coordinator-process.js';
import { createAccounts, freshDatabase, preparedGids, rollBackLeftovers, withClient } from '../support/databases.js';
import { allBalances, finalOutcomes, reconcile, runTransferWorkload, sum, type WorkloadStore } from '../support/transfer-workload.js';
import { reportOnFailure, scanKeys, transferSql, until, waitSettled } from './helpers.js';

const SEED = Number(process.env.TCX_MIX_SEED ?? 20_261_123);
const ACCOUNTS = 6;
const START = 100;

let dbA: string;
let dbB: string;
let redis: Redis;
let coord: CoordinatorProcess | undefined;
const prefix = randomBytes(4).toString('hex');
const redisKey = (i: number): string => `mix:${prefix}:acct:${i}`;
const pgAccount = (i: number): string => `acct_${i}`;

beforeAll(async () => {
  [dbA, dbB] = await Promise.all([freshDatabase(inject('pgUrlA'), 'mix'), freshDatabase(inject('pgUrlB'), 'mix')]);
  const rows = Object.fromEntries(Array.from({ length: ACCOUNTS }, (_, i) => [pgAccount(i), START]));
  await Promise.all([createAccounts(dbA, rows), createAccounts(dbB, rows)]);
  redis = new Redis(inject('redisUrl'));
  for (let i = 0; i < ACCOUNTS; i++) await redis.set(redisKey(i), String(START));
});

afterEach(async () => {
  await coord?.destroy();
  coord = undefined;
});

afterAll(async () => {
  await rollBackLeftovers(dbA, dbB);
  if (redis !== undefined) {
    await redis.del(...Array.from({ length: ACCOUNTS }, (_, i) => redisKey(i))).catch(() => undefined);
    redis.disconnect();
  }
});

async function pgBalances(db: string): Promise<number[]> {
  return withClient(db, async (c) => {
    const rows = (await c.query('SELECT id, balance FROM accounts')).rows as { id: string; balance: string }[];
    const byId = new Map(rows.map((r) => [r.id, Number(r.balance)]));
    return Array.from({ length: ACCOUNTS }, (_, i) => byId.get(pgAccount(i)) ?? NaN);
  });
}

const STORES: readonly WorkloadStore[] = [
  { name: 'A', branch: (i, delta) => ({ participant: 'bank-a', operations: [transferSql(pgAccount(i), delta)] }), balances: () => pgBalances(dbA) },
  { name: 'B', branch: (i, delta) => ({ participant: 'bank-b', operations: [transferSql(pgAccount(i), delta)] }), balances: () => pgBalances(dbB) },
  {
    name: 'R',
    branch: (i, delta) => ({ participant: 'wallets', operations: [{ op: 'incrby', key: redisKey(i), by: delta, min: 0 }] }),
    balances: async () => (await redis.mget(...Array.from({ length: ACCOUNTS }, (_, i) => redisKey(i)))).map((v) => Number(v)),
  },
];

const scan = (pattern: string): Promise<string[]> => scanKeys(redis, pattern);

/** This coordinator's staged records and index (the shared Redis may hold other files' keys), and our keys' locks. */
async function redisLeftovers(coordinatorId: string): Promise<{ staged: string[]; locks: string[] }> {
  const staged = (await scan('tcx:*staged*')).filter((k) => k.includes(coordinatorId));
  const ours = new Set(Array.from({ length: ACCOUNTS }, (_, i) => redisKey(i)));
  const locks = (await scan('tcx:lock:*')).filter((k) => [...ours].some((key) => k.endsWith(`}:${key}`)));
  return { staged, locks };
}

describe('mixed workload across two Postgres databases and Redis, coordinator SIGKILLed while it runs', () => {
  it('conserves money, leaves nothing prepared, staged or locked, and keeps every answered commit', { timeout: 90_000 }, async () => {
    const started = Date.now();
    const c = await CoordinatorProcess.start({
      env: {
        TCX_COMMIT_WAIT_MS: '2000',
        TCX_CONNECT_TIMEOUT_MS: '1000',
        TCX_PARTICIPANT_TIMEOUT_MS: '2000',
        TCX_STATEMENT_TIMEOUT_MS: '4000',
        // Only start-up recovery and the transactions' own retries may resolve anything.
        TCX_RECOVERY_INTERVAL_MS: '600000',
      },
    });
    coord = c;
    reportOnFailure(c);
    for (const p of [
      { name: 'bank-a', kind: 'postgres', connectionString: dbA },
      { name: 'bank-b', kind: 'postgres', connectionString: dbB },
      { name: 'wallets', kind: 'redis', url: inject('redisUrl') },
    ]) {
      const res = await c.request('POST', '/v1/participants', p);
      expect(res.status, JSON.stringify(res.body)).toBe(201);
    }
    const coordinatorId = (await c.request('GET', '/healthz')).body.coordinatorId as string;
    const before = await allBalances(STORES);
    const total = sum(Object.values(before).flat());
    expect(total).toBe(3 * ACCOUNTS * START);

    const { transfers, kills } = await runTransferWorkload({
      coordinator: c,
      stores: STORES,
      accounts: ACCOUNTS,
      clients: 7,
      seed: SEED,
      txTimeoutMs: 8_000,
      requestTimeoutMs: 12_000,
      tailMs: 4_000,
      failPointWaitMs: 8_000,
    });

    // ---- checks ------------------------------------------------------------------------------
    await waitSettled(c, [dbA, dbB], 20_000);
    await until(
      'redis to hold no staged record and no lock of this coordinator',
      async () => {
        const left = await redisLeftovers(coordinatorId);
        return left.staged.length === 0 && left.locks.length === 0;
      },
      5_000,
    );
    expect(await redisLeftovers(coordinatorId)).toEqual({ staged: [], locks: [] });
    expect(await preparedGids(dbA)).toEqual([]);
    expect(await preparedGids(dbB)).toEqual([]);

    // What the restarted coordinator reports for every transaction the clients began.
    expect(await finalOutcomes(c, transfers), 'every transaction has a final outcome after the restart').toEqual([]);
    const after = await allBalances(STORES);
    const r = reconcile(before, transfers);
    console.log(`[mixed workload] seed ${SEED}, 7 clients, ${((Date.now() - started) / 1000).toFixed(1)} s: ${r.summary}; kills: ${kills.join('; ')}`);

    expect(r.problems).toEqual([]);
    expect(sum(Object.values(after).flat()), 'money conserved across A, B and Redis').toBe(total);
    expect(after, 'every account equals its start plus the committed transfers').toEqual(r.expected);
    expect(kills.length).toBe(3);
    // The workload did something on every side of the crashes.
    expect(r.committed).toBeGreaterThan(20);
    expect(r.aborted).toBeGreaterThan(0);
    expect(transfers.some((t) => t.seen === 'unknown')).toBe(true);
    expect(Date.now() - started).toBeLessThan(60_000);
  });
});
