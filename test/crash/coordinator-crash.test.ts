/**
 * Crash tests: the coordinator runs as a child process and SIGKILLs itself at a named fail
 * point in the middle of a transfer across two Postgres databases and an HTTP ledger. It is
 * restarted on the same data dir without the fail point; recovery must bring every branch
 * to the same outcome (rules 2, 4, 5, 6):
 *
 *   after-prepare          no decision logged          -> everything rolled back
 *   after-decision-logged  commit forced, none sent    -> everything committed
 *   between-commits        one branch committed        -> everything committed
 *   before-end-record      all committed, no end       -> everything committed (once)
 *
 * Checked on the real stores: money conserved, no prepared transaction left, no ledger
 * reservation left, and the API reports the final state.
 */
import { randomUUID } from 'node:crypto';
import { afterAll, afterEach, beforeAll, describe, expect, inject, it } from 'vitest';
import { buildLedger, type Ledger } from '../../src/examples/ledger-service.js';
import { MemoryBranchStore } from '../../src/participant-kit/branch-store.js';
import { CoordinatorProcess } from '../support/coordinator-process.js';
import { balanceOf, createAccounts, freshDatabase, preparedGids, rollBackLeftovers, withClient } from '../support/databases.js';
import { crashLogs, reportOnFailure, settle, transferSql, txIdOfGid, until, waitSettled } from './helpers.js';

let dbA: string;
let dbB: string;

beforeAll(async () => {
  [dbA, dbB] = await Promise.all([freshDatabase(inject('pgUrlA'), 'crash'), freshDatabase(inject('pgUrlB'), 'crash')]);
  await createAccounts(dbA, {});
  await createAccounts(dbB, {});
});

/** Everything one test starts, torn down after it. */
interface Rig {
  coord: CoordinatorProcess;
  ledger: Ledger;
  store: MemoryBranchStore;
  coordinatorId: string;
}

let rig: Rig | undefined;

afterEach(async () => {
  const r = rig;
  rig = undefined;
  await r?.coord.destroy();
  await r?.ledger.app.close();
});

afterAll(async () => {
  // Leave nothing prepared behind on the shared servers, whatever happened.
  await rollBackLeftovers(dbA, dbB);
});

const START = 100;
const DEBIT_A = 10;
const CREDIT_B = 15;
const DEBIT_LEDGER = 5; // A pays 10, the ledger 5, B receives 15: the sum is unchanged.

/** While `down` is set the ledger answers every call with 503 (unreachable in effect). */
interface Gate {
  down: boolean;
}

async function setUp(failPoint: string, accounts: string[], gate: Gate = { down: false }, logEnv: Record<string, string> = {}): Promise<Rig> {
  const rows = Object.fromEntries(accounts.map((a) => [a, START]));
  await Promise.all([createAccounts(dbA, rows), createAccounts(dbB, rows)]);
  const store = new MemoryBranchStore();
  const ledger = await buildLedger({ balances: rows, store });
  ledger.app.addHook('onRequest', async (_request, reply) => {
    if (gate.down) await reply.code(503).send({ error: 'ledger is down' });
  });
  const ledgerUrl = await ledger.app.listen({ host: '127.0.0.1', port: 0 });
  let coord: CoordinatorProcess;
  try {
    coord = await CoordinatorProcess.start({
      env: {
        TCX_FAIL_POINT: failPoint,
        // Only start-up recovery and the transactions' own retries may resolve anything here.
        TCX_RECOVERY_INTERVAL_MS: '600000',
        TCX_COMMIT_WAIT_MS: '5000',
        ...logEnv,
      },
    });
  } catch (err) {
    await ledger.app.close();
    throw err;
  }
  rig = { coord, ledger, store, coordinatorId: '' };
  reportOnFailure(coord);
  for (const p of [
    { name: 'bank-a', kind: 'postgres', connectionString: dbA },
    { name: 'bank-b', kind: 'postgres', connectionString: dbB },
    { name: 'ledger', kind: 'http', baseUrl: ledgerUrl },
  ]) {
    const res = await coord.request('POST', '/v1/participants', p);
    expect(res.status, JSON.stringify(res.body)).toBe(201);
  }
  const health = await coord.request('GET', '/healthz');
  rig.coordinatorId = health.body.coordinatorId as string;
  expect(rig.coordinatorId).toMatch(/^[A-Za-z0-9-]+$/);
  return rig;
}

function transferBody(account: string): unknown {
  return {
    branches: [
      { participant: 'bank-a', operations: [transferSql(account, -DEBIT_A)] },
      { participant: 'bank-b', operations: [transferSql(account, CREDIT_B)] },
      { participant: 'ledger', payload: { account, delta: -DEBIT_LEDGER } },
    ],
    commit: true,
    timeoutMs: 20_000,
  };
}

interface Balances {
  a: number;
  b: number;
  ledger: number;
}

async function balances(r: Rig, account: string): Promise<Balances> {
  return { a: await balanceOf(dbA, account), b: await balanceOf(dbB, account), ledger: r.ledger.balances()[account] ?? NaN };
}

const UNTOUCHED: Balances = { a: START, b: START, ledger: START };
const TRANSFERRED: Balances = { a: START - DEBIT_A, b: START + CREDIT_B, ledger: START - DEBIT_LEDGER };

/** Transaction ids this coordinator left traces of: prepared gids and ledger branches. */
async function observedTxIds(r: Rig): Promise<Set<string>> {
  const ids = new Set<string>();
  for (const db of [dbA, dbB]) for (const gid of await preparedGids(db, `tcx:${r.coordinatorId}:`)) ids.add(txIdOfGid(gid));
  for (const e of await r.store.list()) ids.add(e.transactionId);
  return ids;
}

async function expectSigkilled(coord: CoordinatorProcess): Promise<void> {
  const exit = await coord.waitExit(20_000);
  expect(exit, 'the coordinator should have killed itself at the fail point').toEqual({ code: null, signal: 'SIGKILL' });
}

/** The final API view of `id` and the ledger's record of its branch agree with `outcome`. */
async function expectOutcome(r: Rig, id: string, outcome: 'committed' | 'aborted'): Promise<void> {
  const got = await r.coord.request('GET', `/v1/transactions/${id}`);
  expect(got.status, JSON.stringify(got.body)).toBe(200);
  expect(got.body).toMatchObject({ id, state: outcome, inDoubt: false });
  expect(got.body.decision).toBe(outcome === 'committed' ? 'commit' : 'abort');
  const states = (got.body.branches as { state: string }[]).map((b) => b.state);
  // A transaction the log never heard of (killed after an early prepare, before any record)
  // is known only by the branches the recovery sweep found prepared and rolled back.
  if (outcome === 'aborted' && /rolled back by the recovery sweep/.test(String(got.body.reason))) {
    expect(states.length).toBeGreaterThanOrEqual(1);
    expect(states.length).toBeLessThanOrEqual(3);
  } else {
    expect(states.length).toBe(3);
  }
  expect(new Set(states)).toEqual(new Set([outcome]));
  const ledgerEntries = (await r.store.list()).filter((e) => e.transactionId === id);
  for (const e of ledgerEntries) expect(e.status).toBe(outcome);
  if (outcome === 'committed') expect(ledgerEntries.length).toBe(1);
}

const CASES = [
  { failPoint: 'after-prepare', outcome: 'aborted', resumedDecision: 'abort' },
  { failPoint: 'after-decision-logged', outcome: 'committed', resumedDecision: 'commit' },
  { failPoint: 'between-commits', outcome: 'committed', resumedDecision: 'commit' },
  { failPoint: 'before-end-record', outcome: 'committed', resumedDecision: 'commit' },
] as const;

const LOGS = crashLogs(() => inject('pgUrlB'));

describe.each(LOGS)('coordinator ($log log) killed at a fail point during one transfer, then restarted', ({ log, env }) => {
  for (const c of CASES) {
    it(`${c.failPoint}: every branch ends ${c.outcome}, money conserved, nothing prepared left`, async () => {
      const account = `one_${log}_${c.failPoint.replace(/-/g, '_')}`;
      const r = await setUp(c.failPoint, [account], { down: false }, await env(c.failPoint));

      const answer = await settle(r.coord.request('POST', '/v1/transactions', transferBody(account)));
      expect(answer.ok, 'the request must fail: the coordinator died before answering').toBe(false);
      await expectSigkilled(r.coord);

      const ids = await observedTxIds(r);
      expect(ids.size, 'exactly one transaction left traces').toBe(1);
      const id = [...ids][0] as string;

      await r.coord.restart();
      await waitSettled(r.coord, [dbA, dbB]);

      const expected = c.outcome === 'committed' ? TRANSFERRED : UNTOUCHED;
      expect(await balances(r, account)).toEqual(expected);
      expect(await preparedGids(dbA)).toEqual([]);
      expect(await preparedGids(dbB)).toEqual([]);
      expect(r.ledger.reserved()).toBe(0);
      await expectOutcome(r, id, c.outcome);

      // Start-up recovery resumed the transaction with the right decision.
      const resumed = r.coord.logLines(1).filter((l) => l.msg === 'recovery: resuming transaction' && l.txId === id);
      expect(resumed.map((l) => l.decision)).toEqual([c.resumedDecision]);
      expect(r.coord.logLines(1).some((l) => l.msg === 'recovery: coordinator started')).toBe(true);
      // The registry came back from the log (rule 8): all three participants, no secret echoed.
      const participants = await r.coord.request('GET', '/v1/participants');
      expect((participants.body.participants as { name: string }[]).map((p) => p.name).sort()).toEqual(['bank-a', 'bank-b', 'ledger']);
    });
  }
});

describe('coordinator killed while several transfers run concurrently', () => {
  const VARIANTS = [
    { failPoint: 'between-commits:3', mustCommitSome: true },
    { failPoint: 'after-prepare:4', mustCommitSome: false },
    { failPoint: 'after-decision-logged:2', mustCommitSome: true },
    { failPoint: 'before-end-record:2', mustCommitSome: true },
  ];
  for (const v of VARIANTS) {
    it(`${v.failPoint} with 5 concurrent transfers: each transfer all-or-nothing, total conserved`, async () => {
      const tag = v.failPoint.replace(/[-:]/g, '_');
      const accounts = Array.from({ length: 5 }, (_, i) => `con_${tag}_${i}`);
      const r = await setUp(v.failPoint, accounts);

      const answers = await Promise.all(accounts.map((a) => settle(r.coord.request('POST', '/v1/transactions', transferBody(a)))));
      await expectSigkilled(r.coord);
      expect(answers.some((a) => !a.ok), 'at least one request was cut off by the crash').toBe(true);
      const ids = await observedTxIds(r);

      await r.coord.restart();
      await waitSettled(r.coord, [dbA, dbB]);

      let committed = 0;
      for (const [i, account] of accounts.entries()) {
        const got = await balances(r, account);
        expect([UNTOUCHED, TRANSFERRED], `transfer on ${account} must be all or nothing`).toContainEqual(got);
        const done = got.a === TRANSFERRED.a;
        if (done) committed++;
        const a = answers[i];
        // An answer that came back before the crash must match what the stores hold.
        if (a?.ok === true) {
          expect(a.value.body.state).toBe(done ? 'committed' : 'aborted');
          ids.add(a.value.body.id as string);
        }
      }
      if (v.mustCommitSome) expect(committed).toBeGreaterThan(0);
      const sum = async (db: string): Promise<number> => {
        let s = 0;
        for (const acc of accounts) s += await balanceOf(db, acc);
        return s;
      };
      const ledgerSum = accounts.reduce((s, acc) => s + (r.ledger.balances()[acc] ?? NaN), 0);
      expect((await sum(dbA)) + (await sum(dbB)) + ledgerSum).toBe(3 * START * accounts.length);
      expect(await preparedGids(dbA)).toEqual([]);
      expect(await preparedGids(dbB)).toEqual([]);
      expect(r.ledger.reserved()).toBe(0);

      // Every transaction we saw traces of reports a final state that agrees with its ledger branch.
      for (const id of ids) {
        const got = await r.coord.request('GET', `/v1/transactions/${id}`);
        expect(got.status, `GET ${id}: ${JSON.stringify(got.body)}`).toBe(200);
        expect(['committed', 'aborted']).toContain(got.body.state);
        await expectOutcome(r, id, got.body.state as 'committed' | 'aborted');
      }
    });
  }
});

describe('recovery sweep: prepared branches the log never heard of (crash between PREPARE and the log write)', () => {
  it('rolls back a Postgres-only transfer killed after-prepare, and an injected orphan gid of an unknown transaction', async () => {
    const account = 'sweep_pg_only';
    const r = await setUp('after-prepare', [account, 'sweep_orphan']);
    // No HTTP branch: nothing forces the enlistments to the log before PREPARE leaves.
    const answer = await settle(
      r.coord.request('POST', '/v1/transactions', {
        branches: [
          { participant: 'bank-a', operations: [transferSql(account, -DEBIT_A)] },
          { participant: 'bank-b', operations: [transferSql(account, DEBIT_A)] },
        ],
        commit: true,
      }),
    );
    expect(answer.ok).toBe(false);
    await expectSigkilled(r.coord);
    const ids = await observedTxIds(r);
    expect(ids.size).toBe(1);
    const id = [...ids][0] as string;

    // A branch prepared under this coordinator's id for a transaction the log never saw.
    const orphanGid = `tcx:${r.coordinatorId}:${randomUUID()}:1`;
    await withClient(dbA, async (cl) => {
      await cl.query('BEGIN');
      await cl.query('UPDATE accounts SET balance = balance + 1000 WHERE id = $1', ['sweep_orphan']);
      await cl.query(`PREPARE TRANSACTION '${orphanGid}'`);
    });
    expect(await preparedGids(dbA)).toContain(orphanGid);

    await r.coord.restart();
    // The start-up sweep runs before the API answers: the orphan is gone at once.
    expect(await preparedGids(dbA)).not.toContain(orphanGid);
    await waitSettled(r.coord, [dbA, dbB]);
    expect(await balanceOf(dbA, 'sweep_orphan')).toBe(START);
    expect([await balanceOf(dbA, account), await balanceOf(dbB, account)]).toEqual([START, START]);
    const rolledBack = r.coord.logLines(1).filter((l) => l.msg === 'recovery: resolved prepared branch');
    expect(rolledBack.find((l) => l.gid === orphanGid)).toMatchObject({ action: 'rollback', logged: 'none' });
    // The locks are released: the rows can be updated at once.
    for (const db of [dbA, dbB]) {
      await withClient(db, (cl) => cl.query("SET lock_timeout = '2s'; UPDATE accounts SET balance = balance WHERE id = 'sweep_pg_only'"));
    }
    // The transaction is either known to the log (aborted) or unknown (presumed abort).
    const got = await r.coord.request('GET', `/v1/transactions/${id}`);
    if (got.status === 200) expect(got.body.state).toBe('aborted');
    else expect(got.body.error.code).toBe('UNKNOWN_TRANSACTION');
  });

  it('rolls back an unlogged branch of a transaction the log knows but never saw end, in the start-up recovery', async () => {
    const account = 'sweep_known_tx';
    const r = await setUp('after-prepare', [account, 'sweep_extra']);
    const answer = await settle(r.coord.request('POST', '/v1/transactions', transferBody(account)));
    expect(answer.ok).toBe(false);
    await expectSigkilled(r.coord);
    const ids = await observedTxIds(r);
    expect(ids.size).toBe(1);
    const id = [...ids][0] as string;

    // The crash hit after this branch was PREPAREd but before its enlistment reached the log.
    const extraGid = `tcx:${r.coordinatorId}:${id}:7`;
    await withClient(dbB, async (cl) => {
      await cl.query('BEGIN');
      await cl.query('UPDATE accounts SET balance = balance + 1000 WHERE id = $1', ['sweep_extra']);
      await cl.query(`PREPARE TRANSACTION '${extraGid}'`);
    });

    await r.coord.restart();
    // Rule 6: resolved within one recovery pass (the periodic sweep is 10 minutes away).
    await waitSettled(r.coord, [dbA, dbB], 10_000);
    expect(await balanceOf(dbB, 'sweep_extra')).toBe(START);
    expect(await balances(r, account)).toEqual(UNTOUCHED);
  });

  // Rule 6 within the start-up pass: a resumed transaction drives only the branches its log
  // names, so a branch prepared but never logged (crash between PREPARE and the lazy
  // branch-enlisted write) must be resolved by the sweep even though its transaction is live.
  it('rolls back an unlogged branch of a resumed transaction even while that transaction waits for an unreachable participant', async () => {
    const account = 'sweep_slow_tx';
    const gate: Gate = { down: false };
    const r = await setUp('after-prepare', [account, 'sweep_extra2'], gate);
    const answer = await settle(r.coord.request('POST', '/v1/transactions', transferBody(account)));
    expect(answer.ok).toBe(false);
    await expectSigkilled(r.coord);
    const ids = await observedTxIds(r);
    expect(ids.size).toBe(1);
    const id = [...ids][0] as string;
    const extraGid = `tcx:${r.coordinatorId}:${id}:7`;
    await withClient(dbB, async (cl) => {
      await cl.query('BEGIN');
      await cl.query('UPDATE accounts SET balance = balance + 1000 WHERE id = $1', ['sweep_extra2']);
      await cl.query(`PREPARE TRANSACTION '${extraGid}'`);
    });

    // The ledger is unreachable while the coordinator restarts: the resumed abort keeps
    // retrying it, so the transaction is still live when the start-up sweep runs.
    // Only the rule-6 assertion may make this `.fails` test fail: if a precondition breaks,
    // return normally so that vitest reports it ("expected to fail").
    gate.down = true;
    try {
      try {
        await r.coord.restart();
        const inDoubt = await r.coord.request('GET', '/v1/transactions?state=in-doubt');
        expect(inDoubt.body.transactions.map((t: { id: string }) => t.id)).toEqual([id]);
        gate.down = false;
        await until('the resumed transaction to end', async () => (await r.coord.request('GET', '/healthz')).body.liveTransactions === 0, 10_000);
        expect(await balances(r, account)).toEqual(UNTOUCHED);
      } catch (err) {
        console.log(`precondition failed, not the known bug: ${String(err)}\n${r.coord.tail()}`);
        return;
      }
      // Rule 6: every prepared branch with this coordinator's id is resolved within one
      // recovery pass after the restart (the periodic sweep is 10 minutes away).
      await until('the unlogged branch to be rolled back', async () => (await preparedGids(dbB)).length === 0, 3_000).catch(() => undefined);
      expect(await preparedGids(dbB), 'unlogged branch of a resumed transaction left prepared').toEqual([]);
    } finally {
      gate.down = false;
      // Do not leave it to later tests (they check that nothing at all is prepared).
      await withClient(dbB, (cl) => cl.query(`ROLLBACK PREPARED '${extraGid}'`)).catch(() => undefined);
    }
  });
});
