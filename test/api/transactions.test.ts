import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import type { Ledger } from '../../src/examples/ledger-service.js';
import { buildLedger } from '../../src/examples/ledger-service.js';
import { balanceOf, createAccounts, freshDatabase, preparedGids, totalBalance, withClient } from '../support/databases.js';
import { startCoordinator, type InProcessCoordinator } from '../support/in-process-coordinator.js';

let c: InProcessCoordinator;
let dbA: string;
let dbB: string;
let ledger: Ledger;
let ledgerUrl: string;

const transferSql = (account: string, delta: number) => ({
  sql: 'UPDATE accounts SET balance = balance + $1 WHERE id = $2 RETURNING balance',
  params: [delta, account],
});

const api: InProcessCoordinator['api'] = (method, url, payload) => c.api(method, url, payload);

beforeAll(async () => {
  [dbA, dbB] = await Promise.all([freshDatabase(inject('pgUrlA')), freshDatabase(inject('pgUrlB'))]);
  await createAccounts(dbA, { alice: 100, carol: 0 });
  await createAccounts(dbB, { bob: 100, dave: 0 });
  ledger = await buildLedger({ balances: { erin: 50 } });
  ledgerUrl = await ledger.app.listen({ host: '127.0.0.1', port: 0 });
  c = await startCoordinator({ TCX_DEFAULT_TIMEOUT_MS: '10000' });
  expect((await api('POST', '/v1/participants', { name: 'bank-a', kind: 'postgres', connectionString: dbA })).status).toBe(201);
  expect((await api('POST', '/v1/participants', { name: 'bank-b', kind: 'postgres', connectionString: dbB })).status).toBe(201);
  expect((await api('POST', '/v1/participants', { name: 'ledger', kind: 'http', baseUrl: ledgerUrl })).status).toBe(201);
});

afterAll(async () => {
  await c?.destroy();
  await ledger?.app.close();
});

describe('transactions across two Postgres databases and an HTTP service', () => {
  it('commits a transfer in one request and moves the money in both databases', async () => {
    const res = await api('POST', '/v1/transactions', {
      branches: [
        { participant: 'bank-a', operations: [transferSql('alice', -10)] },
        { participant: 'bank-b', operations: [transferSql('bob', 10)] },
      ],
      commit: true,
    });
    expect(res.status).toBe(200);
    expect(res.body.state).toBe('committed');
    expect(res.body.results[0].results[0].rows[0].balance).toBe('90');
    expect(await balanceOf(dbA, 'alice')).toBe(90);
    expect(await balanceOf(dbB, 'bob')).toBe(110);
    expect(await preparedGids(dbA)).toEqual([]);
    const got = await api('GET', `/v1/transactions/${res.body.id}`);
    expect(got.body).toMatchObject({ state: 'committed', decision: 'commit', protocol: '2pc' });
    expect(got.body.branches.map((b: { state: string }) => b.state)).toEqual(['committed', 'committed']);
  });

  it('answers 409 aborted when a CHECK constraint fails, and changes nothing anywhere', async () => {
    const before = [await balanceOf(dbA, 'alice'), await balanceOf(dbB, 'bob')];
    const res = await api('POST', '/v1/transactions', {
      branches: [
        { participant: 'bank-b', operations: [transferSql('bob', 1000)] },
        { participant: 'bank-a', operations: [transferSql('alice', -1000)] },
      ],
      commit: true,
    });
    expect(res.status).toBe(409);
    expect(res.body.error.code).toBe('TRANSACTION_ABORTED');
    expect(res.body.state).toBe('aborted');
    expect(res.body.reason).toMatch(/check constraint/);
    expect(res.body.error.details.details.sqlState).toBe('23514');
    expect([await balanceOf(dbA, 'alice'), await balanceOf(dbB, 'bob')]).toEqual(before);
    expect(await preparedGids(dbA)).toEqual([]);
    expect(await preparedGids(dbB)).toEqual([]);
  });

  it('runs the step-by-step API: begin, enlist, prepare, commit', async () => {
    const begun = await api('POST', '/v1/transactions', { timeoutMs: 20000 });
    expect(begun.status).toBe(201);
    expect(begun.body.state).toBe('active');
    const id = begun.body.id as string;
    expect((await api('POST', `/v1/transactions/${id}/branches`, { participant: 'bank-a', operations: [transferSql('alice', -5)] })).status).toBe(201);
    expect((await api('POST', `/v1/transactions/${id}/branches`, { participant: 'ledger', payload: { account: 'erin', delta: 5 } })).status).toBe(201);
    const prepared = await api('POST', `/v1/transactions/${id}/prepare`);
    expect(prepared.status).toBe(200);
    expect(prepared.body.state).toBe('prepared');
    expect((await preparedGids(dbA)).length).toBe(1);
    const committed = await api('POST', `/v1/transactions/${id}/commit`);
    expect(committed.status).toBe(200);
    expect(committed.body.state).toBe('committed');
    expect(ledger.balances().erin).toBe(55);
    expect(await preparedGids(dbA)).toEqual([]);
    // Commit again: idempotent.
    expect((await api('POST', `/v1/transactions/${id}/commit`)).status).toBe(200);
  });

  it('aborts when the HTTP participant votes no, leaving Postgres untouched', async () => {
    const before = await balanceOf(dbA, 'alice');
    const res = await api('POST', '/v1/transactions', {
      branches: [
        { participant: 'bank-a', operations: [transferSql('alice', 1)] },
        { participant: 'ledger', payload: { account: 'erin', delta: -100000 } },
      ],
      commit: true,
    });
    expect(res.status).toBe(409);
    expect(res.body.state).toBe('aborted');
    expect(res.body.error.code).toBe('TRANSACTION_ABORTED');
    expect(res.body.reason).toMatch(/insufficient funds/);
    expect(await balanceOf(dbA, 'alice')).toBe(before);
    expect(await preparedGids(dbA)).toEqual([]);
  });

  it('aborts on request and releases the row locks', async () => {
    const { body } = await api('POST', '/v1/transactions', {});
    await api('POST', `/v1/transactions/${body.id}/branches`, { participant: 'bank-a', operations: [transferSql('carol', 7)] });
    const aborted = await api('POST', `/v1/transactions/${body.id}/abort`, { reason: 'changed my mind' });
    expect(aborted.status).toBe(200);
    expect(aborted.body.state).toBe('aborted');
    expect(await balanceOf(dbA, 'carol')).toBe(0);
    await withClient(dbA, (cl) => cl.query("SET lock_timeout = '2s'; UPDATE accounts SET balance = balance WHERE id = 'carol'"));
    expect((await api('POST', `/v1/transactions/${body.id}/commit`)).status).toBe(409);
  });

  it('times out an abandoned transaction, rolls it back and frees its locks', async () => {
    const { body } = await api('POST', '/v1/transactions', { timeoutMs: 300 });
    await api('POST', `/v1/transactions/${body.id}/branches`, { participant: 'bank-b', operations: [transferSql('dave', 3)] });
    const deadline = Date.now() + 10_000;
    let state = '';
    while (Date.now() < deadline) {
      state = (await api('GET', `/v1/transactions/${body.id}`)).body.state;
      if (state === 'aborted') break;
      await new Promise((r) => setTimeout(r, 50));
    }
    expect(state).toBe('aborted');
    expect((await api('GET', `/v1/transactions/${body.id}`)).body.reason).toMatch(/timed out/);
    await withClient(dbB, (cl) => cl.query("SET lock_timeout = '2s'; UPDATE accounts SET balance = balance WHERE id = 'dave'"));
    expect(await balanceOf(dbB, 'dave')).toBe(0);
  });

  it('conserves the total under 8 concurrent clients making 500 transfers, some refused by the CHECK constraint', async () => {
    await createAccounts(dbA, { w1: 50, w2: 50, w3: 50, w4: 50 });
    await createAccounts(dbB, { w1: 50, w2: 50, w3: 50, w4: 50 });
    const totalBefore = (await totalBalance(dbA)) + (await totalBalance(dbB));
    let next = 0;
    const outcomes = { committed: 0, aborted: 0 };
    let seed = 42;
    const random = () => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed / 2 ** 31;
    };
    async function client(): Promise<void> {
      while (next < 500) {
        next++;
        const account = `w${1 + Math.floor(random() * 4)}`;
        const amount = 1 + Math.floor(random() * 40);
        const aToB = random() < 0.5;
        // Branches always in the same participant order, as a client should: two transactions
        // locking the same rows in opposite orders across two databases deadlock, and no single
        // database can see it (the transaction timeout would end it).
        const res = await api('POST', '/v1/transactions', {
          branches: [
            { participant: 'bank-a', operations: [transferSql(account, aToB ? -amount : amount)] },
            { participant: 'bank-b', operations: [transferSql(account, aToB ? amount : -amount)] },
          ],
          commit: true,
        });
        if (res.body.state === 'committed') outcomes.committed++;
        else if (res.body.state === 'aborted') outcomes.aborted++;
        else throw new Error(`unexpected answer ${res.status} ${JSON.stringify(res.body)}`);
      }
    }
    await Promise.all(Array.from({ length: 8 }, client));
    expect(outcomes.committed + outcomes.aborted).toBe(500);
    expect(outcomes.committed).toBeGreaterThan(50);
    expect(outcomes.aborted).toBeGreaterThan(0);
    expect((await totalBalance(dbA)) + (await totalBalance(dbB))).toBe(totalBefore);
    expect(await preparedGids(dbA)).toEqual([]);
    expect(await preparedGids(dbB)).toEqual([]);
    expect((await api('GET', '/v1/transactions?state=in-doubt')).body.transactions).toEqual([]);
  });
});

describe('bad input changes nothing', () => {
  it('refuses an unknown participant, a malformed operation, an unknown id and a wrong state transition with 4xx codes', async () => {
    const totalBefore = (await totalBalance(dbA)) + (await totalBalance(dbB));
    const logBefore = c.coordinator.health().log.appendedRecords;
    const { body } = await api('POST', '/v1/transactions', {});
    const id = body.id as string;
    const cases: [string, string, unknown, number, string][] = [
      ['POST', `/v1/transactions/${id}/branches`, { participant: 'nope', operations: [transferSql('alice', 1)] }, 404, 'UNKNOWN_PARTICIPANT'],
      ['POST', `/v1/transactions/${id}/branches`, { participant: 'bank-a', operations: [{ sql: 42 }] }, 400, 'VALIDATION_FAILED'],
      ['POST', `/v1/transactions/${id}/branches`, { participant: 'bank-a', operations: [{ sql: 'COMMIT' }] }, 400, 'VALIDATION_FAILED'],
      ['POST', `/v1/transactions/${id}/branches`, { participant: 'bank-a', operations: [] }, 400, 'VALIDATION_FAILED'],
      ['POST', '/v1/transactions/00000000-0000-0000-0000-000000000000/commit', undefined, 404, 'UNKNOWN_TRANSACTION'],
      ['GET', '/v1/transactions/not%20an%20id', undefined, 400, 'VALIDATION_FAILED'],
      ['POST', '/v1/transactions', { protocol: 'xa' }, 400, 'VALIDATION_FAILED'],
      ['POST', '/v1/transactions', { commit: true }, 400, 'VALIDATION_FAILED'],
      ['POST', '/v1/participants', { name: 'x', kind: 'postgres' }, 400, 'VALIDATION_FAILED'],
      ['POST', '/v1/participants', { name: 'bank-a', kind: 'postgres', connectionString: dbA }, 409, 'PARTICIPANT_EXISTS'],
      ['GET', '/v1/participants/ghost', undefined, 404, 'UNKNOWN_PARTICIPANT'],
      ['GET', '/v1/nothing-here', undefined, 404, 'NOT_FOUND'],
    ];
    for (const [method, url, payload, status, code] of cases) {
      const res = await api(method as 'GET' | 'POST', url, payload);
      expect({ url, status: res.status, code: res.body?.error?.code }).toEqual({ url, status, code });
    }
    const malformed = await c.app.inject({ method: 'POST', url: '/v1/transactions', payload: '{"branches": [', headers: { 'content-type': 'application/json' } });
    expect(malformed.statusCode).toBe(400);
    expect(malformed.json().error.code).toBe('VALIDATION_FAILED');
    // The transaction is still active and usable; nothing was logged for the refused requests.
    expect((await api('GET', `/v1/transactions/${id}`)).body.state).toBe('active');
    await new Promise((r) => setTimeout(r, 100)); // let a lazy flush write anything that was appended
    expect(c.coordinator.health().log.appendedRecords).toBe(logBefore); // an open transaction writes nothing yet
    const prepared = await api('POST', `/v1/transactions/${id}/prepare`);
    expect(prepared.body.state).toBe('prepared');
    expect((await api('POST', `/v1/transactions/${id}/branches`, { participant: 'bank-a', operations: [transferSql('alice', 1)] })).status).toBe(409);
    await api('POST', `/v1/transactions/${id}/abort`);
    expect((await totalBalance(dbA)) + (await totalBalance(dbB))).toBe(totalBefore);
  });

  it('redacts secrets and refuses to remove a participant with unfinished branches', async () => {
    const view = await api('GET', '/v1/participants/bank-a');
    expect(view.status).toBe(200);
    expect(view.body.kind).toBe('postgres');
    const { body } = await api('POST', '/v1/transactions', {});
    await api('POST', `/v1/transactions/${body.id}/branches`, { participant: 'bank-b', operations: [transferSql('dave', 0)] });
    const refused = await api('DELETE', '/v1/participants/bank-b');
    expect(refused.status).toBe(409);
    expect(refused.body.error.code).toBe('PARTICIPANT_IN_USE');
    await api('POST', `/v1/transactions/${body.id}/abort`);
  });
});
