/**
 * TcxClient against a real coordinator (in this process, listening on a free port, tokens
 * configured) and real Postgres databases: every operation, its typed answer, its typed
 * errors, and the outcome on the stores themselves.
 */
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { TcxApiError, TcxClient, TcxConnectionError, type TransactionView } from '../../src/client/index.js';
import { balanceOf, createAccounts, freshDatabase, prepareByHand, preparedGids, withClient } from '../support/databases.js';
import { getFreePort } from '../support/free-port.js';
import { startCoordinator, type InProcessCoordinator } from '../support/in-process-coordinator.js';

const API = 'client-api-token-0123456789';
const ADMIN = 'client-admin-token-0123456789';
const move = (account: string, delta: number) => ({ sql: 'UPDATE accounts SET balance = balance + $1 WHERE id = $2 RETURNING balance', params: [delta, account] });

let dbA: string;
let dbB: string;
let coordinator: InProcessCoordinator;
let url: string;
let admin: TcxClient;

/** The rejection of `p`, which must be a TcxApiError. */
async function apiError(p: Promise<unknown>): Promise<TcxApiError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(TcxApiError);
  return err as TcxApiError;
}

beforeAll(async () => {
  [dbA, dbB] = await Promise.all([freshDatabase(inject('pgUrlA'), 'client'), freshDatabase(inject('pgUrlB'), 'client')]);
  await createAccounts(dbA, { alice: 100, lost: 0 });
  await createAccounts(dbB, { bob: 100 });
  coordinator = await startCoordinator({ TCX_API_TOKENS: API, TCX_ADMIN_TOKENS: ADMIN, TCX_RECOVERY_INTERVAL_MS: '3600000' });
  await coordinator.app.listen({ port: 0, host: '127.0.0.1' });
  url = `http://127.0.0.1:${(coordinator.app.server.address() as AddressInfo).port}`;
  admin = new TcxClient({ url, token: ADMIN, timeoutMs: 15_000 });
});

afterAll(async () => {
  await admin?.close();
  await coordinator?.destroy();
  for (const db of [dbA, dbB]) {
    if (db === undefined) continue;
    for (const gid of await preparedGids(db)) await withClient(db, (c) => c.query(`ROLLBACK PREPARED '${gid}'`));
  }
});

describe('TcxClient against a real coordinator', () => {
  it('reads health and cluster', async () => {
    const health = await admin.getHealth();
    expect(health.status).toBe('ok');
    expect(health.coordinatorId).toBe(coordinator.coordinator.coordinatorId);
    expect((await admin.getCluster()).mode).toBe('single');
  });

  it('registers, lists, shows and removes participants, with catalogue errors', async () => {
    expect((await admin.registerParticipant({ name: 'a', kind: 'postgres', connectionString: dbA })).name).toBe('a');
    await admin.registerParticipant({ name: 'b', kind: 'postgres', connectionString: dbB });
    const again = await apiError(admin.registerParticipant({ name: 'a', kind: 'postgres', connectionString: dbA }));
    expect([again.status, again.code]).toEqual([409, 'PARTICIPANT_EXISTS']);
    expect((await admin.listParticipants()).participants.map((p) => p.name).sort()).toEqual(['a', 'b']);
    expect((await admin.getParticipant('b')).kind).toBe('postgres');
    await admin.registerParticipant({ name: 'spare', kind: 'postgres', connectionString: dbB });
    await admin.removeParticipant('spare');
    const gone = await apiError(admin.getParticipant('spare'));
    expect([gone.status, gone.code]).toEqual([404, 'UNKNOWN_PARTICIPANT']);
    const bad = await apiError(admin.registerParticipant({ name: 'x', kind: 'postgres' }));
    expect([bad.status, bad.code]).toEqual([400, 'VALIDATION_FAILED']);
  });

  it('runs a one-request transaction, committed on both databases', async () => {
    const tx = await admin.runTransaction({ branches: [{ participant: 'a', operations: [move('alice', -25)] }, { participant: 'b', operations: [move('bob', 25)] }] });
    expect(tx.state).toBe('committed');
    expect(tx.results?.[0]?.results?.[0]).toEqual({ rows: [{ balance: '75' }], rowCount: 1 });
    expect([await balanceOf(dbA, 'alice'), await balanceOf(dbB, 'bob')]).toEqual([75, 125]);
    expect((await admin.getTransaction(tx.id)).decision).toBe('commit');
  });

  it('runs one step by step: begin, enlist, prepare (really prepared), commit, commit again', async () => {
    const begun = await admin.beginTransaction({ timeoutMs: 30_000 });
    expect(begun.state).toBe('active');
    const enlisted = await admin.enlistBranch(begun.id, { participant: 'a', operations: [move('alice', -5)] });
    expect(enlisted.branchId).toBe('b1');
    await admin.enlistBranch(begun.id, { participant: 'b', operations: [move('bob', 5)] });
    expect((await admin.prepareTransaction(begun.id)).state).toBe('prepared');
    expect(await preparedGids(dbA, `tcx:${coordinator.coordinator.coordinatorId}:${begun.id}:`)).toHaveLength(1);
    expect((await admin.commitTransaction(begun.id)).state).toBe('committed');
    expect((await admin.commitTransaction(begun.id)).state).toBe('committed');
    expect([await balanceOf(dbA, 'alice'), await balanceOf(dbB, 'bob')]).toEqual([70, 130]);
  });

  it('aborts, and reports an aborted transaction as TRANSACTION_ABORTED with its view', async () => {
    const begun = await admin.beginTransaction();
    await admin.enlistBranch(begun.id, { participant: 'a', operations: [move('alice', -50)] });
    const aborted = await admin.abortTransaction(begun.id, 'changed my mind');
    expect([aborted.state, aborted.reason]).toEqual(['aborted', 'changed my mind']);
    const commit = await apiError(admin.commitTransaction(begun.id));
    expect([commit.status, commit.code, commit.state]).toEqual([409, 'TRANSACTION_ABORTED', 'aborted']);
    expect((commit.body as TransactionView).id).toBe(begun.id);
    expect(await balanceOf(dbA, 'alice')).toBe(70);
    // A CHECK violation in a one-request transaction: it aborts as a whole, nothing changes.
    const failed = await apiError(admin.runTransaction({ branches: [{ participant: 'a', operations: [move('alice', -500)] }, { participant: 'b', operations: [move('bob', 500)] }] }));
    expect([failed.status, failed.code, failed.state]).toEqual([409, 'TRANSACTION_ABORTED', 'aborted']);
    expect((failed.body as TransactionView).reason).toMatch(/check constraint/);
    // The same while enlisting: the statement fails at once (OPERATION_FAILED), the transaction aborts.
    const open = await admin.beginTransaction();
    const enlist = await apiError(admin.enlistBranch(open.id, { participant: 'a', operations: [move('alice', -500)] }));
    expect([enlist.status, enlist.code, enlist.state, enlist.details?.sqlState]).toEqual([422, 'OPERATION_FAILED', 'aborted', '23514']);
    expect((await admin.getTransaction(open.id)).state).toBe('aborted');
    expect([await balanceOf(dbA, 'alice'), await balanceOf(dbB, 'bob')]).toEqual([70, 130]);
    const unknown = await apiError(admin.getTransaction('00000000-0000-0000-0000-000000000000'));
    expect([unknown.status, unknown.code]).toEqual([404, 'UNKNOWN_TRANSACTION']);
  });

  it('lists transactions a page at a time, and iterates over every page', async () => {
    for (let i = 0; i < 3; i++) await admin.runTransaction({ branches: [{ participant: 'a', operations: [move('alice', 0)] }] });
    const all = await admin.listTransactions({ participant: 'a', limit: 1000 });
    expect(all.nextCursor).toBeNull();
    expect(all.transactions.length).toBeGreaterThanOrEqual(6);
    const first = await admin.listTransactions({ participant: 'a', limit: 2 });
    expect(first.transactions).toHaveLength(2);
    expect(first.nextCursor).toEqual(expect.any(String));
    const second = await admin.listTransactions({ participant: 'a', limit: 2, cursor: first.nextCursor ?? '' });
    expect(second.transactions[0]?.id).toBe(all.transactions[2]?.id);
    const iterated: string[] = [];
    for await (const t of admin.iterateTransactions({ participant: 'a', limit: 2 })) iterated.push(t.id);
    expect(iterated).toEqual(all.transactions.map((t) => t.id));
    const committed = await admin.listTransactions({ state: 'committed', since: new Date(Date.now() - 60_000) });
    expect(committed.transactions.every((t) => t.state === 'committed')).toBe(true);
    expect((await admin.listTransactions({ state: 'in-doubt' })).transactions).toEqual([]);
  });

  it('lists the branches prepared on a participant and resolves a lost one by hand', async () => {
    const gid = 'tcx:lostcoord:77777777-7777-4777-8777-777777777777:1';
    await prepareByHand(dbA, gid, 'lost', 9);
    const listed = await admin.listPreparedBranches('a', { coordinatorId: 'lostcoord' });
    expect(listed.branches).toEqual([expect.objectContaining({ gid, coordinatorId: 'lostcoord', log: { known: false, decision: null, outcome: null, live: false } })]);
    expect((await admin.listPreparedBranches('a')).branches).toEqual([]);
    const resolved = await admin.resolvePreparedBranch('a', gid, { outcome: 'commit', reason: 'OPS-1: its sibling committed' });
    expect(resolved).toMatchObject({ gid, participant: 'a', outcome: 'commit', loggedDecision: null });
    expect(await balanceOf(dbA, 'lost')).toBe(9);
    expect(await preparedGids(dbA, 'tcx:lostcoord:')).toEqual([]);
    const repeated = await apiError(admin.resolvePreparedBranch('a', gid, { outcome: 'commit', reason: 'again' }));
    expect([repeated.status, repeated.code]).toEqual([409, 'INVALID_STATE_TRANSITION']);
  });

  it('answers the operator routes with their catalogue errors', async () => {
    const begun = await admin.beginTransaction();
    const retry = await apiError(admin.retryTransactionDelivery(begun.id));
    expect([retry.status, retry.code]).toEqual([409, 'INVALID_STATE_TRANSITION']);
    const forget = await apiError(admin.forgetBranch(begun.id, 'b9', 'nothing to forget'));
    expect([forget.status, forget.code]).toEqual([404, 'UNKNOWN_BRANCH']);
    await admin.abortTransaction(begun.id);
  });

  it('sends the token, answers FORBIDDEN and UNAUTHORIZED, and never shows a token in an error', async () => {
    const api = new TcxClient({ url, token: API });
    const wrongToken = 'wrong-secret-token-0123456789';
    const wrong = new TcxClient({ url, token: wrongToken });
    try {
      expect((await api.listParticipants()).participants.length).toBe(2);
      const forbidden = await apiError(api.registerParticipant({ name: 'c', kind: 'postgres', connectionString: dbA }));
      expect([forbidden.status, forbidden.code]).toEqual([403, 'FORBIDDEN']);
      const unauthorized = await apiError(wrong.listTransactions());
      expect([unauthorized.status, unauthorized.code]).toEqual([401, 'UNAUTHORIZED']);
      const shown = `${unauthorized.message} ${String(unauthorized.stack)} ${JSON.stringify(unauthorized)} ${JSON.stringify(unauthorized.body)}`;
      expect(shown).not.toContain(wrongToken);
    } finally {
      await api.close();
      await wrong.close();
    }
  });

  it('reports a coordinator it cannot reach as TcxConnectionError (nothing sent), without the token', async () => {
    const port = await getFreePort();
    const token = 'never-shown-token-0123456789';
    const nobody = new TcxClient({ url: `http://127.0.0.1:${port}`, token, retries: 1, timeoutMs: 2_000 });
    try {
      const err = await nobody.beginTransaction().catch((e: unknown) => e);
      expect(err).toBeInstanceOf(TcxConnectionError);
      const c = err as TcxConnectionError;
      // A connection that could not be opened is retried even for a POST: nothing can have happened.
      expect([c.causeCode, c.attempts, c.mayHaveTakenEffect, c.timedOut]).toEqual(['ECONNREFUSED', 2, false, false]);
      expect(`${c.message} ${String(c.stack)} ${JSON.stringify(c)}`).not.toContain(token);
    } finally {
      await nobody.close();
    }
    expect(() => new TcxClient({ url: 'http://user:pw@127.0.0.1:1' })).toThrow(/credentials/);
    expect(() => new TcxClient({ url: 'ftp://127.0.0.1:1' })).toThrow(/http/);
  });
});
