/**
 * Mixed 2PC/3PC workload across four stores while the coordinator is SIGKILLed and restarted:
 * Postgres A, Postgres B, Redis (R) and the example ledger (L, an HTTP participant built with the
 * participant kit, its branch state in an fsynced FileBranchStore, running the 3PC timeouts
 * with inquiries to the coordinator's TCX_PUBLIC_URL).
 *
 * Every store holds 6 accounts of 100. Each transfer picks its protocol ('2pc' or '3pc') and two
 * distinct stores at random (seeded) and moves an amount between them: Postgres via UPDATE
 * (CHECK balance >= 0 refuses an overdraft at enlist), Redis via incrby with min 0 (votes no at
 * prepare/can-commit), the ledger via a delta (a debit reserves at prepare, votes no when
 * funds are short). Branches are enlisted in the fixed store order A, B, R, L. Transfers run
 * step by step (begin, enlist, enlist, commit), so the client knows every transaction id.
 *
 * Kills (seeded): a plain SIGKILL at a random moment, then restarts armed for the N-th hit of
 * between-precommits (3PC: one pre-commit acknowledged), then of before-commit-record (3PC:
 * every pre-commit acknowledged, commit not logged), then a restart without a fail point. After
 * each kill the coordinator stays down past the ledger's 3PC timeouts, so pre-committed ledger
 * branches commit on their own and uncertain ones keep asking until it is back.
 *
 * After the workload: nothing in doubt or live, then
 *   - the total over the four stores is conserved, and every account equals its start plus
 *     the deltas of the transfers the coordinator reports committed;
 *   - nothing prepared in A or B, nothing staged or locked in Redis, no ledger reservation and
 *     no ledger branch left prepared or pre-committed;
 *   - every transfer the client saw committed (or whose commit answer named the commit
 *     decision) is committed; every one it saw aborted is aborted (or unknown: presumed abort);
 *     the ledger's own record of each branch agrees.
 */
import { randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, describe, expect, inject, it } from 'vitest';
import { CoordinatorProcess, type ApiAnswer } from '../support/coordinator-process.js';
import { createAccounts, freshDatabase, preparedGids, rollBackLeftovers, withClient } from '../support/databases.js';
import { getFreePort } from '../support/free-port.js';
import { reportOnFailure, scanKeys, seededRandom, settle, sleep, startFileLedger, transferSql, until, waitSettled, type FileLedger } from './helpers.js';

const SEED = Number(process.env.TCX_MIX3_SEED ?? 20_261_207);
const ACCOUNTS = 6;
const START = 100;
const CLIENTS = 6;
/** Workload after the last restart, before the clients are told to stop. */
const TAIL_MS = 3_000;
/** How long a restart armed with a fail point may run before we kill it by hand. */
const FAIL_POINT_WAIT_MS = 8_000;
const TX_TIMEOUT_MS = 8_000;
const REQUEST_TIMEOUT_MS = 12_000;
const UNCERTAIN_TIMEOUT_MS = 500;
const PRECOMMIT_TIMEOUT_MS = 1_000;
/** How long the coordinator stays down after each kill: past the ledger's 3PC timeouts. */
const DOWN_MS = 1_500;

type Store = 'A' | 'B' | 'R' | 'L';
const STORES: readonly Store[] = ['A', 'B', 'R', 'L'];
type Protocol = '2pc' | '3pc';

const pick = (r: () => number, n: number): number => Math.floor(r() * n);

interface Leg {
  readonly store: Store;
  readonly account: number;
  readonly delta: number;
}

interface Transfer {
  readonly client: number;
  readonly seq: number;
  readonly protocol: Protocol;
  /** Ordered A, B, R, L. */
  readonly legs: readonly Leg[];
  id?: string;
  /** What the client saw. */
  seen?: 'committed' | 'committing' | 'aborted' | 'refused' | 'unknown';
  detail?: string;
  /** What the coordinator reports after the final restart. */
  final?: 'committed' | 'aborted';
}

function planTransfer(r: () => number, client: number, seq: number): Transfer {
  const protocol: Protocol = r() < 0.5 ? '2pc' : '3pc';
  const from = STORES[pick(r, STORES.length)] as Store;
  const others = STORES.filter((s) => s !== from);
  const to = others[pick(r, others.length)] as Store;
  // Mostly affordable amounts; one in seven is large enough to be refused often.
  const amount = r() < 1 / 7 ? 60 + pick(r, 91) : 1 + pick(r, 40);
  const legs: Leg[] = [
    { store: from, account: pick(r, ACCOUNTS), delta: -amount },
    { store: to, account: pick(r, ACCOUNTS), delta: amount },
  ].sort((x, y) => STORES.indexOf(x.store) - STORES.indexOf(y.store));
  return { client, seq, protocol, legs };
}

let dbA: string;
let dbB: string;
let redis: Redis;
let ledger: FileLedger | undefined;
let coord: CoordinatorProcess | undefined;
const prefix = randomBytes(4).toString('hex');
const redisKey = (i: number): string => `mix3:${prefix}:acct:${i}`;
const account = (i: number): string => `acct_${i}`;

beforeAll(async () => {
  [dbA, dbB] = await Promise.all([freshDatabase(inject('pgUrlA'), 'mix3'), freshDatabase(inject('pgUrlB'), 'mix3')]);
  const rows = Object.fromEntries(Array.from({ length: ACCOUNTS }, (_, i) => [account(i), START]));
  await Promise.all([createAccounts(dbA, rows), createAccounts(dbB, rows)]);
  redis = new Redis(inject('redisUrl'));
  for (let i = 0; i < ACCOUNTS; i++) await redis.set(redisKey(i), String(START));
});

afterEach(async () => {
  await coord?.destroy();
  coord = undefined;
  await ledger?.close();
  ledger = undefined;
});

afterAll(async () => {
  await rollBackLeftovers(dbA, dbB);
  if (redis !== undefined) {
    await redis.del(...Array.from({ length: ACCOUNTS }, (_, i) => redisKey(i))).catch(() => undefined);
    redis.disconnect();
  }
});

function branchOf(leg: Leg): unknown {
  switch (leg.store) {
    case 'A':
      return { participant: 'bank-a', operations: [transferSql(account(leg.account), leg.delta)] };
    case 'B':
      return { participant: 'bank-b', operations: [transferSql(account(leg.account), leg.delta)] };
    case 'R':
      return { participant: 'wallets', operations: [{ op: 'incrby', key: redisKey(leg.account), by: leg.delta, min: 0 }] };
    case 'L':
      return { participant: 'ledger', payload: { account: account(leg.account), delta: leg.delta } };
  }
}

async function balancesOf(db: string): Promise<number[]> {
  return withClient(db, async (c) => {
    const rows = (await c.query('SELECT id, balance FROM accounts')).rows as { id: string; balance: string }[];
    const byId = new Map(rows.map((r) => [r.id, Number(r.balance)]));
    return Array.from({ length: ACCOUNTS }, (_, i) => byId.get(account(i)) ?? NaN);
  });
}

async function allBalances(l: FileLedger): Promise<Record<Store, number[]>> {
  const r = await redis.mget(...Array.from({ length: ACCOUNTS }, (_, i) => redisKey(i)));
  const lb = l.ledger.balances();
  return {
    A: await balancesOf(dbA),
    B: await balancesOf(dbB),
    R: r.map((v) => Number(v)),
    L: Array.from({ length: ACCOUNTS }, (_, i) => lb[account(i)] ?? NaN),
  };
}

const sum = (xs: number[]): number => xs.reduce((s, x) => s + x, 0);
const total = (b: Record<Store, number[]>): number => sum(b.A) + sum(b.B) + sum(b.R) + sum(b.L);

/** This coordinator's staged records and index (the shared Redis may hold other files' keys), and our keys' locks. */
async function redisLeftovers(coordinatorId: string): Promise<{ staged: string[]; locks: string[] }> {
  const staged = (await scanKeys(redis, 'tcx:*staged*')).filter((k) => k.includes(coordinatorId));
  const ours = Array.from({ length: ACCOUNTS }, (_, i) => redisKey(i));
  const locks = (await scanKeys(redis, 'tcx:lock:*')).filter((k) => ours.some((key) => k.endsWith(`}:${key}`)));
  return { staged, locks };
}

/** Ledger branches still open (prepared or pre-committed), and the amount it still holds reserved. */
async function ledgerLeftovers(l: FileLedger): Promise<{ open: string[]; reserved: number }> {
  const open = (await l.branches()).filter((b) => b.status === 'prepared' || b.status === 'precommitted').map((b) => `${b.transactionId}/${b.branchId}:${b.status}`);
  return { open, reserved: l.ledger.reserved() };
}

describe('mixed 2PC/3PC workload across two Postgres databases, Redis and an HTTP ledger, coordinator SIGKILLed while it runs', () => {
  it('conserves money, leaves nothing prepared, staged, locked or reserved, and keeps every answered commit', { timeout: 90_000 }, async () => {
    const started = Date.now();
    const port = await getFreePort();
    const coordinatorUrl = `http://127.0.0.1:${port}`;
    const l = await startFileLedger(Object.fromEntries(Array.from({ length: ACCOUNTS }, (_, i) => [account(i), START])), {
      coordinatorUrl,
      uncertainTimeoutMs: UNCERTAIN_TIMEOUT_MS,
      precommitTimeoutMs: PRECOMMIT_TIMEOUT_MS,
      inquiryTimeoutMs: 500,
      retry: { initialMs: 100, maxMs: 500 },
    });
    ledger = l;
    const c = await CoordinatorProcess.start({
      port,
      env: {
        TCX_PUBLIC_URL: coordinatorUrl,
        TCX_UNCERTAIN_TIMEOUT_MS: String(UNCERTAIN_TIMEOUT_MS),
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
      { name: 'ledger', kind: 'http', baseUrl: l.url },
    ]) {
      const res = await c.request('POST', '/v1/participants', p);
      expect(res.status, JSON.stringify(res.body)).toBe(201);
    }
    const coordinatorId = (await c.request('GET', '/healthz')).body.coordinatorId as string;
    const before = await allBalances(l);
    expect(total(before)).toBe(4 * ACCOUNTS * START);

    // ---- clients -------------------------------------------------------------------------
    const transfers: Transfer[] = [];
    let stop = false;
    let precommittedAnswers = 0;
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
      const begun = await call('POST', '/v1/transactions', { protocol: t.protocol, timeoutMs: TX_TIMEOUT_MS });
      if (!begun.ok) {
        await waitUp();
        return 'not-begun';
      }
      if (begun.value.status !== 201) {
        await sleep(20); // 429 / 503 while shutting down: try again
        return 'not-begun';
      }
      const id = begun.value.body.id as string;
      expect(begun.value.body.protocol).toBe(t.protocol);
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
      else if ((status === 200 || status === 202) && body.decision === 'commit') {
        // 202 committing; or 3PC still delivering its pre-commit (answered 200 `precommitted`, see
        // three-phase-crash.test.ts): the commit decision is durable either way.
        t.seen = 'committing';
        if (body.state === 'precommitted') precommittedAnswers++;
      } else if (status === 409 || status === 404) t.seen = 'aborted';
      else t.seen = 'unknown';
      t.detail = `commit ${status}: ${String(body?.reason ?? body?.error?.code ?? body?.state)}`;
      return 'done';
    }

    async function client(n: number): Promise<void> {
      const r = seededRandom(SEED * 31 + n);
      for (let seq = 0; !stop; seq++) {
        const t = planTransfer(r, n, seq);
        // The same planned transfer is retried (as a new transaction) until it is begun.
        while (!stop && (await runOne(t)) === 'not-begun');
      }
    }

    // ---- kills -----------------------------------------------------------------------------
    const ctl = seededRandom(SEED);
    const kills: { what: string; fired: boolean }[] = [];
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
      kills.push({ what: `${fired ? failPoint : `${failPoint} not reached: plain kill`} @${Date.now() - started} ms`, fired });
    };

    const workload = Promise.all(Array.from({ length: CLIENTS }, (_, n) => client(n)));
    const controller = (async () => {
      await sleep(2_000 + pick(ctl, 2_000));
      await c.kill();
      await expectKilled();
      kills.push({ what: `plain SIGKILL mid-flight @${Date.now() - started} ms`, fired: true });
      // Down for a while each time: pre-committed ledger branches commit on their own, uncertain ones keep asking.
      await sleep(DOWN_MS);
      const fp1 = `between-precommits:${20 + pick(ctl, 20)}`;
      await restart(fp1);
      await killAtFailPoint(fp1);
      await sleep(DOWN_MS);
      const fp2 = `before-commit-record:${8 + pick(ctl, 10)}`;
      await restart(fp2);
      await killAtFailPoint(fp2);
      await sleep(DOWN_MS);
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
      'redis and the ledger to hold nothing open of this coordinator',
      async () => {
        const left = await redisLeftovers(coordinatorId);
        const open = await ledgerLeftovers(l);
        return left.staged.length === 0 && left.locks.length === 0 && open.open.length === 0 && open.reserved === 0;
      },
      10_000,
    );
    expect(await redisLeftovers(coordinatorId)).toEqual({ staged: [], locks: [] });
    expect(await ledgerLeftovers(l)).toEqual({ open: [], reserved: 0 });
    expect(await preparedGids(dbA)).toEqual([]);
    expect(await preparedGids(dbB)).toEqual([]);

    const after = await allBalances(l);
    type Counts = { committed: number; aborted: number; unknown: number; seen: Record<string, number> };
    const blank = (): Counts => ({ committed: 0, aborted: 0, unknown: 0, seen: {} });
    const by: Record<Protocol, Counts> = { '2pc': blank(), '3pc': blank() };

    // What the restarted coordinator reports for every transaction the clients began.
    const problems: string[] = [];
    const queue = [...transfers];
    await Promise.all(
      Array.from({ length: 8 }, async () => {
        for (let t = queue.shift(); t !== undefined; t = queue.shift()) {
          const got = await c.request('GET', `/v1/transactions/${t.id as string}`);
          if (got.status === 404 && got.body?.error?.code === 'UNKNOWN_TRANSACTION') t.final = 'aborted'; // presumed abort
          else if (got.status === 200 && (got.body.state === 'committed' || got.body.state === 'aborted')) {
            t.final = got.body.state;
            // `unknown`: killed before its first record, known only from the branches the sweep rolled back.
            const presumed = got.body.state === 'aborted' && got.body.protocol === 'unknown';
            if (!presumed && got.body.protocol !== t.protocol) problems.push(`transfer ${t.id as string}: protocol ${String(got.body.protocol)}, began as ${t.protocol}`);
          } else problems.push(`transfer ${t.client}/${t.seq} ${t.id as string}: GET ${got.status} ${JSON.stringify(got.body)}`);
        }
      }),
    );
    expect(problems, 'every transaction has a final outcome after the restart').toEqual([]);

    // The ledger's own record of each branch agrees with the coordinator.
    const ledgerByTx = new Map<string, string[]>();
    for (const b of await l.branches()) ledgerByTx.set(b.transactionId, [...(ledgerByTx.get(b.transactionId) ?? []), b.status]);

    const expected: Record<Store, number[]> = { A: [...before.A], B: [...before.B], R: [...before.R], L: [...before.L] };
    for (const t of transfers) {
      const counts = by[t.protocol];
      counts.seen[t.seen ?? 'none'] = (counts.seen[t.seen ?? 'none'] ?? 0) + 1;
      if (t.seen === 'unknown') counts.unknown++;
      if (t.final === 'committed') {
        counts.committed++;
        for (const leg of t.legs) expected[leg.store][leg.account] = (expected[leg.store][leg.account] ?? NaN) + leg.delta;
      } else counts.aborted++;
      // What the client was told must hold: a commit answer is never undone, an abort never applied.
      if (t.seen === 'committed' || t.seen === 'committing') {
        if (t.final !== 'committed') problems.push(`transfer ${t.id as string} answered ${t.seen} but is ${String(t.final)}`);
      } else if (t.seen === 'aborted' || t.seen === 'refused') {
        if (t.final !== 'aborted') problems.push(`transfer ${t.id as string} answered ${t.seen} (${t.detail ?? ''}) but is ${String(t.final)}`);
      }
      const statuses = ledgerByTx.get(t.id as string) ?? [];
      if (t.final === 'committed' && t.legs.some((leg) => leg.store === 'L') && JSON.stringify(statuses) !== '["committed"]') {
        problems.push(`transfer ${t.id as string} committed, ledger branch ${JSON.stringify(statuses)}`);
      }
      if (t.final === 'aborted' && statuses.some((s) => s !== 'aborted')) {
        problems.push(`transfer ${t.id as string} aborted, ledger branch ${JSON.stringify(statuses)}`);
      }
    }
    const ledgerTimeouts = (await l.branches()).filter((b) => b.resolvedBy === 'timeout');

    console.log(
      `[mixed protocols workload] seed ${SEED}, ${CLIENTS} clients, ${((Date.now() - started) / 1000).toFixed(1)} s: ` +
        `${transfers.length} transfers begun; 2pc ${JSON.stringify(by['2pc'])}; 3pc ${JSON.stringify(by['3pc'])}; ` +
        `commit answers 200 precommitted: ${precommittedAnswers}; ledger branches resolved by their own 3PC timeout: ` +
        `${ledgerTimeouts.filter((b) => b.status === 'committed').length} committed, ${ledgerTimeouts.filter((b) => b.status === 'aborted').length} aborted; ` +
        `kills: ${kills.map((k) => k.what).join('; ')}`,
    );

    expect(problems).toEqual([]);
    expect(total(after), 'money conserved across A, B, Redis and the ledger').toBe(total(before));
    expect(after, 'every account equals its start plus the committed transfers').toEqual(expected);
    expect(kills.length).toBe(3);
    expect(kills.filter((k) => k.fired).length, `fail points reached: ${kills.map((k) => k.what).join('; ')}`).toBeGreaterThanOrEqual(2);
    // The workload did something with both protocols on every side of the crashes.
    for (const p of ['2pc', '3pc'] as const) {
      expect(by[p].committed, `${p} committed`).toBeGreaterThan(10);
      expect(by[p].aborted, `${p} aborted`).toBeGreaterThan(0);
    }
    expect(transfers.some((t) => t.seen === 'unknown')).toBe(true);
    expect(Date.now() - started).toBeLessThan(60_000);
  });
});
