import { randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { buildLedger, type Ledger } from '../../src/examples/ledger-service.js';
import { balanceOf, createAccounts, freshDatabase, preparedGids } from '../support/databases.js';
import { startCoordinator, type InProcessCoordinator } from '../support/in-process-coordinator.js';

let c: InProcessCoordinator;
let dbA: string;
let dbB: string;
let redis: Redis;
let ledger: Ledger;
const prefix = randomBytes(4).toString('hex');
const wallet = `test:${prefix}:wallet`;

const api: InProcessCoordinator['api'] = (method, url, payload) => c.api(method, url, payload);

const pgDelta = (participant: string, account: string, delta: number) => ({
  participant,
  operations: [{ sql: 'UPDATE accounts SET balance = balance + $1 WHERE id = $2', params: [delta, account] }],
});

beforeAll(async () => {
  [dbA, dbB] = await Promise.all([freshDatabase(inject('pgUrlA')), freshDatabase(inject('pgUrlB'))]);
  await createAccounts(dbA, { alice: 100 });
  await createAccounts(dbB, { bob: 100 });
  redis = new Redis(inject('redisUrl'));
  await redis.set(wallet, '100');
  ledger = await buildLedger({ balances: { erin: 100 } });
  const ledgerUrl = await ledger.app.listen({ host: '127.0.0.1', port: 0 });
  c = await startCoordinator({ TCX_PUBLIC_URL: 'http://127.0.0.1:1' });
  for (const p of [
    { name: 'a', kind: 'postgres', connectionString: dbA },
    { name: 'b', kind: 'postgres', connectionString: dbB },
    { name: 'cache', kind: 'redis', url: inject('redisUrl') },
    { name: 'ledger', kind: 'http', baseUrl: ledgerUrl },
  ]) {
    expect((await api('POST', '/v1/participants', p)).status).toBe(201);
  }
});

afterAll(async () => {
  await c?.destroy();
  await ledger?.app.close();
  redis?.disconnect();
});

describe('three-phase commit over Postgres, Redis and an HTTP service', () => {
  it('commits through can-commit, pre-commit and do-commit', async () => {
    const res = await api('POST', '/v1/transactions', {
      protocol: '3pc',
      branches: [
        pgDelta('a', 'alice', -30),
        pgDelta('b', 'bob', 10),
        { participant: 'cache', operations: [{ op: 'incrby', key: wallet, by: 10, min: 0 }] },
        { participant: 'ledger', payload: { account: 'erin', delta: 10 } },
      ],
      commit: true,
    });
    expect(res.status).toBe(200);
    expect(res.body).toMatchObject({ protocol: '3pc', state: 'committed', decision: 'commit' });
    expect(await balanceOf(dbA, 'alice')).toBe(70);
    expect(await balanceOf(dbB, 'bob')).toBe(110);
    expect(await redis.get(wallet)).toBe('110');
    expect(ledger.balances().erin).toBe(110);
    expect(await preparedGids(dbA)).toEqual([]);
    expect(await redis.keys('tcx:lock:*')).toEqual([]);
    const got = await api('GET', `/v1/transactions/${res.body.id}`);
    expect(got.body.protocol).toBe('3pc');
    expect(got.body.state).toBe('committed');
  });

  it('prepares Postgres and Redis already in the can-commit round (rule 3)', async () => {
    const { body } = await api('POST', '/v1/transactions', { protocol: '3pc' });
    await api('POST', `/v1/transactions/${body.id}/branches`, pgDelta('a', 'alice', -1));
    await api('POST', `/v1/transactions/${body.id}/branches`, { participant: 'cache', operations: [{ op: 'incrby', key: wallet, by: 1 }] });
    const prepared = await api('POST', `/v1/transactions/${body.id}/prepare`);
    expect(prepared.body.state).toBe('prepared');
    // The durable yes exists on both stores before any pre-commit.
    expect((await preparedGids(dbA)).length).toBe(1);
    expect((await redis.keys('tcx:*staged:*')).length).toBeGreaterThan(0);
    const committed = await api('POST', `/v1/transactions/${body.id}/commit`);
    expect(committed.body.state).toBe('committed');
    expect(await preparedGids(dbA)).toEqual([]);
  });

  it('aborts when a participant votes no in can-commit, without any pre-commit', async () => {
    const before = await balanceOf(dbA, 'alice');
    const res = await api('POST', '/v1/transactions', {
      protocol: '3pc',
      branches: [pgDelta('a', 'alice', -1), { participant: 'cache', operations: [{ op: 'incrby', key: wallet, by: -100000, min: 0 }] }],
      commit: true,
    });
    expect(res.status).toBe(409);
    expect(res.body.state).toBe('aborted');
    expect(await balanceOf(dbA, 'alice')).toBe(before);
    expect(await preparedGids(dbA)).toEqual([]);
    expect(await redis.keys('tcx:lock:*')).toEqual([]);
  });
});
