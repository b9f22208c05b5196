/**
 * One-phase commit: a transaction of one Postgres branch commits with a plain COMMIT — no
 * PREPARE TRANSACTION, nothing forced before it — and says so (`onePhase: true`). Its
 * safety conditions, each checked on the real database: only a lone branch goes one-phase
 * (two branches keep the full protocol), a COMMIT the database refuses is an abort, and a
 * COMMIT whose answer is lost is resolved from the database (txid_status) to what it did —
 * never guessed, never committed twice; while the database cannot tell, the transaction is
 * in doubt, and an operator can resolve it by hand.
 */
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { balanceOf, createAccounts, freshDatabase, preparedGids, withClient } from '../support/databases.js';
import { FaultProxy } from '../support/fault-proxy.js';
import { OUTCOME_QUERY, PLAIN_COMMIT } from '../support/one-phase-faults.js';
import { startCoordinator, type InProcessCoordinator } from '../support/in-process-coordinator.js';

let c: InProcessCoordinator;
let dbA: string;
let dbB: string;
let proxy: FaultProxy;

const move = (account: string, delta: number) => ({ sql: 'UPDATE accounts SET balance = balance + $1 WHERE id = $2', params: [delta, account] });

const api: InProcessCoordinator['api'] = (method, url, payload) => c.api(method, url, payload);

async function fsyncs(): Promise<number> {
  return ((await api('GET', '/healthz')).body as { log: { fsyncs: number } }).log.fsyncs;
}


beforeAll(async () => {
  [dbA, dbB] = await Promise.all([freshDatabase(inject('pgUrlA')), freshDatabase(inject('pgUrlB'))]);
  await createAccounts(dbA, { alice: 100, doomed: 100, carol: 100 });
  await createAccounts(dbB, { bob: 100 });
  // A deferred constraint trigger that fails at COMMIT for `doomed`: the work runs, COMMIT is refused.
  await withClient(dbA, async (client) => {
    await client.query(`CREATE FUNCTION refuse_doomed() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN IF NEW.id = 'doomed' THEN RAISE EXCEPTION 'doomed accounts never change'; END IF; RETURN NEW; END $$`);
    await client.query(`CREATE CONSTRAINT TRIGGER refuse_doomed AFTER UPDATE ON accounts
      DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION refuse_doomed()`);
  });
  proxy = await FaultProxy.forUrl(dbA, { name: 'pg' });
  c = await startCoordinator({ TCX_DEFAULT_TIMEOUT_MS: '10000', TCX_RECOVERY_INTERVAL_MS: '3600000', TCX_COMMIT_WAIT_MS: '2000', TCX_RETRY_INITIAL_MS: '3000', TCX_RETRY_MAX_MS: '10000' });
  expect((await api('POST', '/v1/participants', { name: 'bank-a', kind: 'postgres', connectionString: dbA })).status).toBe(201);
  expect((await api('POST', '/v1/participants', { name: 'bank-b', kind: 'postgres', connectionString: dbB })).status).toBe(201);
  expect((await api('POST', '/v1/participants', { name: 'bank-proxied', kind: 'postgres', connectionString: proxy.rewriteUrl(dbA) })).status).toBe(201);
});

afterAll(async () => {
  await c?.destroy();
  await proxy?.close();
});

describe('one-phase commit', () => {
  it('a one-request transaction of one branch commits with a plain COMMIT; one fsync, for its end record', async () => {
    const before = await fsyncs();
    const res = await api('POST', '/v1/transactions', { branches: [{ participant: 'bank-a', operations: [move('alice', -5), move('carol', 5)] }], commit: true });
    expect(res.status, JSON.stringify(res.body)).toBe(200);
    expect(res.body).toMatchObject({ state: 'committed', decision: 'commit', onePhase: true, inDoubt: false });
    // Nothing before the COMMIT; the end record, forced before the answer, is the only fsync.
    expect(await fsyncs()).toBe(before + 1);
    expect((res.body.branches as { vote?: string }[])[0]?.vote).toBeUndefined();
    expect(await balanceOf(dbA, 'alice')).toBe(95);
    expect(await balanceOf(dbA, 'carol')).toBe(105);
    expect(await preparedGids(dbA)).toEqual([]);
    // The finished transaction's view, from the log's end record.
    const got = await api('GET', `/v1/transactions/${res.body.id as string}`);
    expect(got.body).toMatchObject({ state: 'committed', decision: 'commit', onePhase: true });
    expect((got.body.branches as { participant: string; state: string }[]).map((b) => [b.participant, b.state])).toEqual([['bank-a', 'committed']]);
  });

  it('begin, enlist and commit as separate requests: one-phase as well', async () => {
    const begun = await api('POST', '/v1/transactions', {});
    const id = begun.body.id as string;
    expect((await api('POST', `/v1/transactions/${id}/branches`, { participant: 'bank-a', operations: [move('alice', -1)] })).status).toBe(201);
    expect((await api('POST', `/v1/transactions/${id}/branches`, { participant: 'bank-a', operations: [move('carol', 1)] })).status).toBe(201);
    const committed = await api('POST', `/v1/transactions/${id}/commit`);
    expect(committed.status, JSON.stringify(committed.body)).toBe(200);
    expect(committed.body).toMatchObject({ state: 'committed', onePhase: true });
    expect(await balanceOf(dbA, 'alice')).toBe(94);
    expect(await balanceOf(dbA, 'carol')).toBe(106);
  });

  it('onePhase: false keeps the full protocol: prepared, a forced decision', async () => {
    const before = await fsyncs();
    const res = await api('POST', '/v1/transactions', { onePhase: false, branches: [{ participant: 'bank-a', operations: [move('alice', -1)] }], commit: true });
    expect(res.status, JSON.stringify(res.body)).toBe(200);
    expect(res.body.state).toBe('committed');
    expect(res.body.onePhase).toBeUndefined();
    expect((res.body.branches as { vote?: string }[])[0]?.vote).toBe('yes'); // prepared
    expect(await fsyncs()).toBeGreaterThan(before);
    expect(await balanceOf(dbA, 'alice')).toBe(93);
  });

  it('two branches never go one-phase: one database refusing its commit rolls both back', async () => {
    const res = await api('POST', '/v1/transactions', {
      branches: [
        { participant: 'bank-b', operations: [move('bob', 1)] },
        { participant: 'bank-a', operations: [move('doomed', -1)] },
      ],
      commit: true,
    });
    // Under one-phase the first COMMIT would have landed; prepared, the refusal is a no vote before any commit.
    expect(res.status, JSON.stringify(res.body)).toBe(409);
    expect(res.body.state).toBe('aborted');
    expect(res.body.onePhase).toBeUndefined();
    expect(await balanceOf(dbB, 'bob')).toBe(100);
    expect(await balanceOf(dbA, 'doomed')).toBe(100);
    expect(await preparedGids(dbA)).toEqual([]);
    expect(await preparedGids(dbB)).toEqual([]);
  });

  it('a COMMIT the database refuses (a deferred constraint) is an abort, with the reason', async () => {
    const res = await api('POST', '/v1/transactions', { branches: [{ participant: 'bank-a', operations: [move('doomed', -1)] }], commit: true });
    expect(res.status, JSON.stringify(res.body)).toBe(409);
    expect(res.body).toMatchObject({ state: 'aborted', decision: 'abort', onePhase: true });
    expect(res.body.reason).toMatch(/doomed accounts never change/);
    expect(await balanceOf(dbA, 'doomed')).toBe(100);
  });

  it("COMMIT's answer lost after the database committed: asked with txid_status, reported committed, applied once", async () => {
    const before = await balanceOf(dbA, 'carol');
    proxy.cutReplies(PLAIN_COMMIT, 1);
    const res = await api('POST', '/v1/transactions', { branches: [{ participant: 'bank-proxied', operations: [move('carol', 10)] }], commit: true });
    expect(proxy.counters().repliesCut).toBe(1);
    expect(res.status, JSON.stringify(res.body)).toBe(200);
    expect(res.body).toMatchObject({ state: 'committed', onePhase: true });
    expect(await balanceOf(dbA, 'carol')).toBe(before + 10);
  });

  it("COMMIT's answer lost after the database refused it: reported aborted, nothing applied", async () => {
    const cut = proxy.counters().repliesCut;
    proxy.cutReplies(PLAIN_COMMIT, 1);
    const res = await api('POST', '/v1/transactions', { branches: [{ participant: 'bank-proxied', operations: [move('doomed', -3)] }], commit: true });
    expect(proxy.counters().repliesCut).toBe(cut + 1);
    expect(res.status, JSON.stringify(res.body)).toBe(409);
    expect(res.body).toMatchObject({ state: 'aborted', onePhase: true });
    expect(res.body.reason).toMatch(/rolled the transaction back/);
    expect(await balanceOf(dbA, 'doomed')).toBe(100);
  });

  it("COMMIT's answer lost and the database cannot tell: in doubt, listed so; an operator resolves it by hand", async () => {
    const before = await balanceOf(dbA, 'alice');
    proxy.cutReplies(PLAIN_COMMIT, 1);
    proxy.cutReplies(OUTCOME_QUERY, 10_000); // every attempt to read the outcome breaks
    try {
      const res = await api('POST', '/v1/transactions', { branches: [{ participant: 'bank-proxied', operations: [move('alice', 7)] }], commit: true });
      expect(res.status, JSON.stringify(res.body)).toBe(202);
      expect(res.body).toMatchObject({ state: 'one-phase', decision: null, inDoubt: true, onePhase: true });
      expect(res.body.branches[0].lastError).toBeDefined();
      const id = res.body.id as string;
      const listed = await api('GET', '/v1/transactions?state=in-doubt');
      expect((listed.body.transactions as { id: string }[]).map((t) => t.id)).toContain(id);
      // Asking again (the operator's retry) still cannot tell.
      expect((await api('POST', `/v1/transactions/${id}/retry`)).body).toMatchObject({ state: 'one-phase', inDoubt: true });

      const coordinatorId = ((await api('GET', '/healthz')).body as { coordinatorId: string }).coordinatorId;
      const gid = `tcx:${coordinatorId}:${id}:1`;
      const resolved = await api('POST', `/v1/participants/bank-proxied/prepared/${encodeURIComponent(gid)}/resolve`, { outcome: 'commit', reason: 'the ledger shows the deposit' });
      expect(resolved.status, JSON.stringify(resolved.body)).toBe(200);
      expect(resolved.body).toMatchObject({ gid, participant: 'bank-proxied', outcome: 'commit' });
      const got = await api('GET', `/v1/transactions/${id}`);
      expect(got.body).toMatchObject({ state: 'committed', decision: 'commit', inDoubt: false, onePhase: true });
      expect(await balanceOf(dbA, 'alice')).toBe(before + 7);
      // A second resolution finds nothing in doubt.
      expect((await api('POST', `/v1/participants/bank-proxied/prepared/${encodeURIComponent(gid)}/resolve`, { outcome: 'commit', reason: 'again' })).status).toBe(409);
    } finally {
      proxy.reset();
    }
  });

  it("an operator's resolution against a store that can tell again: the store's answer wins", async () => {
    const before = await balanceOf(dbA, 'alice');
    proxy.cutReplies(PLAIN_COMMIT, 1);
    proxy.cutReplies(OUTCOME_QUERY, 10_000);
    let id: string;
    try {
      const res = await api('POST', '/v1/transactions', { branches: [{ participant: 'bank-proxied', operations: [move('alice', 3)] }], commit: true });
      expect(res.status, JSON.stringify(res.body)).toBe(202);
      id = res.body.id as string;
    } finally {
      proxy.reset(); // the database can be asked again; the next attempt is seconds away
    }
    const coordinatorId = ((await api('GET', '/healthz')).body as { coordinatorId: string }).coordinatorId;
    const gid = `tcx:${coordinatorId}:${id}:1`;
    const resolved = await api('POST', `/v1/participants/bank-proxied/prepared/${encodeURIComponent(gid)}/resolve`, { outcome: 'abort', reason: 'a wrong guess' });
    expect(resolved.status, JSON.stringify(resolved.body)).toBe(200);
    expect(resolved.body).toMatchObject({ gid, outcome: 'commit' });
    expect((await api('GET', `/v1/transactions/${id}`)).body).toMatchObject({ state: 'committed', onePhase: true });
    expect(await balanceOf(dbA, 'alice')).toBe(before + 3);
  });

  it('a read-only branch commits one-phase too', async () => {
    const res = await api('POST', '/v1/transactions', { branches: [{ participant: 'bank-a', operations: [{ sql: 'SELECT balance FROM accounts WHERE id = $1', params: ['alice'] }] }], commit: true });
    expect(res.status, JSON.stringify(res.body)).toBe(200);
    expect(res.body).toMatchObject({ state: 'committed', onePhase: true });
    expect(res.body.results[0].results[0].rows).toEqual([{ balance: String(await balanceOf(dbA, 'alice')) }]);
  });
});
