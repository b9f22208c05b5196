/**
 * Participant crashes (issue "Survive faults": Postgres and Redis killed with SIGKILL and
 * restarted during prepare and during commit; an HTTP participant killed and restarted).
 * The coordinator runs in process with short deadlines; Postgres B and Redis are dedicated
 * servers this file kills and restarts, each reached THROUGH a FaultProxy whose delay keeps
 * a PREPARE / prepare script / COMMIT PREPARED / commit script on the wire while the server
 * dies. The example ledger (FileBranchStore in a temp dir) is the HTTP participant; it is
 * "killed" by destroying its sockets and listener without any graceful close, and restarted
 * over the same files.
 *
 *   Postgres B, during prepare:  PREPARE still on the wire            -> abort, nothing prepared
 *                                PREPARE landed, answer lost in crash -> abort; the landed
 *                                  PREPARE survives the restart and is rolled back
 *   Postgres B, during commit:   COMMIT PREPARED on the wire          -> 202, in doubt; the
 *                                  prepared transaction survives the crash and is committed
 *                                COMMIT PREPARED landed, answer lost  -> 202; committed once
 *   Redis, during prepare:       prepare script on the wire           -> abort, nothing staged
 *                                script ran, answer lost in crash     -> abort; the staged
 *                                  record survives (AOF) and is dropped with its lock
 *   Redis, during commit:        commit script on the wire            -> 202, in doubt; staged
 *                                  record and lock survive, commit applies them once
 *   Ledger (HTTP):               killed after voting yes              -> 202; restarted, it holds
 *                                  the reservation again, the retried commit applies once
 *                                killed in prepare, before reserving  -> abort, no reservation
 *                                killed in prepare, reserved, no answer -> abort; the
 *                                  reservation comes back on restart and is released
 *
 * Every case checks the real stores: money conserved, one outcome everywhere, nothing
 * prepared, staged, locked or reserved at the end, nothing left in doubt.
 */
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import type { FastifyInstance } from 'fastify';
import { Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, describe, expect, inject, it } from 'vitest';
import { buildLedger, type Ledger } from '../../src/examples/ledger-service.js';
import { FileBranchStore } from '../../src/participant-kit/branch-store.js';
import { balanceOf, createAccounts, freshDatabase, preparedGids, rollBackLeftovers, withClient } from '../support/databases.js';
import { FaultProxy } from '../support/fault-proxy.js';
import { startCoordinator, type InProcessCoordinator } from '../support/in-process-coordinator.js';
import { PostgresServer } from '../support/postgres-server.js';
import { RedisServer } from '../support/redis-server.js';
import { scanKeys, startFileLedger, transferSql, until, type FileLedger } from './helpers.js';

const PARTICIPANT_TIMEOUT_MS = 2_000; // also the Redis command timeout
const STATEMENT_TIMEOUT_MS = 3_000;
const CONNECT_TIMEOUT_MS = 500;
const COMMIT_WAIT_MS = 500;
const START = 100;
const AMOUNT = 30;

let dbA: string;
let serverB: PostgresServer;
let dbB: string;
let pgProxy: FaultProxy;
let redisServer: RedisServer;
let redisProxy: FaultProxy;
let redis: Redis;
let ledgerProxy: FaultProxy;
let c: InProcessCoordinator | undefined;
/** Cleanups of the current test (ledgers), run newest first after it. */
let cleanups: (() => Promise<void>)[] = [];
const tag = randomBytes(3).toString('hex');

beforeAll(async () => {
  [serverB, redisServer, dbA] = await Promise.all([
    PostgresServer.start({ name: 'pcrash-B' }),
    RedisServer.start({ name: 'pcrash-redis' }),
    freshDatabase(inject('pgUrlA'), 'pcrash'),
  ]);
  dbB = await serverB.createDatabase('bank_b');
  await Promise.all([createAccounts(dbA, {}), createAccountsOnB({})]);
  pgProxy = await FaultProxy.start({ name: 'pg-B', target: { host: serverB.host, port: serverB.port } });
  redisProxy = await FaultProxy.start({ name: 'redis', target: { host: redisServer.host, port: redisServer.port } });
  // Retargeted at every (re)started ledger.
  ledgerProxy = await FaultProxy.start({ name: 'ledger', target: { host: '127.0.0.1', port: 9 } });
  // Our own client, straight to Redis (not through the proxy); reconnects after restarts.
  redis = new Redis(redisServer.url, { maxRetriesPerRequest: 3, retryStrategy: (times) => Math.min(times * 50, 500) });
  redis.on('error', () => undefined);
});

afterEach(async () => {
  await c?.destroy();
  c = undefined;
  for (const cleanup of cleanups.reverse()) await cleanup().catch(() => undefined);
  cleanups = [];
  for (const proxy of [pgProxy, redisProxy, ledgerProxy]) proxy.reset();
  if (!serverB.running) await serverB.restart();
  if (!redisServer.running) await redisServer.restart();
});

afterAll(async () => {
  await rollBackLeftovers(dbA, dbB);
  redis?.disconnect();
  await Promise.all([pgProxy?.close(), redisProxy?.close(), ledgerProxy?.close()]);
  await Promise.all([serverB?.destroy(), redisServer?.destroy()]);
});

/**
 * accounts rows on B, committed durably. The test servers run with synchronous_commit=off,
 * so a plain commit made just before a SIGKILL may be lost in the crash (prepared
 * transactions and COMMIT PREPARED are always flushed); the setup must not be.
 */
async function createAccountsOnB(rows: Record<string, number>): Promise<void> {
  await withClient(dbB, async (client) => {
    await client.query('SET synchronous_commit = on');
    await client.query('CREATE TABLE IF NOT EXISTS accounts (id text PRIMARY KEY, balance bigint NOT NULL CHECK (balance >= 0))');
    for (const [id, balance] of Object.entries(rows)) {
      await client.query('INSERT INTO accounts (id, balance) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET balance = EXCLUDED.balance', [id, balance]);
    }
  });
}

// ---- coordinator and API ------------------------------------------------------------------

async function api(method: 'GET' | 'POST', url: string, payload?: unknown) {
  if (c === undefined) throw new Error('no coordinator');
  const res = await c.app.inject({ method, url, ...(payload === undefined ? {} : { payload: payload as object }) });
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- JSON answers are inspected freely
  return { status: res.statusCode, body: (res.body === '' ? undefined : res.json()) as any };
}

type Registration = { name: string; kind: 'postgres'; connectionString: string } | { name: string; kind: 'redis'; url: string } | { name: string; kind: 'http'; baseUrl: string };

/** An in-process coordinator with short deadlines and the given participants; returns its id. */
async function coordinator(participants: Registration[], recoveryIntervalMs: number): Promise<string> {
  c = await startCoordinator({
    TCX_PARTICIPANT_TIMEOUT_MS: String(PARTICIPANT_TIMEOUT_MS),
    TCX_STATEMENT_TIMEOUT_MS: String(STATEMENT_TIMEOUT_MS),
    TCX_CONNECT_TIMEOUT_MS: String(CONNECT_TIMEOUT_MS),
    TCX_COMMIT_WAIT_MS: String(COMMIT_WAIT_MS),
    TCX_RETRY_INITIAL_MS: '50',
    TCX_RETRY_MAX_MS: '300',
    TCX_RECOVERY_INTERVAL_MS: String(recoveryIntervalMs),
    TCX_PUBLIC_URL: 'http://127.0.0.1:1',
  });
  for (const p of participants) {
    const res = await api('POST', '/v1/participants', p);
    expect(res.status, JSON.stringify(res.body)).toBe(201);
  }
  return c.coordinator.coordinatorId;
}

const bankA = (): Registration => ({ name: 'bank-a', kind: 'postgres', connectionString: dbA });
const bankB = (): Registration => ({ name: 'bank-b', kind: 'postgres', connectionString: pgProxy.rewriteUrl(dbB) });
const cache = (): Registration => ({ name: 'cache', kind: 'redis', url: redisProxy.rewriteUrl(redisServer.url) });
const ledgerReg = (): Registration => ({ name: 'ledger', kind: 'http', baseUrl: ledgerProxy.url() });

/** begin, then enlist each branch; returns the transaction id. */
async function begin(branches: Record<string, unknown>[]): Promise<string> {
  const begun = await api('POST', '/v1/transactions', { timeoutMs: 60_000 });
  expect(begun.status, JSON.stringify(begun.body)).toBe(201);
  const id = begun.body.id as string;
  for (const branch of branches) {
    const res = await api('POST', `/v1/transactions/${id}/branches`, branch);
    expect(res.status, JSON.stringify(res.body)).toBe(201);
  }
  return id;
}

async function waitState(id: string, state: string, ms = 15_000): Promise<void> {
  await until(`transaction ${id} to be ${state}`, async () => (await api('GET', `/v1/transactions/${id}`)).body.state === state, ms, 25);
}

interface BranchView {
  branchId: string;
  participant: string;
  state: string;
  vote?: string;
  lastError?: string;
}

function branchOf(body: { branches: BranchView[] }, participant: string): BranchView {
  const b = body.branches.find((x) => x.participant === participant);
  if (b === undefined) throw new Error(`no branch on ${participant} in ${JSON.stringify(body)}`);
  return b;
}

/** Waits until `id` is listed in doubt with the branch on `participant` pending and carrying its last error. */
async function expectInDoubtOn(id: string, participant: string): Promise<void> {
  const tx = await until(
    `${participant} to be listed in doubt with its last error`,
    async () => {
      const res = await api('GET', '/v1/transactions?state=in-doubt');
      const found = (res.body.transactions as { id: string; branches: BranchView[] }[]).find((t) => t.id === id);
      return found?.branches.find((b) => b.participant === participant)?.lastError !== undefined ? found : undefined;
    },
    8_000,
    25,
  );
  expect(tx).toMatchObject({ state: 'committing', decision: 'commit', inDoubt: true });
  const pending = branchOf(tx as { branches: BranchView[] }, participant);
  expect(pending.state).toBe('prepared');
}

async function expectNothingInDoubt(): Promise<void> {
  const res = await api('GET', '/v1/transactions?state=in-doubt');
  expect(res.body.transactions).toEqual([]);
  const health = await api('GET', '/healthz');
  expect(health.body.liveTransactions).toBe(0);
}

/** A 409 abort whose branch on `participant` voted no. */
function expectAbortedBy(res: { status: number; body: { decision: string; state: string; branches: BranchView[] } }, participant: string): void {
  expect(res.status, JSON.stringify(res.body)).toBe(409);
  expect(res.body.decision).toBe('abort');
  expect(['aborting', 'aborted']).toContain(res.body.state);
  expect(branchOf(res.body, participant).vote).toBe('no');
}

const ours = (coordinatorId: string): string => `tcx:${coordinatorId}:`;

// ---- Postgres B -----------------------------------------------------------------------------

describe('Postgres participant SIGKILLed and restarted', () => {
  // The periodic sweep is on (small interval): it and the abort delivery both may roll back.
  const SWEEP_MS = 500;
  const DELAY_MS = 1_500;

  async function transferAB(account: string, coordinatorId: string): Promise<string> {
    await Promise.all([createAccounts(dbA, { [account]: START }), createAccountsOnB({ [account]: START })]);
    const id = await begin([
      { participant: 'bank-a', operations: [transferSql(account, -AMOUNT)] },
      { participant: 'bank-b', operations: [transferSql(account, AMOUNT)] },
    ]);
    expect(await preparedGids(dbA, ours(coordinatorId))).toEqual([]);
    return id;
  }

  async function balances(account: string): Promise<{ a: number; b: number }> {
    return { a: await balanceOf(dbA, account), b: await balanceOf(dbB, account) };
  }

  for (const variant of ['still on the wire', 'landed, its answer lost in the crash'] as const) {
    it(`during prepare (PREPARE ${variant}): the transaction aborts at once, nothing stays prepared after B restarts`, async () => {
      const cid = await coordinator([bankA(), bankB()], SWEEP_MS);
      const account = variant === 'still on the wire' ? 'pg_prep_wire' : 'pg_prep_landed';
      const id = await transferAB(account, cid);

      pgProxy.setDelay(DELAY_MS);
      const commit = api('POST', `/v1/transactions/${id}/commit`);
      // A (no delay) prepares at once; B's PREPARE sits in the proxy for DELAY_MS each way.
      await until('A to be prepared', async () => (await preparedGids(dbA, ours(cid))).length === 1, 5_000, 10);
      let landed: string | undefined;
      let killedAt: number;
      if (variant === 'still on the wire') {
        expect(await preparedGids(dbB, ours(cid)), 'B has not received its PREPARE yet').toEqual([]);
        killedAt = Date.now();
        await serverB.kill();
      } else {
        // Straight to B (not through the proxy): the PREPARE ran, its answer is still delayed.
        landed = await until('B to have run its PREPARE', async () => (await preparedGids(dbB, ours(cid)))[0], DELAY_MS + 3_000, 10);
        killedAt = Date.now();
        const killing = serverB.kill();
        pgProxy.cutOpenConnections(); // the answer dies with the server
        await killing;
      }
      const res = await commit;
      const answeredMs = Date.now() - killedAt;
      expectAbortedBy(res, 'bank-b');
      expect(res.body.reason).toMatch(/bank-b/);
      // Bounded: the broken connection is a no at once; no waiting for any timeout.
      expect(answeredMs).toBeLessThan(COMMIT_WAIT_MS + 2_000);
      await until('A to be rolled back', async () => (await preparedGids(dbA, ours(cid))).length === 0, 5_000, 25);
      expect(await balanceOf(dbA, account)).toBe(START);

      // B restarts; first without letting the coordinator in, to see what survived the crash.
      pgProxy.reset();
      pgProxy.dropNewConnections(true);
      await serverB.restart();
      expect(await preparedGids(dbB, ours(cid))).toEqual(landed === undefined ? [] : [landed]);
      expect(await balanceOf(dbB, account)).toBe(START);
      pgProxy.dropNewConnections(false);

      await waitState(id, 'aborted');
      await until('B to hold no prepared transaction of ours', async () => (await preparedGids(dbB, ours(cid))).length === 0, 5_000, 25);
      const got = await balances(account);
      expect(got).toEqual({ a: START, b: START });
      expect(got.a + got.b).toBe(2 * START);
      expect(await preparedGids(dbA)).toEqual([]);
      expect(await preparedGids(dbB)).toEqual([]);
      await expectNothingInDoubt();
    });
  }

  for (const variant of ['still on the wire', 'landed, its answer lost in the crash'] as const) {
    it(`during commit (COMMIT PREPARED ${variant}): 202 in doubt, the prepared transaction survives, committed once after B restarts`, async () => {
      const cid = await coordinator([bankA(), bankB()], SWEEP_MS);
      const account = variant === 'still on the wire' ? 'pg_commit_wire' : 'pg_commit_landed';
      const id = await transferAB(account, cid);
      const prepared = await api('POST', `/v1/transactions/${id}/prepare`);
      expect(prepared.status, JSON.stringify(prepared.body)).toBe(200);
      const [gidB] = await preparedGids(dbB, ours(cid));
      expect(gidB).toBeDefined();

      pgProxy.setDelay(DELAY_MS);
      const commit = api('POST', `/v1/transactions/${id}/commit`);
      // The decision is durable once A (no delay) is committed; B's COMMIT PREPARED left at the same time.
      await until('A to be committed', async () => (await preparedGids(dbA, ours(cid))).length === 0, 5_000, 10);
      expect(await balanceOf(dbA, account)).toBe(START - AMOUNT);
      if (variant === 'still on the wire') {
        expect(await preparedGids(dbB, ours(cid)), 'B has not received its COMMIT PREPARED yet').toEqual([gidB]);
        await serverB.kill();
      } else {
        await until('B to have run COMMIT PREPARED', async () => (await preparedGids(dbB, ours(cid))).length === 0, DELAY_MS + 3_000, 10);
        const killing = serverB.kill();
        pgProxy.cutOpenConnections();
        await killing;
      }
      const res = await commit;
      expect(res.status, JSON.stringify(res.body)).toBe(202);
      expect(res.body).toMatchObject({ id, state: 'committing', decision: 'commit', inDoubt: true });
      await expectInDoubtOn(id, 'bank-b');

      pgProxy.reset();
      pgProxy.dropNewConnections(true);
      await serverB.restart();
      if (variant === 'still on the wire') {
        // The prepared transaction survived the crash, untouched.
        expect(await preparedGids(dbB, ours(cid))).toEqual([gidB]);
        expect(await balanceOf(dbB, account)).toBe(START);
      } else {
        // The commit was durable before the crash; the retry will find the gid gone.
        expect(await preparedGids(dbB, ours(cid))).toEqual([]);
        expect(await balanceOf(dbB, account)).toBe(START + AMOUNT);
      }
      pgProxy.dropNewConnections(false);

      await waitState(id, 'committed');
      const got = await balances(account);
      expect(got).toEqual({ a: START - AMOUNT, b: START + AMOUNT });
      expect(got.a + got.b).toBe(2 * START);
      expect(await preparedGids(dbA)).toEqual([]);
      expect(await preparedGids(dbB)).toEqual([]);
      const view = await api('GET', `/v1/transactions/${id}`);
      expect(view.body).toMatchObject({ state: 'committed', decision: 'commit', inDoubt: false });
      expect((view.body.branches as BranchView[]).map((b) => b.state)).toEqual(['committed', 'committed']);
      await expectNothingInDoubt();
    });
  }
});

// ---- Redis ----------------------------------------------------------------------------------

describe('Redis participant SIGKILLed and restarted', () => {
  // No periodic sweep: the proxy's byte counters then see only the branch's own commands
  // (they time the kill), and the abort delivery alone must clean up.
  const SWEEP_MS = 600_000;
  // Below half the command timeout: a round trip through the proxy still fits in it.
  const DELAY_MS = 600;

  const walletKey = (name: string): string => `wallet:{${tag}_${name}}`;

  async function openAccounts(name: string): Promise<{ account: string; key: string }> {
    await createAccounts(dbA, { [name]: START });
    const key = walletKey(name);
    await redis.set(key, String(START));
    return { account: name, key };
  }

  async function transferAR(account: string, key: string): Promise<string> {
    return begin([
      { participant: 'bank-a', operations: [transferSql(account, -AMOUNT)] },
      { participant: 'cache', operations: [{ op: 'incrby', key, by: AMOUNT, min: 0 }] },
    ]);
  }

  /** Staged records (and non-empty index hashes) plus lock keys in Redis, read directly. */
  async function redisLeftovers(): Promise<{ staged: string[]; locks: string[] }> {
    const staged: string[] = [];
    for (const k of await scanKeys(redis, 'tcx:*staged*')) {
      if (k.startsWith('tcx:staged:') && (await redis.hlen(k)) === 0) continue;
      staged.push(k);
    }
    return { staged, locks: await scanKeys(redis, 'tcx:lock:*') };
  }

  async function waitRedisClean(): Promise<void> {
    await until(
      'Redis to hold no staged record, index entry or lock',
      async () => {
        const left = await redisLeftovers();
        return left.staged.length === 0 && left.locks.length === 0;
      },
      8_000,
      50,
    );
  }

  async function state(account: string, key: string): Promise<{ pg: number; redis: number }> {
    return { pg: await balanceOf(dbA, account), redis: Number(await redis.get(key)) };
  }

  /** Waits until the proxy delivered an answer from Redis to the coordinator after `since`. */
  async function nextAnswerDelivered(since: number, what: string): Promise<void> {
    await until(what, async () => redisProxy.counters().bytesDown > since, 3 * DELAY_MS + 3_000, 5);
  }

  for (const variant of ['still on the wire', 'ran, its answer lost in the crash'] as const) {
    it(`during prepare (prepare script ${variant}): the transaction aborts, nothing staged or locked after Redis restarts`, async () => {
      const cid = await coordinator([bankA(), cache()], SWEEP_MS);
      const { account, key } = await openAccounts(variant === 'still on the wire' ? 'r_prep_wire' : 'r_prep_ran');
      const id = await transferAR(account, key);
      const indexKey = `tcx:staged:${cid}`;

      redisProxy.setDelay(DELAY_MS);
      const down0 = redisProxy.counters().bytesDown;
      const commit = api('POST', `/v1/transactions/${id}/commit`);
      // The adapter first writes the index entry (HSET), then runs the prepare script.
      await until('the index entry to land in Redis', async () => (await redis.hlen(indexKey)) === 1, 3 * DELAY_MS + 3_000, 10);
      let killedAt: number;
      if (variant === 'still on the wire') {
        // The HSET answer reaches the coordinator, which sends the script at once: it is now in the proxy.
        await nextAnswerDelivered(down0, 'the HSET answer to reach the coordinator');
        expect(await redisLeftovers(), 'the prepare script has not run yet').toMatchObject({ locks: [] });
        killedAt = Date.now();
        await redisServer.kill();
      } else {
        await until('the prepare script to have run (lock taken)', async () => (await scanKeys(redis, 'tcx:lock:*')).length === 1, 3 * DELAY_MS + 3_000, 10);
        killedAt = Date.now();
        const killing = redisServer.kill();
        redisProxy.cutOpenConnections(); // the answer dies with the server
        await killing;
      }
      const res = await commit;
      const answeredMs = Date.now() - killedAt;
      expectAbortedBy(res, 'cache');
      expect(res.body.reason).toMatch(/cache/);
      // Bounded by the command timeout of the script in flight.
      expect(answeredMs).toBeLessThan(PARTICIPANT_TIMEOUT_MS + COMMIT_WAIT_MS + 2_000);
      await until('A to be rolled back', async () => (await preparedGids(dbA, ours(cid))).length === 0, 5_000, 25);

      // Redis restarts; first without the coordinator, to see what survived (AOF, fsync always).
      redisProxy.reset();
      redisProxy.dropNewConnections(true);
      await redisServer.restart();
      const survived = await redisLeftovers();
      if (variant === 'ran, its answer lost in the crash') {
        expect(survived.locks).toHaveLength(1);
        expect(survived.locks[0]?.endsWith(`:${key}`)).toBe(true);
        expect(survived.staged).toHaveLength(2); // the record and the index hash
      } else {
        expect(survived.locks).toEqual([]);
        expect(survived.staged).toEqual([indexKey]); // only the index entry had landed
      }
      expect(await redis.get(key)).toBe(String(START));
      redisProxy.dropNewConnections(false);

      await waitState(id, 'aborted');
      await waitRedisClean();
      const got = await state(account, key);
      expect(got).toEqual({ pg: START, redis: START });
      expect(await preparedGids(dbA)).toEqual([]);
      await expectNothingInDoubt();
      // The key is free: a new transfer on it commits.
      const again = await api('POST', '/v1/transactions', {
        branches: [{ participant: 'cache', operations: [{ op: 'incrby', key, by: 1, min: 0 }] }],
        commit: true,
      });
      expect(again.status, JSON.stringify(again.body)).toBe(200);
      expect(await redis.get(key)).toBe(String(START + 1));
      await waitRedisClean();
    });
  }

  it('during commit (commit script on the wire): 202 in doubt, the staged record and lock survive, committed once after Redis restarts', async () => {
    const cid = await coordinator([bankA(), cache()], SWEEP_MS);
    const { account, key } = await openAccounts('r_commit_wire');
    const id = await transferAR(account, key);
    const prepared = await api('POST', `/v1/transactions/${id}/prepare`);
    expect(prepared.status, JSON.stringify(prepared.body)).toBe(200);
    const staged = await redisLeftovers();
    expect(staged.locks).toHaveLength(1);
    expect(staged.staged).toHaveLength(2);

    redisProxy.setDelay(DELAY_MS);
    const down0 = redisProxy.counters().bytesDown;
    const commit = api('POST', `/v1/transactions/${id}/commit`);
    await until('A to be committed', async () => (await preparedGids(dbA, ours(cid))).length === 0, 5_000, 10);
    // Commit reads the record's key list (HGET), then runs the commit script: kill once the HGET answer is back.
    await nextAnswerDelivered(down0, 'the HGET answer to reach the coordinator');
    expect(await redis.get(key), 'the commit script has not run yet').toBe(String(START));
    await redisServer.kill();
    const res = await commit;
    expect(res.status, JSON.stringify(res.body)).toBe(202);
    expect(res.body).toMatchObject({ id, state: 'committing', decision: 'commit', inDoubt: true });
    await expectInDoubtOn(id, 'cache');
    expect(await balanceOf(dbA, account)).toBe(START - AMOUNT);

    redisProxy.reset();
    redisProxy.dropNewConnections(true);
    await redisServer.restart();
    // The yes vote was durable: record, index entry and lock are back; nothing applied yet.
    expect(await redisLeftovers()).toEqual(staged);
    expect(await redis.get(key)).toBe(String(START));
    redisProxy.dropNewConnections(false);

    await waitState(id, 'committed');
    await waitRedisClean();
    const got = await state(account, key);
    expect(got).toEqual({ pg: START - AMOUNT, redis: START + AMOUNT });
    expect(got.pg + got.redis).toBe(2 * START);
    expect(await preparedGids(dbA)).toEqual([]);
    await expectNothingInDoubt();
  });
});

// ---- HTTP participant (the example ledger) --------------------------------------------------

describe('HTTP participant (ledger) killed and restarted over its files', () => {
  const SWEEP_MS = 500;
  const LEDGER_START = { bob: START };

  interface Instance {
    readonly ledger: Ledger;
    readonly app: FastifyInstance;
    readonly store: FileBranchStore;
    readonly calls: string[];
  }

  /** Records every POST /<verb> the ledger receives. */
  const recordCalls =
    (calls: string[]) =>
    (app: FastifyInstance): void => {
      app.addHook('onRequest', async (request) => {
        if (request.method === 'POST') calls.push(request.url);
      });
    };

  /** A crash: every socket destroyed, the listener gone, no onClose hooks, no store close. */
  function crash(app: FastifyInstance): void {
    app.server.closeAllConnections();
    app.server.close();
  }

  function pointProxyAt(url: string): void {
    ledgerProxy.setTarget({ host: '127.0.0.1', port: Number(new URL(url).port) });
  }

  async function firstLedger(extra?: (app: FastifyInstance) => void): Promise<{ fl: FileLedger; calls: string[] }> {
    const calls: string[] = [];
    const fl = await startFileLedger({ ...LEDGER_START }, {}, (app) => {
      recordCalls(calls)(app);
      extra?.(app);
    });
    cleanups.push(() => fl.close());
    pointProxyAt(fl.url);
    return { fl, calls };
  }

  /** The ledger started again over the same branch and balance files (what a restarted process does). */
  async function restartLedger(dir: string): Promise<Instance> {
    const calls: string[] = [];
    const store = await FileBranchStore.open(path.join(dir, 'branches.jsonl'));
    const ledger = await buildLedger({ balances: { ...LEDGER_START }, store, balancesFile: path.join(dir, 'balances.json'), kit: {} });
    recordCalls(calls)(ledger.app);
    const url = await ledger.app.listen({ host: '127.0.0.1', port: 0 });
    cleanups.push(async () => {
      await ledger.app.close().catch(() => undefined);
      await store.close().catch(() => undefined);
    });
    pointProxyAt(url);
    return { ledger, app: ledger.app, store, calls };
  }

  /** Ledger branch: bob pays AMOUNT (reserved at prepare); Postgres A: alice receives it. */
  async function transferLA(account: string): Promise<string> {
    await createAccounts(dbA, { [account]: START });
    return begin([
      { participant: 'ledger', payload: { account: 'bob', delta: -AMOUNT } },
      { participant: 'bank-a', operations: [transferSql(account, AMOUNT)] },
    ]);
  }

  it('killed after voting yes, before the commit arrives: 202 in doubt; restarted, it holds the reservation again and applies the retried commit once', async () => {
    const cid = await coordinator([ledgerReg(), bankA()], SWEEP_MS);
    const { fl, calls } = await firstLedger();
    const id = await transferLA('h_voted_yes');

    const prepared = await api('POST', `/v1/transactions/${id}/prepare`);
    expect(prepared.status, JSON.stringify(prepared.body)).toBe(200);
    const branchId = branchOf(prepared.body, 'ledger').branchId;
    expect((await fl.store.get(id, branchId))?.status).toBe('prepared');
    expect(fl.ledger.reserved()).toBe(AMOUNT);
    expect(calls).toEqual(['/prepare']);

    crash(fl.ledger.app);
    const res = await api('POST', `/v1/transactions/${id}/commit`);
    expect(res.status, JSON.stringify(res.body)).toBe(202);
    expect(res.body).toMatchObject({ id, state: 'committing', decision: 'commit', inDoubt: true });
    await expectInDoubtOn(id, 'ledger');
    expect(await balanceOf(dbA, 'h_voted_yes')).toBe(START + AMOUNT);
    expect(await preparedGids(dbA, ours(cid))).toEqual([]);
    expect(calls).toEqual(['/prepare']); // the crashed instance never saw the commit

    // Restarted over the same files; the coordinator is kept out until we looked.
    ledgerProxy.dropNewConnections(true);
    const second = await restartLedger(fl.dir);
    expect((await second.store.get(id, branchId))?.status).toBe('prepared');
    expect(second.ledger.reserved()).toBe(AMOUNT);
    expect(second.ledger.balances().bob).toBe(START);
    ledgerProxy.dropNewConnections(false);

    await waitState(id, 'committed');
    expect((await second.store.get(id, branchId))?.status).toBe('committed');
    expect(second.calls.filter((u) => u === '/commit').length).toBeGreaterThanOrEqual(1);
    expect(second.calls).not.toContain('/prepare');
    expect(second.ledger.balances().bob).toBe(START - AMOUNT);
    expect(second.ledger.reserved()).toBe(0);

    // A repeated commit is a no-op, and the balance on disk carries the transfer once.
    const body = { transactionId: id, branchId, payload: { account: 'bob', delta: -AMOUNT } };
    const repeat = await fetch(`${ledgerProxy.url()}/commit`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(body),
      signal: AbortSignal.timeout(5_000),
    });
    expect(repeat.status).toBe(200);
    expect(second.ledger.balances().bob).toBe(START - AMOUNT);
    await second.app.close();
    await second.store.close();
    const third = await restartLedger(fl.dir);
    expect(third.ledger.balances().bob).toBe(START - AMOUNT);
    expect(third.ledger.reserved()).toBe(0);

    const alice = await balanceOf(dbA, 'h_voted_yes');
    expect(alice + (third.ledger.balances().bob ?? NaN)).toBe(2 * START);
    expect(await preparedGids(dbA)).toEqual([]);
    await expectNothingInDoubt();
  });

  for (const variant of ['before reserving', 'after reserving durably, before answering'] as const) {
    it(`killed during prepare (${variant}): the transaction aborts; restarted, the ledger holds no reservation`, async () => {
      const cid = await coordinator([ledgerReg(), bankA()], SWEEP_MS);
      // The prepare call is held: before the handler (nothing reserved) or after it (reserved and
      // fsynced, answer not yet sent). Released only after the crash, so nothing more happens.
      let entered!: () => void;
      const reached = new Promise<void>((resolve) => (entered = resolve));
      let release!: (err?: Error) => void;
      const held = new Promise<void>((resolve, reject) => (release = (err) => (err === undefined ? resolve() : reject(err))));
      held.catch(() => undefined);
      const hold = async (request: { url: string; method: string }): Promise<void> => {
        if (request.method !== 'POST' || request.url !== '/prepare') return;
        entered();
        await held;
      };
      const { fl } = await firstLedger((app) => {
        if (variant === 'before reserving') app.addHook('preHandler', async (request) => hold(request));
        else app.addHook('onSend', async (request, _reply, payload) => {
          await hold(request);
          return payload;
        });
      });
      const account = variant === 'before reserving' ? 'h_prep_before' : 'h_prep_after';
      const id = await transferLA(account);

      const commit = api('POST', `/v1/transactions/${id}/commit`);
      await reached;
      const reservedAtCrash = fl.ledger.reserved();
      const entryAtCrash = await fl.store.get(id, 'b1');
      const killedAt = Date.now();
      crash(fl.ledger.app);
      release(new Error('the process is dead'));
      const res = await commit;
      const answeredMs = Date.now() - killedAt;
      expectAbortedBy(res, 'ledger');
      expect(answeredMs).toBeLessThan(COMMIT_WAIT_MS + 2_000);
      if (variant === 'before reserving') {
        expect(reservedAtCrash).toBe(0);
        expect(entryAtCrash).toBeUndefined();
      } else {
        expect(reservedAtCrash).toBe(AMOUNT);
        expect(entryAtCrash?.status).toBe('prepared');
      }
      await until('A to be rolled back', async () => (await preparedGids(dbA, ours(cid))).length === 0, 5_000, 25);
      expect(res.body.state).toBe('aborting'); // the ledger must still hear the abort

      ledgerProxy.dropNewConnections(true);
      const second = await restartLedger(fl.dir);
      // What survived the crash: the durable yes (and so the reservation), or nothing.
      expect(second.ledger.reserved()).toBe(variant === 'before reserving' ? 0 : AMOUNT);
      expect((await second.store.get(id, 'b1'))?.status).toBe(variant === 'before reserving' ? undefined : 'prepared');
      ledgerProxy.dropNewConnections(false);

      await waitState(id, 'aborted');
      // The abort is remembered (a late prepare would vote no) and nothing is reserved.
      expect((await second.store.get(id, 'b1'))?.status).toBe('aborted');
      expect(second.calls).toContain('/abort');
      expect(second.calls).not.toContain('/prepare');
      expect(second.ledger.reserved()).toBe(0);
      expect(second.ledger.balances().bob).toBe(START);
      expect(await balanceOf(dbA, account)).toBe(START);
      expect(await preparedGids(dbA)).toEqual([]);
      await expectNothingInDoubt();
    });
  }
});
