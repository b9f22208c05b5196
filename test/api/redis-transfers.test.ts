import { randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { balanceOf, createAccounts, freshDatabase, preparedGids } from '../support/databases.js';
import { startCoordinator, type InProcessCoordinator } from '../support/in-process-coordinator.js';
import { RedisServer } from '../support/redis-server.js';

let c: InProcessCoordinator;
let dbA: string;
let redis: Redis;
const k = (name: string): string => `test:${prefix}:${name}`;
const prefix = randomBytes(4).toString('hex');

const api: InProcessCoordinator['api'] = (method, url, payload) => c.api(method, url, payload);

const debitPg = (account: string, amount: number) => ({
  participant: 'bank',
  operations: [{ sql: 'UPDATE accounts SET balance = balance - $1 WHERE id = $2', params: [amount, account] }],
});

beforeAll(async () => {
  dbA = await freshDatabase(inject('pgUrlA'));
  await createAccounts(dbA, { alice: 100 });
  redis = new Redis(inject('redisUrl'));
  await redis.set(k('wallet:bob'), '100');
  c = await startCoordinator();
  expect((await api('POST', '/v1/participants', { name: 'bank', kind: 'postgres', connectionString: dbA })).status).toBe(201);
  expect((await api('POST', '/v1/participants', { name: 'cache', kind: 'redis', url: inject('redisUrl') })).status).toBe(201);
});

afterAll(async () => {
  await c?.destroy();
  redis?.disconnect();
});

describe('transfers between Postgres and Redis', () => {
  it('moves money from a Postgres row to a Redis balance atomically', async () => {
    const res = await api('POST', '/v1/transactions', {
      branches: [debitPg('alice', 30), { participant: 'cache', operations: [{ op: 'incrby', key: k('wallet:bob'), by: 30, min: 0 }] }],
      commit: true,
    });
    expect(res.status).toBe(200);
    expect(res.body.state).toBe('committed');
    expect(await balanceOf(dbA, 'alice')).toBe(70);
    expect(await redis.get(k('wallet:bob'))).toBe('130');
    expect(await redis.keys('tcx:lock:*')).toEqual([]);
  });

  it('votes no when incrby would go below min, and leaves Postgres untouched', async () => {
    const res = await api('POST', '/v1/transactions', {
      branches: [
        { participant: 'cache', operations: [{ op: 'incrby', key: k('wallet:bob'), by: -1000, min: 0 }] },
        { participant: 'bank', operations: [{ sql: 'UPDATE accounts SET balance = balance + $1 WHERE id = $2', params: [1000, 'alice'] }] },
      ],
      commit: true,
    });
    expect(res.status).toBe(409);
    expect(res.body.state).toBe('aborted');
    expect(res.body.reason).toMatch(/bound|min|range/i);
    expect(await balanceOf(dbA, 'alice')).toBe(70);
    expect(await redis.get(k('wallet:bob'))).toBe('130');
    expect(await preparedGids(dbA)).toEqual([]);
  });

  it('votes no on a failed expect guard', async () => {
    await redis.set(k('version'), '7');
    const res = await api('POST', '/v1/transactions', {
      branches: [
        {
          participant: 'cache',
          operations: [
            { op: 'expect', key: k('version'), value: '6' },
            { op: 'set', key: k('version'), value: '8' },
          ],
        },
      ],
      commit: true,
    });
    expect(res.status).toBe(409);
    expect(await redis.get(k('version'))).toBe('7');
  });

  it('makes a transaction touching a key locked by a prepared one vote no, without waiting', async () => {
    const first = (await api('POST', '/v1/transactions', {})).body.id as string;
    await api('POST', `/v1/transactions/${first}/branches`, { participant: 'cache', operations: [{ op: 'set', key: k('seat:12A'), value: 'ann' }] });
    expect((await api('POST', `/v1/transactions/${first}/prepare`)).body.state).toBe('prepared');
    const second = await api('POST', '/v1/transactions', {
      branches: [{ participant: 'cache', operations: [{ op: 'set', key: k('seat:12A'), value: 'ben' }] }],
      commit: true,
    });
    expect(second.status).toBe(409);
    expect(second.body.reason).toMatch(/lock/i);
    expect((await api('POST', `/v1/transactions/${first}/commit`)).body.state).toBe('committed');
    expect(await redis.get(k('seat:12A'))).toBe('ann');
    expect(await redis.keys('tcx:lock:*')).toEqual([]);
  });

  it('answers the value read at enlist time for get', async () => {
    await redis.set(k('greeting'), 'hello');
    const res = await api('POST', '/v1/transactions', {
      branches: [{ participant: 'cache', operations: [{ op: 'get', key: k('greeting') }] }],
      commit: true,
    });
    expect(res.status).toBe(200);
    expect(res.body.results[0].results[0]).toEqual({ value: 'hello' });
    expect(res.body.branches[0].vote).toBe('read-only');
  });
});

describe('registration of a Redis without durable AOF', () => {
  it('is refused by default, accepted with allowVolatile and then shows the warning', async () => {
    const volatile = await RedisServer.start({ appendonly: false });
    try {
      const refused = await api('POST', '/v1/participants', { name: 'volatile', kind: 'redis', url: volatile.url });
      expect(refused.status).toBe(422);
      expect(refused.body.error.code).toBe('PARTICIPANT_MISCONFIGURED');
      expect(refused.body.error.message).toMatch(/appendonly|AOF/i);
      const accepted = await api('POST', '/v1/participants', { name: 'volatile', kind: 'redis', url: volatile.url, options: { allowVolatile: true } });
      expect(accepted.status).toBe(201);
      const shown = await api('GET', '/v1/participants/volatile');
      expect(shown.body.warnings.join(' ')).toMatch(/lost|restart/i);
      expect((await api('DELETE', '/v1/participants/volatile')).status).toBe(204);
    } finally {
      await volatile.destroy();
    }
  });

  it('refuses a redis url that is not redis://', async () => {
    const res = await api('POST', '/v1/participants', { name: 'bad', kind: 'redis', url: 'http://127.0.0.1:6379' });
    expect(res.status).toBe(400);
    expect(res.body.error.code).toBe('VALIDATION_FAILED');
  });
});
