/**
 * A participant that is gone for good: its aborting branches would retry forever and it
 * could never be removed. The operator's way out — forget a branch of an aborting
 * transaction, audited and forced to the log, never under a commit decision — and then the
 * removal of the participant, also audited when it cannot be checked for prepared branches.
 */
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { createAccounts, eventually, freshDatabase, preparedGids, withClient } from '../support/databases.js';
import { FaultProxy } from '../support/fault-proxy.js';
import { startCoordinator, type InProcessCoordinator } from '../support/in-process-coordinator.js';

const API = 'api-token-0123456789abcdef';
const ADMIN = 'admin-token-0123456789abcdef';

let c: InProcessCoordinator;
let dbA: string;
let dbB: string;
let goneA: FaultProxy;
let goneB: FaultProxy;

async function call(method: 'GET' | 'POST' | 'DELETE', url: string, payload?: unknown, token = ADMIN) {
  const res = await c.app.inject({ method, url, headers: { authorization: `Bearer ${token}` }, ...(payload === undefined ? {} : { payload: payload as object }) });
  return { status: res.statusCode, text: res.body, body: res.body === '' ? undefined : res.json() };
}

const debit = (account: string) => ({ sql: 'UPDATE accounts SET balance = balance - 1 WHERE id = $1', params: [account] });

beforeAll(async () => {
  dbA = await freshDatabase(inject('pgUrlA'));
  dbB = await freshDatabase(inject('pgUrlB'));
  await createAccounts(dbA, { alice: 100 });
  await createAccounts(dbB, { bob: 100, carol: 100 });
  goneA = await FaultProxy.forUrl(dbA, { name: 'gone-a' });
  goneB = await FaultProxy.forUrl(dbB, { name: 'gone-b' });
  c = await startCoordinator({
    TCX_API_TOKENS: API,
    TCX_ADMIN_TOKENS: ADMIN,
    TCX_COMMIT_WAIT_MS: '300',
    TCX_CONNECT_TIMEOUT_MS: '300',
    TCX_RECOVERY_INTERVAL_MS: '600000',
  });
  for (const [name, db] of [['here', dbB], ['gone', goneA.rewriteUrl(dbA)], ['gone-committed', goneB.rewriteUrl(dbB)]] as const) {
    expect((await call('POST', '/v1/participants', { name, kind: 'postgres', connectionString: db })).status).toBe(201);
  }
});

afterAll(async () => {
  await c?.destroy();
  await goneA?.close();
  await goneB?.close();
  // What was prepared behind the dead proxies is the operator's to clean up: here, by hand.
  for (const db of [dbA, dbB]) {
    for (const gid of await preparedGids(db)) await withClient(db, (client) => client.query(`ROLLBACK PREPARED '${gid}'`));
  }
});

/** A transaction over `here` and `participant`, prepared; then the participant's proxy dies. */
async function preparedThenGone(participant: string, proxy: FaultProxy, account: string): Promise<string> {
  const begun = await call('POST', '/v1/transactions', { branches: [{ participant: 'here', operations: [debit('bob')] }, { participant, operations: [debit(account)] }] });
  expect(begun.status, begun.text).toBe(201);
  const id = begun.body.id as string;
  expect((await call('POST', `/v1/transactions/${id}/prepare`)).body.state).toBe('prepared');
  proxy.blackhole(true);
  proxy.cutOpenConnections();
  return id;
}

describe('a participant gone for good', () => {
  let aborting: string;
  let committing: string;

  it('leaves an aborting transaction in doubt and the participant in use', async () => {
    aborting = await preparedThenGone('gone', goneA, 'alice');
    const aborted = await call('POST', `/v1/transactions/${aborting}/abort`, { reason: 'client gave up' });
    expect(aborted.body.state).toBe('aborting');
    expect(aborted.body.inDoubt).toBe(true);
    committing = await preparedThenGone('gone-committed', goneB, 'carol');
    const committed = await call('POST', `/v1/transactions/${committing}/commit`);
    expect(committed.status).toBe(202);
    expect(committed.body.state).toBe('committing');
    expect((await call('DELETE', '/v1/participants/gone')).body.error.code).toBe('PARTICIPANT_IN_USE');
  });

  it('refuses to forget without an admin token, without a reason, or under a commit decision', async () => {
    const branch = (await call('GET', `/v1/transactions/${aborting}`)).body.branches.find((b: { participant: string }) => b.participant === 'gone');
    expect((await call('POST', `/v1/transactions/${aborting}/branches/${branch.branchId}/forget`, { reason: 'x' }, API)).status).toBe(403);
    expect((await call('POST', `/v1/transactions/${aborting}/branches/${branch.branchId}/forget`, {})).status).toBe(400);
    expect((await call('POST', `/v1/transactions/${aborting}/branches/b99/forget`, { reason: 'x' })).body.error.code).toBe('UNKNOWN_BRANCH');
    // The branch on the live participant already acknowledged the abort.
    const here = (await call('GET', `/v1/transactions/${aborting}`)).body.branches.find((b: { participant: string }) => b.participant === 'here');
    const acked = await call('POST', `/v1/transactions/${aborting}/branches/${here.branchId}/forget`, { reason: 'x' });
    expect(acked.status).toBe(409);
    expect(acked.body.error.code).toBe('INVALID_STATE_TRANSITION');

    const records = c.coordinator.health().log.appendedRecords;
    const contradicting = await call('POST', `/v1/transactions/${committing}/branches/b2/forget`, { reason: 'the database burnt down' });
    expect(contradicting.status).toBe(409);
    expect(contradicting.body.error.code).toBe('RESOLUTION_CONTRADICTS_LOG');
    expect(c.coordinator.health().log.appendedRecords).toBe(records); // nothing logged
    expect((await call('GET', `/v1/transactions/${committing}`)).body.state).toBe('committing');
  });

  it('forgets a branch of the aborting transaction, audited, so that it ends and the participant can be removed', async () => {
    const forgotten = await call('POST', `/v1/transactions/${aborting}/branches/b2/forget`, { reason: 'OPS-7: bank-a decommissioned' });
    expect(forgotten.status, forgotten.text).toBe(200);
    expect(forgotten.body.state).toBe('aborted');
    const b2 = forgotten.body.branches.find((b: { branchId: string }) => b.branchId === 'b2');
    expect(b2.state).toBe('aborted');
    expect(b2.forgotten).toMatchObject({ reason: 'OPS-7: bank-a decommissioned', actor: expect.stringMatching(/^token:[0-9a-f]{12}$/) });

    // It cannot be checked for prepared branches: removal needs the operator's word.
    const refused = await call('DELETE', '/v1/participants/gone');
    expect(refused.status).toBe(422);
    expect(refused.body.error.code).toBe('PARTICIPANT_UNREACHABLE');
    expect((await call('DELETE', '/v1/participants/gone?unreachable=true')).status).toBe(400);
    expect((await call('DELETE', '/v1/participants/gone?unreachable=true&reason=OPS-7', undefined, API)).status).toBe(403);
    expect((await call('DELETE', '/v1/participants/gone?unreachable=true&reason=OPS-7')).status).toBe(204);
    expect((await call('GET', '/v1/participants/gone')).status).toBe(404);

    // The participant with a committed transaction stays in use: it must come back.
    const inUse = await call('DELETE', '/v1/participants/gone-committed?unreachable=true&reason=OPS-8');
    expect(inUse.body.error.code).toBe('PARTICIPANT_IN_USE');
  });

  it('a forgotten branch found prepared by the sweep is rolled back without ending its still-running transaction', async () => {
    await createAccounts(dbA, { dave: 100 });
    await createAccounts(dbB, { erin: 100 });
    const [flakyA, flakyB] = [await FaultProxy.forUrl(dbA, { name: 'flaky-a' }), await FaultProxy.forUrl(dbB, { name: 'flaky-b' })];
    try {
      for (const [name, proxy, db] of [['flaky-a', flakyA, dbA], ['flaky-b', flakyB, dbB]] as const) {
        expect((await call('POST', '/v1/participants', { name, kind: 'postgres', connectionString: proxy.rewriteUrl(db) })).status).toBe(201);
      }
      const begun = await call('POST', '/v1/transactions', {
        branches: [{ participant: 'flaky-a', operations: [debit('dave')] }, { participant: 'flaky-b', operations: [debit('erin')] }],
      });
      const id = begun.body.id as string;
      expect((await call('POST', `/v1/transactions/${id}/prepare`)).body.state).toBe('prepared');
      for (const proxy of [flakyA, flakyB]) {
        proxy.blackhole(true);
        proxy.cutOpenConnections();
      }
      expect((await call('POST', `/v1/transactions/${id}/abort`)).body.state).toBe('aborting');
      expect((await call('POST', `/v1/transactions/${id}/branches/b1/forget`, { reason: 'thought gone' })).body.state).toBe('aborting');
      // flaky-a comes back: the sweep rolls the forgotten branch back, and writes no end for the live transaction.
      flakyA.blackhole(false);
      await c.coordinator.sweep();
      expect((await preparedGids(dbA)).filter((g) => g.includes(id))).toEqual([]);
      const listed = (await call('GET', '/v1/transactions?participant=flaky-a')).body.transactions.filter((t: { id: string }) => t.id === id);
      expect(listed.map((t: { state: string }) => t.state)).toEqual(['aborting']);
      flakyB.blackhole(false);
      await call('POST', `/v1/transactions/${id}/retry`);
      await eventually(async () => (await call('GET', `/v1/transactions/${id}`)).body.state === 'aborted');
      const ended = (await call('GET', `/v1/transactions/${id}`)).body;
      expect(ended.protocol).toBe('2pc'); // its own end record, not the sweep's presumption
      expect(ended.branches).toHaveLength(2);
      // (flaky-b shares bank-b's database, where gone-committed's branch is still prepared: it stays.)
      expect((await call('DELETE', '/v1/participants/flaky-a')).status).toBe(204);
    } finally {
      await flakyA.close();
      await flakyB.close();
    }
  });

  it('keeps the forgotten branch and the removal across a restart, and resumes nothing for them', async () => {
    await c.stop();
    c = await startCoordinator({ TCX_API_TOKENS: API, TCX_ADMIN_TOKENS: ADMIN, TCX_RECOVERY_INTERVAL_MS: '600000', TCX_CONNECT_TIMEOUT_MS: '300' }, c.dataDir);
    const view = await call('GET', `/v1/transactions/${aborting}`);
    expect(view.body.state).toBe('aborted');
    expect(view.body.branches.find((b: { branchId: string }) => b.branchId === 'b2').forgotten.reason).toBe('OPS-7: bank-a decommissioned');
    expect((await call('GET', '/v1/participants')).body.participants.map((p: { name: string }) => p.name).sort()).toEqual(['flaky-b', 'gone-committed', 'here']);
    // The committed one is resumed and still waits for its participant.
    expect((await call('GET', `/v1/transactions/${committing}`)).body.state).toBe('committing');
    // Its branch on the dead proxy is still prepared. (The forgotten one on bank-a's database was
    // rolled back by a sweep through flaky-a, which reaches the same database.)
    expect((await preparedGids(dbB)).filter((g) => g.includes(committing))).toHaveLength(1);
    expect((await preparedGids(dbA)).filter((g) => g.includes(aborting))).toEqual([]);
  });
});
