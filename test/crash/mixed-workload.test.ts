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
import { CoordinatorProcess, type ApiAnswer } from '../support/coordinator-process.js';
import { createAccounts, freshDatabase, preparedGids, withClient } from '../support/databases.js';
import { pick, rng } from '../support/seeded-random.js';
import { reportOnFailure, scanKeys, settle, sleep, transferSql, until, waitSettled } from './helpers.js';

const SEED = Number(process.env.TCX_MIX_SEED ?? 20_261_123);
const ACCOUNTS = 6;
const START = 100;
const CLIENTS = 7;
/** Workload after the last restart, before the clients are told to stop. */
const TAIL_MS = 4_000;
/** How long a restart armed with a fail point may run before we kill it by hand. */
const FAIL_POINT_WAIT_MS = 8_000;
const TX_TIMEOUT_MS = 8_000;
const REQUEST_TIMEOUT_MS = 12_000;

type Store = 'A' | 'B' | 'R';
const STORES: readonly Store[] = ['A', 'B', 'R'];


interface Leg {
  readonly store: Store;
  readonly account: number;
  readonly delta: number;
}

interface Transfer {
  readonly client: number;
  readonly seq: number;
  /** Ordered A, B, R. */
  readonly legs: readonly Leg[];
  id?: string;
  /** What the client saw. */
  seen?: 'committed' | 'committing' | 'aborted' | 'refused' | 'unknown';
  detail?: string;
  /** What the coordinator reports after the final restart. */
  final?: 'committed' | 'aborted';
}

function planTransfer(r: () => number, client: number, seq: number): Transfer {
  const from = STORES[pick(r, 3)] as Store;
  const others = STORES.filter((s) => s !== from);
  const to = others[pick(r, 2)] as Store;
  // Mostly affordable amounts; one in seven is large enough to be refused often.
  const amount = r() < 1 / 7 ? 60 + pick(r, 91) : 1 + pick(r, 40);
  const legs: Leg[] = [
    { store: from, account: pick(r, ACCOUNTS), delta: -amount },
    { store: to, account: pick(r, ACCOUNTS), delta: amount },
  ].sort((x, y) => STORES.indexOf(x.store) - STORES.indexOf(y.store));
  return { client, seq, legs };
}

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
  for (const db of [dbA, dbB]) {
    if (db === undefined) continue;
    await withClient(db, async (c) => {
      for (const gid of await preparedGids(db)) await c.query(`ROLLBACK PREPARED '${gid}'`).catch(() => undefined);
    }).catch(() => undefined);
  }
  if (redis !== undefined) {
    await redis.del(...Array.from({ length: ACCOUNTS }, (_, i) => redisKey(i))).catch(() => undefined);
    redis.disconnect();
  }
});

function branchOf(leg: Leg): unknown {
  switch (leg.store) {
    case 'A':
      return { participant: 'bank-a', operations: [transferSql(pgAccount(leg.account), leg.delta)] };
    case 'B':
      return { participant: 'bank-b', operations: [transferSql(pgAccount(leg.account), leg.delta)] };
    case 'R':
      return { participant: 'wallets', operations: [{ op: 'incrby', key: redisKey(leg.account), by: leg.delta, min: 0 }] };
  }
}

async function balancesOf(db: string): Promise<number[]> {
  return withClient(db, async (c) => {
    const rows = (await c.query('SELECT id, balance FROM accounts')).rows as { id: string; balance: string }[];
    const byId = new Map(rows.map((r) => [r.id, Number(r.balance)]));
    return Array.from({ length: ACCOUNTS }, (_, i) => byId.get(pgAccount(i)) ?? NaN);
  });
}

async function allBalances(): Promise<Record<Store, number[]>> {
  const r = await redis.mget(...Array.from({ length: ACCOUNTS }, (_, i) => redisKey(i)));
  return { A: await balancesOf(dbA), B: await balancesOf(dbB), R: r.map((v) => Number(v)) };
}

const sum = (xs: number[]): number => xs.reduce((s, x) => s + x, 0);

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
    const before = await allBalances();
    const total = sum(before.A) + sum(before.B) + sum(before.R);
    expect(total).toBe(3 * ACCOUNTS * START);

    // ---- clients -------------------------------------------------------------------------
    const transfers: Transfer[] = [];
    let stop = false;
    const call = (method: 'GET' | 'POST', path: string, body?: unknown): Promise<{ ok: true; value: ApiAnswer } | { ok: false; error: unknown }> =>
      settle(c.request(method, path, body, REQUEST_TIMEOUT_MS));

    /** After a connection error: wait (bounded) until the coordinator answers again. */
    const waitUp = async (): Promise<void> => {
      const deadline = Date.now() + 20_000;
      while (!stop && Date.now() < deadline) {
        const h = await call('GET', '/healthz');
        if (h.ok && h.value.status === 200) return;
        await sleep(50);
      }
    };

    async function runOne(t: Transfer): Promise<'done' | 'not-begun'> {
      const begun = await call('POST', '/v1/transactions', { timeoutMs: TX_TIMEOUT_MS });
      if (!begun.ok) {
        await waitUp();
        return 'not-begun';
      }
      if (begun.value.status !== 201) {
        await sleep(20); // 429 / 503 while shutting down: try again
        return 'not-begun';
      }
      const id = begun.value.body.id as string;
      t.id = id;
      transfers.push(t);
      for (const leg of t.legs) {
        const res = await call('POST', `/v1/transactions/${id}/branches`, branchOf(leg));
        if (!res.ok) {
          t.seen = 'unknown';
          t.detail = `enlist: ${String(res.error)}`;
          await waitUp();
          return 'done';
        }
        if (res.value.status !== 201) {
          // 422: the CHECK constraint refused the debit (the transaction is aborted); 404/409:
          // the coordinator restarted meanwhile and does not know, or aborted, this transaction.
          t.seen = res.value.status === 422 ? 'refused' : 'aborted';
          t.detail = `enlist ${res.value.status}: ${JSON.stringify(res.value.body?.error?.message ?? res.value.body)}`;
          return 'done';
        }
      }
      const committed = await call('POST', `/v1/transactions/${id}/commit`);
      if (!committed.ok) {
        t.seen = 'unknown';
        t.detail = `commit: ${String(committed.error)}`;
        await waitUp();
        return 'done';
      }
      const { status, body } = committed.value;
      if (status === 200 && body.state === 'committed') t.seen = 'committed';
      else if (status === 202 && body.state === 'committing') t.seen = 'committing';
      else if (status === 409 || status === 404) t.seen = 'aborted';
      else t.seen = 'unknown';
      t.detail = `commit ${status}: ${String(body?.reason ?? body?.error?.code ?? body?.state)}`;
      return 'done';
    }

    async function client(n: number): Promise<void> {
      const r = rng(SEED * 31 + n);
      for (let seq = 0; !stop; seq++) {
        const t = planTransfer(r, n, seq);
        // The same planned transfer is retried (as a new transaction) until it is begun.
        while (!stop && (await runOne(t)) === 'not-begun');
      }
    }

    // ---- kills -----------------------------------------------------------------------------
    const ctl = rng(SEED);
    const kills: string[] = [];
    const expectKilled = async (): Promise<void> => {
      const exit = await c.waitExit();
      expect(exit.signal, `coordinator exit ${JSON.stringify(exit)}`).toBe('SIGKILL');
    };
    /** Restart; with a fail point armed the new process may die before it answered /healthz. */
    const restart = async (failPoint?: string): Promise<void> => {
      try {
        await c.restart(failPoint === undefined ? {} : { TCX_FAIL_POINT: failPoint });
      } catch (err) {
        if (failPoint === undefined || c.running) throw err;
      }
    };
    /** Armed restart: waits for the fail point to fire (bounded), else SIGKILLs by hand. */
    const killAtFailPoint = async (failPoint: string): Promise<void> => {
      const fired = await Promise.race([c.exited.then(() => true), sleep(FAIL_POINT_WAIT_MS).then(() => false)]);
      if (!fired) await c.kill();
      await expectKilled();
      kills.push(fired ? `${failPoint} @${Date.now() - started} ms` : `${failPoint} not reached: plain kill @${Date.now() - started} ms`);
    };

    const workload = Promise.all(Array.from({ length: CLIENTS }, (_, n) => client(n)));
    const controller = (async () => {
      await sleep(2_000 + pick(ctl, 2_000));
      await c.kill();
      await expectKilled();
      kills.push(`plain SIGKILL mid-flight @${Date.now() - started} ms`);
      const fp1 = `after-decision-logged:${10 + pick(ctl, 20)}`;
      await restart(fp1);
      await killAtFailPoint(fp1);
      const fp2 = `after-prepare:${10 + pick(ctl, 20)}`;
      await restart(fp2);
      await killAtFailPoint(fp2);
      await restart();
      await sleep(TAIL_MS);
    })();
    try {
      await controller;
    } finally {
      stop = true;
      await workload;
    }

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

    const after = await allBalances();
    const counts = { attempted: transfers.length, seen: {} as Record<string, number>, committed: 0, aborted: 0, unknownResolved: { committed: 0, aborted: 0 } };
    const why: Record<string, number> = { check: 0, min0: 0, locked: 0, other: 0 };
    for (const t of transfers) {
      counts.seen[t.seen ?? 'none'] = (counts.seen[t.seen ?? 'none'] ?? 0) + 1;
      if (t.seen !== 'refused' && t.seen !== 'aborted') continue;
      const d = t.detail ?? '';
      const kind = /check constraint/i.test(d) ? 'check' : /out of bounds/i.test(d) ? 'min0' : /lock/i.test(d) ? 'locked' : 'other';
      why[kind] = (why[kind] ?? 0) + 1;
    }

    // What the restarted coordinator reports for every transaction the clients began.
    const problems: string[] = [];
    const queue = [...transfers];
    await Promise.all(
      Array.from({ length: 8 }, async () => {
        for (let t = queue.shift(); t !== undefined; t = queue.shift()) {
          const got = await c.request('GET', `/v1/transactions/${t.id as string}`);
          if (got.status === 404 && got.body?.error?.code === 'UNKNOWN_TRANSACTION') t.final = 'aborted'; // presumed abort
          else if (got.status === 200 && (got.body.state === 'committed' || got.body.state === 'aborted')) t.final = got.body.state;
          else problems.push(`transfer ${t.client}/${t.seq} ${t.id as string}: GET ${got.status} ${JSON.stringify(got.body)}`);
        }
      }),
    );
    expect(problems, 'every transaction has a final outcome after the restart').toEqual([]);

    const expected: Record<Store, number[]> = { A: [...before.A], B: [...before.B], R: [...before.R] };
    for (const t of transfers) {
      if (t.final === 'committed') {
        counts.committed++;
        for (const leg of t.legs) expected[leg.store][leg.account] = (expected[leg.store][leg.account] ?? NaN) + leg.delta;
      } else counts.aborted++;
      if (t.seen === 'unknown') counts.unknownResolved[t.final as 'committed' | 'aborted']++;
      // What the client was told must hold: a commit answer is never undone, an abort never applied.
      if (t.seen === 'committed' || t.seen === 'committing') {
        if (t.final !== 'committed') problems.push(`transfer ${t.id as string} answered ${t.seen} but is ${String(t.final)}`);
      } else if (t.seen === 'aborted' || t.seen === 'refused') {
        if (t.final !== 'aborted') problems.push(`transfer ${t.id as string} answered ${t.seen} (${t.detail ?? ''}) but is ${String(t.final)}`);
      }
    }

    console.log(
      `[mixed workload] seed ${SEED}, ${CLIENTS} clients, ${((Date.now() - started) / 1000).toFixed(1)} s: ` +
        `${counts.attempted} transfers begun, ${counts.committed} committed, ${counts.aborted} aborted; ` +
        `client saw ${JSON.stringify(counts.seen)} (refusals: ${JSON.stringify(why)}); unknown outcomes resolved as ${JSON.stringify(counts.unknownResolved)}; ` +
        `kills: ${kills.join('; ')}`,
    );

    expect(problems).toEqual([]);
    expect(sum(after.A) + sum(after.B) + sum(after.R), 'money conserved across A, B and Redis').toBe(total);
    expect(after, 'every account equals its start plus the committed transfers').toEqual(expected);
    expect(kills.length).toBe(3);
    // The workload did something on every side of the crashes.
    expect(counts.committed).toBeGreaterThan(20);
    expect(counts.aborted).toBeGreaterThan(0);
    expect(transfers.some((t) => t.seen === 'unknown')).toBe(true);
    expect(Date.now() - started).toBeLessThan(60_000);
  });
});
