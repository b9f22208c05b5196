/**
 * Crash tests for three-phase commit. The coordinator runs as a child process (with
 * TCX_PUBLIC_URL pointing at itself, so 3PC HTTP participants can ask it for the outcome)
 * and one `protocol: '3pc'` transfer spans three stores: a Postgres debit, a Redis credit
 * (incrby, min 0) and a credit in the example ledger (an HTTP participant built with the
 * participant kit, its branch state in an fsynced FileBranchStore).
 *
 * Killed at each fail point, restarted without it (the forced pre-commit record is the commit
 * decision, design rules 2, 3, 6):
 *
 *   after-prepare           a can-commit yes, nothing decided       -> everything rolled back
 *   after-decision-logged   pre-commit forced, nothing sent         -> everything committed
 *   between-precommits:2    Postgres marked + one of Redis/ledger   -> everything committed
 *                           acknowledged its pre-commit
 *   before-commit-record    every pre-commit acknowledged, commit   -> everything committed
 *                           record not written
 *   between-commits         one do-commit acknowledged              -> everything committed
 *   before-end-record       every branch committed, no end record   -> everything committed
 *
 * Then the participant-side termination rules of the kit while the coordinator stays down:
 * a pre-committed ledger branch commits on its own after its timeout (the inquiry fails),
 * an uncertain one (voted yes, never pre-committed) keeps asking (policy 'wait'); after the
 * restart everything converges to commit. And the `precommitted` state is observable through
 * the API while a participant holds its pre-commit answer. The recovery sweep commits a
 * prepared branch of a transaction whose pre-commit is durable (rule 6).
 *
 * Regression tests at the end, for bugs these tests found: the final view of a 3PC
 * transaction recovered from its pre-commit record names decision commit; a commit whose
 * pre-commit round is stuck answers 202; such a transaction is listed under
 * ?state=in-doubt (rule 5).
 *
 * Checked on the real stores: money conserved, the same outcome everywhere, nothing prepared
 * in Postgres, nothing staged or locked in Redis, no ledger reservation and no ledger branch
 * left prepared/pre-committed; the API reports the final state.
 */
import { randomBytes } from 'node:crypto';
import Fastify, { type FastifyInstance } from 'fastify';
import { Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, describe, expect, inject, it } from 'vitest';
import { MemoryBranchStore } from '../../src/participant-kit/branch-store.js';
import { participantRoutes, type ParticipantKitOptions } from '../../src/participant-kit/participant-routes.js';
import { CoordinatorProcess } from '../support/coordinator-process.js';
import { getFreePort } from '../support/free-port.js';
import { balanceOf, createAccounts, freshDatabase, preparedGids, withClient } from '../support/databases.js';
import { RedisServer } from '../support/redis-server.js';
import {
  crashLogs,
  reportOnFailure,
  scanKeys,
  settle,
  sleep,
  startFileLedger,
  transferSql,
  txIdOfGid,
  until,
  waitSettled,
  type FileLedger,
  type LedgerBranchInfo,
} from './helpers.js';

const START = 100;
const DEBIT_PG = 30;
const CREDIT_REDIS = 20;
const CREDIT_LEDGER = 10; // Postgres pays 30, Redis gets 20, the ledger 10: the sum is unchanged.
const UNCERTAIN_TIMEOUT_MS = 500;
const PRECOMMIT_TIMEOUT_MS = 800;

let server: RedisServer;
let redis: Redis;
let db: string;
const prefix = randomBytes(4).toString('hex');
const walletKey = (name: string): string => `wallet:${prefix}:${name}`;

/** Everything one test starts, torn down after it. */
const cleanups: (() => Promise<unknown>)[] = [];

beforeAll(async () => {
  [server, db] = await Promise.all([RedisServer.start({ name: 'redis-3pc-crash' }), freshDatabase(inject('pgUrlA'), 'tpc')]);
  await createAccounts(db, {});
  redis = new Redis(server.url, { maxRetriesPerRequest: 3 });
  redis.on('error', () => undefined);
});

afterEach(async () => {
  for (const fn of cleanups.splice(0).reverse()) await fn().catch(() => undefined);
  // A failed test must not leave its coordinator's prepared branches, staged records or locks
  // to the next one (every test runs its own coordinator, so they are garbage now).
  await rollbackPrepared().catch(() => undefined);
  for (const key of await scanKeys(redis, 'tcx:*').catch(() => [] as string[])) await redis.del(key).catch(() => undefined);
});

async function rollbackPrepared(): Promise<void> {
  await withClient(db, async (c) => {
    for (const gid of await preparedGids(db)) await c.query(`ROLLBACK PREPARED '${gid}'`).catch(() => undefined);
  });
}

afterAll(async () => {
  if (db !== undefined) await rollbackPrepared().catch(() => undefined);
  redis?.disconnect();
  await server?.destroy();
});

/** The kit's 3PC settings: short timeouts, fast re-inquiries. */
function kitOptions(coordinatorUrl: string): ParticipantKitOptions {
  return {
    coordinatorUrl,
    uncertainTimeoutMs: UNCERTAIN_TIMEOUT_MS,
    precommitTimeoutMs: PRECOMMIT_TIMEOUT_MS,
    inquiryTimeoutMs: 500,
    retry: { initialMs: 100, maxMs: 400 },
  };
}

interface Rig {
  coord: CoordinatorProcess;
  coordinatorId: string;
  ledgers: FileLedger[];
}

/**
 * Picks the coordinator's port first (the ledgers need its URL), starts the ledgers, then the
 * coordinator with TCX_PUBLIC_URL = its own URL, and registers pg, redis and the ledgers.
 */
async function setUp(
  accounts: string[],
  env: Record<string, string>,
  ledgerHooks: ((app: FastifyInstance) => void)[] = [() => undefined],
): Promise<Rig> {
  await createAccounts(db, Object.fromEntries(accounts.map((a) => [a, START])));
  for (const a of accounts) await redis.set(walletKey(a), String(START));
  const port = await getFreePort();
  const coordinatorUrl = `http://127.0.0.1:${port}`;
  const ledgers: FileLedger[] = [];
  for (const hook of ledgerHooks) {
    const l = await startFileLedger(Object.fromEntries(accounts.map((a) => [a, START])), kitOptions(coordinatorUrl), hook);
    cleanups.push(() => l.close());
    ledgers.push(l);
  }
  const coord = await CoordinatorProcess.start({
    port,
    env: {
      TCX_PUBLIC_URL: coordinatorUrl,
      TCX_UNCERTAIN_TIMEOUT_MS: String(UNCERTAIN_TIMEOUT_MS),
      TCX_COMMIT_WAIT_MS: '3000',
      TCX_CONNECT_TIMEOUT_MS: '1000',
      TCX_PARTICIPANT_TIMEOUT_MS: '3000',
      // Only start-up recovery and the transactions' own retries may resolve anything here.
      TCX_RECOVERY_INTERVAL_MS: '600000',
      ...env,
    },
  });
  cleanups.push(() => coord.destroy());
  reportOnFailure(coord);
  const participants: unknown[] = [
    { name: 'bank', kind: 'postgres', connectionString: db },
    { name: 'wallets', kind: 'redis', url: server.url },
    ...ledgers.map((l, i) => ({ name: `ledger${i + 1}`, kind: 'http', baseUrl: l.url })),
  ];
  for (const p of participants) {
    const res = await coord.request('POST', '/v1/participants', p);
    expect(res.status, JSON.stringify(res.body)).toBe(201);
  }
  const coordinatorId = (await coord.request('GET', '/healthz')).body.coordinatorId as string;
  expect(coordinatorId).toMatch(/^[A-Za-z0-9-]+$/);
  return { coord, coordinatorId, ledgers };
}

function transferBody(account: string, ledgerCount = 1): unknown {
  const each = CREDIT_LEDGER / ledgerCount;
  return {
    protocol: '3pc',
    branches: [
      { participant: 'bank', operations: [transferSql(account, -DEBIT_PG)] },
      { participant: 'wallets', operations: [{ op: 'incrby', key: walletKey(account), by: CREDIT_REDIS, min: 0 }] },
      ...Array.from({ length: ledgerCount }, (_, i) => ({ participant: `ledger${i + 1}`, payload: { account, delta: each } })),
    ],
    commit: true,
    timeoutMs: 20_000,
  };
}

interface Balances {
  pg: number;
  redis: number;
  ledger: number;
}

async function balances(r: Rig, account: string): Promise<Balances> {
  const ledger = r.ledgers.reduce((s, l) => s + (l.ledger.balances()[account] ?? NaN), 0) - START * (r.ledgers.length - 1);
  return { pg: await balanceOf(db, account), redis: Number(await redis.get(walletKey(account))), ledger };
}

const UNTOUCHED: Balances = { pg: START, redis: START, ledger: START };
const TRANSFERRED: Balances = { pg: START - DEBIT_PG, redis: START + CREDIT_REDIS, ledger: START + CREDIT_LEDGER };

/** Staged records (and non-empty index hashes) and lock keys left in Redis (this file's own server). */
async function redisLeftovers(): Promise<{ staged: string[]; locks: string[] }> {
  const staged: string[] = [];
  for (const key of await scanKeys(redis, 'tcx:*staged*')) {
    if (key.startsWith('tcx:staged:') && (await redis.hlen(key)) === 0) continue;
    staged.push(key);
  }
  return { staged, locks: await scanKeys(redis, 'tcx:lock:*') };
}

/** Waits until nothing is in doubt or live, nothing prepared, staged or locked, no ledger branch open. */
async function waitAllSettled(r: Rig, ms = 15_000): Promise<void> {
  await waitSettled(r.coord, [db], ms);
  await until(
    'redis and the ledgers to hold nothing open',
    async () => {
      const left = await redisLeftovers();
      if (left.staged.length > 0 || left.locks.length > 0) return false;
      for (const l of r.ledgers) {
        if ((await l.branches()).some((b) => b.status === 'prepared' || b.status === 'precommitted')) return false;
        if (l.ledger.reserved() !== 0) return false;
      }
      return true;
    },
    5_000,
  );
}

/** Transaction ids left as traces: prepared gids, Redis index entries, ledger branches, the killed process's log. */
async function observedTxIds(r: Rig): Promise<Set<string>> {
  const ids = new Set<string>();
  for (const gid of await preparedGids(db, `tcx:${r.coordinatorId}:`)) ids.add(txIdOfGid(gid));
  for (const gid of await redis.hkeys(`tcx:staged:${r.coordinatorId}`)) ids.add(txIdOfGid(gid));
  for (const l of r.ledgers) for (const e of await l.store.list()) ids.add(e.transactionId);
  for (const line of r.coord.logLines(0)) if (typeof line.txId === 'string') ids.add(line.txId);
  return ids;
}

async function expectSigkilled(coord: CoordinatorProcess): Promise<void> {
  const exit = await coord.waitExit(20_000);
  expect(exit, 'the coordinator should have killed itself at the fail point').toEqual({ code: null, signal: 'SIGKILL' });
}

async function ledgerBranchesOf(l: FileLedger, id: string): Promise<LedgerBranchInfo[]> {
  return (await l.branches()).filter((b) => b.transactionId === id);
}

/** The API's final view of `id` and every ledger's record of its branch agree with `outcome`. */
async function expectFinal(r: Rig, id: string, outcome: 'committed' | 'aborted', branchCount: number): Promise<void> {
  const got = await r.coord.request('GET', `/v1/transactions/${id}`);
  expect(got.status, JSON.stringify(got.body)).toBe(200);
  expect(got.body).toMatchObject({ id, protocol: '3pc', state: outcome, inDoubt: false });
  expect(got.body.decision).toBe(outcome === 'aborted' ? 'abort' : 'commit');
  const states = (got.body.branches as { state: string }[]).map((b) => b.state);
  expect(states.length).toBe(branchCount);
  expect(new Set(states)).toEqual(new Set([outcome]));
  for (const l of r.ledgers) {
    const mine = await ledgerBranchesOf(l, id);
    // An abort reaches every logged http branch (stored even if no can-commit arrived); a commit exactly one.
    expect(mine.map((b) => b.status)).toEqual([outcome]);
    expect(mine[0]?.protocol === '3pc' || outcome === 'aborted').toBe(true);
  }
}

const CASES = [
  { failPoint: 'after-prepare', outcome: 'aborted' },
  { failPoint: 'after-decision-logged', outcome: 'committed' },
  { failPoint: 'between-precommits:2', outcome: 'committed' },
  { failPoint: 'before-commit-record', outcome: 'committed' },
  { failPoint: 'between-commits', outcome: 'committed' },
  { failPoint: 'before-end-record', outcome: 'committed' },
] as const;

describe.each(crashLogs(() => inject('pgUrlA')))('3PC ($log log): coordinator killed at a fail point during a Postgres + Redis + ledger transfer, then restarted', ({ log, env }) => {
  for (const tc of CASES) {
    it(`${tc.failPoint}: every store ends ${tc.outcome}, money conserved, nothing prepared, staged, locked or reserved`, async () => {
      const account = `fp_${log}_${tc.failPoint.replace(/[-:]/g, '_')}`;
      const r = await setUp([account], { TCX_FAIL_POINT: tc.failPoint, ...(await env(`3pc-${tc.failPoint}`)) });

      const answer = await settle(r.coord.request('POST', '/v1/transactions', transferBody(account)));
      expect(answer.ok, 'the request must fail: the coordinator died before answering').toBe(false);
      await expectSigkilled(r.coord);

      // The killed process's last log lines may still be in the pipe: poll (bounded).
      const ids = await until('the transaction to show up in the stores or the log', async () => {
        const found = await observedTxIds(r);
        return found.size > 0 ? found : undefined;
      }, 3_000, 25);
      expect(ids.size, `exactly one transaction left traces: ${[...ids].join(', ')}`).toBe(1);
      const id = [...ids][0] as string;
      const [ledger] = r.ledgers as [FileLedger];

      // What the crash left behind, before the restart.
      const staged = (await redisLeftovers()).staged.filter((k) => !k.startsWith('tcx:staged:'));
      const precommitMarks = await Promise.all(staged.map((k) => redis.hget(k, 'precommitted')));
      const ledgerBefore = (await ledgerBranchesOf(ledger, id)).map((b) => b.status);
      if (tc.failPoint === 'after-decision-logged') {
        // The forced pre-commit is durable, nothing was sent: Postgres prepared, Redis staged
        // without the pre-commit mark, the ledger uncertain.
        expect(await preparedGids(db)).toHaveLength(1);
        expect(precommitMarks).toEqual([null]);
        expect(ledgerBefore).toEqual(['prepared']);
      }
      if (tc.failPoint === 'between-precommits:2') {
        // Exactly one of Redis and the ledger acknowledged its pre-commit (Postgres is only marked in the log).
        expect(await preparedGids(db)).toHaveLength(1);
        const redisMarked = precommitMarks.length === 1 && precommitMarks[0] !== null;
        expect(staged).toHaveLength(1);
        expect(ledgerBefore).toHaveLength(1);
        expect(['prepared', 'precommitted', 'committed']).toContain(ledgerBefore[0]);
        const ledgerPrecommitted = ledgerBefore[0] !== 'prepared';
        expect(redisMarked || ledgerPrecommitted, 'one real pre-commit was acknowledged').toBe(true);
      }
      if (tc.failPoint === 'before-commit-record') {
        // Every pre-commit acknowledged, no do-commit sent (the ledger may already have committed on its own timeout).
        expect(await preparedGids(db)).toHaveLength(1);
        expect(precommitMarks).toHaveLength(1);
        expect(precommitMarks[0]).not.toBeNull();
        expect(['precommitted', 'committed']).toContain(ledgerBefore[0]);
      }
      if (tc.failPoint === 'before-end-record') {
        expect(await balances(r, account)).toEqual(TRANSFERRED);
      }

      await r.coord.restart();
      await waitAllSettled(r);

      const got = await balances(r, account);
      expect(got.pg + got.redis + got.ledger, 'money conserved across Postgres, Redis and the ledger').toBe(3 * START);
      expect(got).toEqual(tc.outcome === 'committed' ? TRANSFERRED : UNTOUCHED);
      expect(await preparedGids(db)).toEqual([]);
      expect(await redisLeftovers()).toEqual({ staged: [], locks: [] });
      expect(ledger.ledger.reserved()).toBe(0);
      await expectFinal(r, id, tc.outcome, 3);

      // Start-up recovery resumed the transaction with the right decision.
      const resumed = r.coord.logLines(1).filter((l) => l.msg === 'recovery: resuming transaction' && l.txId === id);
      if (tc.outcome === 'committed') expect(resumed.map((l) => l.decision)).toEqual(['commit']);
      else expect(resumed.map((l) => l.decision)).toEqual(['abort']);

      // The keys and rows are free again: a new 3PC transfer on the same accounts commits.
      const again = await r.coord.request('POST', '/v1/transactions', transferBody(account));
      expect(again.status, JSON.stringify(again.body)).toBe(200);
      expect(again.body).toMatchObject({ protocol: '3pc', state: 'committed', decision: 'commit' });
      await waitAllSettled(r);
    });
  }
});

describe('3PC termination at the participants while the coordinator stays down', () => {
  it('a pre-committed ledger branch commits on its own, an uncertain one keeps waiting; after the restart all commit', async () => {
    const account = 'down_between_precommits';
    // ledger2 refuses pre-commit (503 before the kit sees it), so it stays uncertain.
    const gate = { blockPreCommit: true };
    const r = await setUp(
      [account],
      // Postgres' pre-commit mark (1), then Redis and ledger1 (2, 3); ledger2 never acknowledges.
      { TCX_FAIL_POINT: 'between-precommits:3' },
      [() => undefined, blockPreCommitHook(gate)],
    );
    const [l1, l2] = r.ledgers as [FileLedger, FileLedger];

    const answer = await settle(r.coord.request('POST', '/v1/transactions', transferBody(account, 2)));
    expect(answer.ok).toBe(false);
    const killedAt = Date.now();
    await expectSigkilled(r.coord);
    const ids = await until('the transaction to show up', async () => {
      const found = await observedTxIds(r);
      return found.size > 0 ? found : undefined;
    }, 3_000, 25);
    expect(ids.size).toBe(1);
    const id = [...ids][0] as string;

    // ledger1 got its pre-commit; its timeout expires, the inquiry fails (nobody listens): commit.
    const committedAlone = await until(
      'the pre-committed ledger branch to commit on its own',
      async () => (await ledgerBranchesOf(l1, id)).find((b) => b.status === 'committed'),
      PRECOMMIT_TIMEOUT_MS + 5_000,
      50,
    );
    expect(committedAlone).toMatchObject({ protocol: '3pc', resolvedBy: 'timeout' });
    expect(committedAlone.reason).toMatch(/precommitted timeout, unreachable/);
    expect(l1.ledger.balances()[account]).toBe(START + CREDIT_LEDGER / 2);

    // ledger2 is uncertain: it asks, cannot reach the coordinator, and waits (policy 'wait'),
    // also after ledger1's longer pre-commit timeout has passed.
    const attemptsWhenL1Committed = (await ledgerBranchesOf(l2, id))[0]?.inquiry?.attempts ?? 0;
    expect(attemptsWhenL1Committed).toBeGreaterThan(0);
    const waiting = await until(
      'the uncertain ledger branch to have asked again',
      async () => {
        const b = (await ledgerBranchesOf(l2, id))[0];
        return b !== undefined && (b.inquiry?.attempts ?? 0) >= attemptsWhenL1Committed + 2 ? b : undefined;
      },
      10_000,
      50,
    );
    expect(Date.now() - killedAt).toBeGreaterThan(PRECOMMIT_TIMEOUT_MS);
    expect(waiting.status).toBe('prepared');
    expect(waiting.inquiry?.last).toMatch(/^unreachable: /);
    expect(l2.ledger.balances()[account]).toBe(START);
    expect(l2.ledger.reserved()).toBe(0); // a credit reserves nothing
    // The passive stores block, as under 2PC: still prepared / staged and pre-commit-marked.
    expect(await preparedGids(db)).toHaveLength(1);
    const staged = (await redisLeftovers()).staged.filter((k) => !k.startsWith('tcx:staged:'));
    expect(staged).toHaveLength(1);
    expect(await redis.hget(staged[0] as string, 'precommitted')).not.toBeNull();
    expect(Number(await redis.get(walletKey(account)))).toBe(START);

    // Back up (ledger2 still refuses pre-commit: the resumed transaction needs only do-commit).
    await r.coord.restart();
    await waitAllSettled(r);
    expect(await balances(r, account)).toEqual(TRANSFERRED);
    await expectFinal(r, id, 'committed', 4);
    const l2Final = (await ledgerBranchesOf(l2, id))[0];
    expect(l2Final?.status).toBe('committed');
    // Either the restarted coordinator's do-commit or ledger2's next inquiry (answered precommitted/committing) got there first.
    expect(['coordinator', 'timeout']).toContain(l2Final?.resolvedBy);
    expect((await ledgerBranchesOf(l1, id))[0]?.resolvedBy).toBe('timeout');
    expect(await preparedGids(db)).toEqual([]);
    expect(await redisLeftovers()).toEqual({ staged: [], locks: [] });
  });
});

describe('3PC: the precommitted state is observable', () => {
  it('GET /v1/transactions/{id} shows precommitted while a participant holds its pre-commit answer', async () => {
    const account = 'observe_precommitted';
    const r = await setUp([account], {}, []);
    // A small participant whose preCommit waits for the test.
    let release: () => void = () => undefined;
    const held = new Promise<void>((resolve) => {
      release = resolve;
    });
    let preCommitCalls = 0;
    const app = Fastify({ logger: false });
    await app.register(
      participantRoutes<unknown>({
        store: new MemoryBranchStore(),
        // The can-commit body's uncertainTimeoutMs wins; the inquiry answers "precommitted" = commit anyway.
        coordinatorUrl: r.coord.url,
        handlers: {
          prepare: async () => ({ vote: 'yes' }),
          commit: async () => undefined,
          abort: async () => undefined,
          preCommit: async () => {
            preCommitCalls++;
            await held;
          },
        },
      }),
    );
    const url = await app.listen({ host: '127.0.0.1', port: 0 });
    cleanups.push(async () => {
      release();
      await app.close();
    });
    expect((await r.coord.request('POST', '/v1/participants', { name: 'slow', kind: 'http', baseUrl: url })).status).toBe(201);

    const begun = await r.coord.request('POST', '/v1/transactions', { protocol: '3pc', timeoutMs: 20_000 });
    expect(begun.status).toBe(201);
    const id = begun.body.id as string;
    for (const branch of [
      { participant: 'bank', operations: [transferSql(account, -DEBIT_PG)] },
      { participant: 'wallets', operations: [{ op: 'incrby', key: walletKey(account), by: DEBIT_PG, min: 0 }] },
      { participant: 'slow', payload: { note: 'holds its pre-commit' } },
    ]) {
      const res = await r.coord.request('POST', `/v1/transactions/${id}/branches`, branch);
      expect(res.status, JSON.stringify(res.body)).toBe(201);
    }
    const commit = settle(r.coord.request('POST', `/v1/transactions/${id}/commit`));

    const seen = await until('the transaction to be precommitted', async () => {
      const got = await r.coord.request('GET', `/v1/transactions/${id}`);
      return got.body?.state === 'precommitted' ? got.body : undefined;
    }, 5_000, 20);
    expect(seen).toMatchObject({ id, protocol: '3pc', state: 'precommitted', decision: 'commit' });
    const byName = Object.fromEntries((seen.branches as { participant: string; state: string }[]).map((b) => [b.participant, b.state]));
    expect(byName).toEqual({ bank: 'precommitted', wallets: expect.stringMatching(/^(prepared|precommitted)$/), slow: 'prepared' });
    // The state is precommitted once the decision is durable; the pre-commit call itself may still be on its way.
    await until('the pre-commit to reach the slow participant', async () => (preCommitCalls > 0 ? true : undefined), 5_000, 20);
    expect(preCommitCalls).toBe(1);
    // Nothing has been committed yet: the pre-commit round is not over.
    expect(await balanceOf(db, account)).toBe(START);
    expect(await preparedGids(db)).toHaveLength(1);
    await sleep(300);
    expect((await r.coord.request('GET', `/v1/transactions/${id}`)).body.state).toBe('precommitted');

    release();
    const settled = await commit;
    if (!settled.ok) throw settled.error;
    const answered = settled.value;
    expect(answered.status, JSON.stringify(answered.body)).toBe(200);
    expect(answered.body).toMatchObject({ state: 'committed', decision: 'commit' });
    await waitSettled(r.coord, [db]);
    expect(await balanceOf(db, account)).toBe(START - DEBIT_PG);
    expect(Number(await redis.get(walletKey(account)))).toBe(START + DEBIT_PG);
    expect(await redisLeftovers()).toEqual({ staged: [], locks: [] });
  });
});

/**
 * Bugs found by these tests, now fixed; each test below guards against its return.
 */
async function knownBug<T>(precondition: () => Promise<T>, bug: (value: T) => Promise<void>): Promise<void> {
  await bug(await precondition());
}

/** Kills at after-decision-logged (pre-commit forced, nothing sent) and restarts; returns the transaction id. */
async function crashAfterPrecommitDecision(r: Rig, account: string, beforeRestart?: (id: string) => Promise<void>): Promise<string> {
  const answer = await settle(r.coord.request('POST', '/v1/transactions', transferBody(account)));
  expect(answer.ok).toBe(false);
  await expectSigkilled(r.coord);
  const ids = await until('the transaction to show up', async () => {
    const found = await observedTxIds(r);
    return found.size > 0 ? found : undefined;
  }, 3_000, 25);
  expect(ids.size).toBe(1);
  const id = [...ids][0] as string;
  await beforeRestart?.(id);
  await r.coord.restart();
  await waitAllSettled(r);
  expect(await balances(r, account)).toEqual(TRANSFERRED);
  return id;
}

describe('3PC: the recovery sweep treats a durable pre-commit as commit (rule 6)', () => {
  // README "Recovery": a durable 3PC pre-commit counts as a commit decision in every step,
  // the sweep included: a prepared branch of such a transaction that the log does not name
  // (injected here) is committed, not rolled back.
  it('commits an unlogged prepared branch of a transaction whose pre-commit is durable', async () => {
    const account = 'sweep_precommit';
    const extra = 'sweep_precommit_extra';
    let extraGid = '';
    const r = await setUp([account, extra], { TCX_FAIL_POINT: 'after-decision-logged' });
    await crashAfterPrecommitDecision(r, account, async (id) => {
      extraGid = `tcx:${r.coordinatorId}:${id}:9`;
      await withClient(db, async (cl) => {
        await cl.query('BEGIN');
        await cl.query('UPDATE accounts SET balance = balance + 1000 WHERE id = $1', [extra]);
        await cl.query(`PREPARE TRANSACTION '${extraGid}'`);
      });
    });
    const swept = r.coord.logLines(1).find((l) => l.msg === 'recovery: resolved prepared branch' && l.gid === extraGid);
    expect(swept).toMatchObject({ logged: 'precommit', action: 'commit' });
    expect(await balanceOf(db, extra)).toBe(START + 1000);
    expect(await preparedGids(db)).toEqual([]);
  });
});

describe('3PC: regressions of bugs found by these tests', () => {
  // Recovery resumes a transaction whose log holds only the pre-commit record and drives it to
  // commit without writing a commit record (transaction-manager resumeUnfinished); the durable
  // state keeps decision 'precommit', which durableView renders as null.
  it('the final view of a 3PC transaction recovered from its pre-commit record names decision commit', async () => {
    const account = 'bug_decision_null';
    await knownBug(
      async () => {
        const r = await setUp([account], { TCX_FAIL_POINT: 'after-decision-logged' });
        const id = await crashAfterPrecommitDecision(r, account);
        const got = await r.coord.request('GET', `/v1/transactions/${id}`);
        expect(got.body).toMatchObject({ id, state: 'committed', inDoubt: false });
        return got.body;
      },
      async (view) => {
        expect(view.decision).toBe('commit');
      },
    );
  });

  // README: POST /commit answers 200 `committed`, or 202 `committing` while a durable decision
  // is not yet acknowledged everywhere. While pre-commit cannot be delivered, the answer after
  // TCX_COMMIT_WAIT_MS is 200 with state `precommitted` (#outcome has no case for it) …
  it('a commit whose pre-commit round is stuck answers 202, not 200 precommitted', async () => {
    const account = 'bug_commit_200_precommitted';
    const gate = { blockPreCommit: true };
    await knownBug(
      async () => {
        const r = await setUp([account], { TCX_COMMIT_WAIT_MS: '1000' }, [blockPreCommitHook(gate)]);
        cleanups.push(async () => {
          gate.blockPreCommit = false;
          await waitAllSettled(r);
        });
        const answer = await r.coord.request('POST', '/v1/transactions', transferBody(account));
        expect(answer.body).toMatchObject({ state: 'precommitted', decision: 'commit' });
        return answer;
      },
      async (answer) => {
        expect(answer.status).toBe(202);
      },
    );
  });

  // … and rule 5 (a branch that cannot be reached stays visible as in doubt): the transaction is
  // not listed under ?state=in-doubt (LiveTransaction.inDoubt covers committing/aborting only),
  // and ?state=precommitted is refused by the schema (400).
  it('a 3PC transaction whose pre-commit cannot be delivered is listed in doubt', async () => {
    const account = 'bug_precommitted_not_in_doubt';
    const gate = { blockPreCommit: true };
    await knownBug(
      async () => {
        const r = await setUp([account], { TCX_COMMIT_WAIT_MS: '500' }, [blockPreCommitHook(gate)]);
        cleanups.push(async () => {
          gate.blockPreCommit = false;
          await waitAllSettled(r);
        });
        const answer = await r.coord.request('POST', '/v1/transactions', transferBody(account));
        const id = answer.body.id as string;
        await until('the ledger branch to show its last error', async () => {
          const got = await r.coord.request('GET', `/v1/transactions/${id}`);
          const b = (got.body.branches as { participant: string; lastError?: string }[]).find((x) => x.participant === 'ledger1');
          return got.body.state === 'precommitted' && b?.lastError !== undefined;
        });
        return { r, id };
      },
      async ({ r, id }) => {
        const inDoubt = await r.coord.request('GET', '/v1/transactions?state=in-doubt');
        expect((inDoubt.body.transactions as { id: string }[]).map((t) => t.id)).toContain(id);
      },
    );
  });
});

/** A ledger hook: answers 503 to /pre-commit while the gate says so (the kit never sees the call). */
function blockPreCommitHook(gate: { blockPreCommit: boolean }): (app: FastifyInstance) => void {
  return (app) =>
    app.addHook('onRequest', async (request, reply) => {
      if (gate.blockPreCommit && request.url === '/pre-commit') await reply.code(503).send({ error: 'pre-commit refused by the test' });
    });
}
