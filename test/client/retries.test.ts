/**
 * When TcxClient repeats a call and when it must not, through an HTTP front (http-front.ts)
 * before a real coordinator with a real Postgres participant: the front answers 503 with
 * Retry-After, or cuts the connection, before or after the coordinator did the work. The
 * outcome is checked on the database: a transfer that took effect once is never made twice.
 */
import type { AddressInfo } from 'node:net';
import { afterAll, afterEach, beforeAll, describe, expect, inject, it } from 'vitest';
import { TcxApiError, TcxClient, TcxConnectionError, TcxResponseError } from '../../src/client/index.js';
import { balanceOf, createAccounts, freshDatabase } from '../support/databases.js';
import { startCoordinator, type InProcessCoordinator } from '../support/in-process-coordinator.js';
import { startFront, type HttpFront, type Plan } from './http-front.js';

const TX = '/v1/transactions';
const pay = (delta: number) => ({ branches: [{ participant: 'bank', operations: [{ sql: 'UPDATE accounts SET balance = balance + $1 WHERE id = $2', params: [delta, 'carol'] }] }] });

let db: string;
let coordinator: InProcessCoordinator;
let target: string;
let front: HttpFront | undefined;
let client: TcxClient | undefined;

async function through(plan: (method: string, path: string, nth: number) => Plan, options: { retries?: number; timeoutMs?: number } = {}): Promise<TcxClient> {
  front = await startFront(target, (req, nth) => plan(req.method, req.path, nth));
  client = new TcxClient({ url: front.url, retries: options.retries ?? 2, timeoutMs: options.timeoutMs ?? 10_000 });
  return client;
}

async function rejection(p: Promise<unknown>): Promise<unknown> {
  return p.then(
    () => expect.fail('the call should have failed'),
    (e: unknown) => e,
  );
}

beforeAll(async () => {
  db = await freshDatabase(inject('pgUrlA'), 'retries');
  await createAccounts(db, { carol: 1000 });
  coordinator = await startCoordinator();
  await coordinator.app.listen({ port: 0, host: '127.0.0.1' });
  target = `http://127.0.0.1:${(coordinator.app.server.address() as AddressInfo).port}`;
  const direct = new TcxClient({ url: target });
  await direct.registerParticipant({ name: 'bank', kind: 'postgres', connectionString: db });
  await direct.close();
});

afterEach(async () => {
  await client?.close();
  await front?.close();
  client = undefined;
  front = undefined;
});

afterAll(async () => {
  await coordinator?.destroy();
});

describe('TcxClient retries', () => {
  it('repeats a GET after a 503 with Retry-After, waiting as long as it says', async () => {
    const c = await through((method, _path, nth) => (method === 'GET' && nth === 1 ? { kind: 'unavailable', retryAfter: '1' } : { kind: 'forward' }));
    const started = Date.now();
    expect((await c.listParticipants()).participants.map((p) => p.name)).toEqual(['bank']);
    expect(Date.now() - started).toBeGreaterThanOrEqual(950);
    expect(front?.count('GET', '/v1/participants')).toBe(2);
  });

  it('repeats a GET whose connection broke, and gives up after `retries` more attempts', async () => {
    const c = await through((_m, path, nth) => (path === '/healthz' && nth === 1 ? { kind: 'reset-after' } : path === '/v1/cluster' ? { kind: 'unavailable', retryAfter: '1' } : { kind: 'forward' }), { retries: 1 });
    expect((await c.getHealth()).status).toBe('ok');
    expect(front?.count('GET', '/healthz')).toBe(2);
    const err = await rejection(c.getCluster());
    expect(err).toBeInstanceOf(TcxApiError);
    expect([(err as TcxApiError).status, (err as TcxApiError).code, (err as TcxApiError).retryAfterMs]).toEqual([503, 'SHUTTING_DOWN', 1000]);
    expect(front?.count('GET', '/v1/cluster')).toBe(2);
  });

  it('does not repeat on a 503 without Retry-After, nor wait for a Retry-After longer than it allows', async () => {
    const c = await through((_m, path) => (path === '/v1/participants' ? { kind: 'unavailable' } : path === '/v1/cluster' ? { kind: 'unavailable', retryAfter: '120' } : { kind: 'forward' }));
    expect(await rejection(c.listParticipants())).toBeInstanceOf(TcxApiError);
    expect(front?.count('GET', '/v1/participants')).toBe(1);
    expect(await rejection(c.getCluster())).toBeInstanceOf(TcxApiError);
    expect(front?.count('GET', '/v1/cluster')).toBe(1);
  });

  it('never repeats a one-request transaction the coordinator may have run: 503 after the work', async () => {
    const before = await balanceOf(db, 'carol');
    const c = await through((method, path) => (method === 'POST' && path === TX ? { kind: 'unavailable-after', retryAfter: '1' } : { kind: 'forward' }));
    const err = await rejection(c.runTransaction(pay(-10)));
    expect(err).toBeInstanceOf(TcxApiError);
    expect((err as TcxApiError).status).toBe(503);
    expect(front?.count('POST', TX)).toBe(1);
    // The coordinator did commit it, once.
    expect(await balanceOf(db, 'carol')).toBe(before - 10);
  });

  it('never repeats a begin whose connection broke after it was sent (it may have begun)', async () => {
    const before = await balanceOf(db, 'carol');
    const c = await through((method, path) => (method === 'POST' && path === TX ? { kind: 'reset-after' } : { kind: 'forward' }));
    const err = await rejection(c.runTransaction(pay(-7)));
    expect(err).toBeInstanceOf(TcxConnectionError);
    expect((err as TcxConnectionError).mayHaveTakenEffect).toBe(true);
    expect(front?.count('POST', TX)).toBe(1);
    expect(await balanceOf(db, 'carol')).toBe(before - 7);
  });

  it('repeats the idempotent commit after a 503 with Retry-After that followed the work', async () => {
    const direct = new TcxClient({ url: target });
    const begun = await direct.beginTransaction(pay(-3));
    await direct.close();
    const before = await balanceOf(db, 'carol');
    const commitPath = `${TX}/${begun.id}/commit`;
    const c = await through((_m, path, nth) => (path === commitPath && nth === 1 ? { kind: 'unavailable-after', retryAfter: '1' } : { kind: 'forward' }));
    expect((await c.commitTransaction(begun.id)).state).toBe('committed');
    expect(front?.count('POST', commitPath)).toBe(2);
    expect(await balanceOf(db, 'carol')).toBe(before - 3);
  });

  it('answers an unhealthy coordinator\'s 503 on /healthz as its Health view, at once', async () => {
    const direct = new TcxClient({ url: target });
    const healthy = await direct.getHealth();
    await direct.close();
    const unhealthy = { ...healthy, status: 'unhealthy', reason: 'write-ahead log failed: EIO' };
    const c = await through((_m, path) => (path === '/healthz' ? { kind: 'json', status: 503, body: unhealthy } : { kind: 'forward' }));
    expect(await c.getHealth()).toEqual(unhealthy);
    expect(front?.count('GET', '/healthz')).toBe(1);
  });

  it('bounds every attempt by timeoutMs, and reports what is not the API as TcxResponseError', async () => {
    const c = await through((_m, path) => (path === '/healthz' ? { kind: 'hang' } : { kind: 'html', status: 502 }), { retries: 0, timeoutMs: 300 });
    const started = Date.now();
    const err = await rejection(c.getHealth());
    expect(err).toBeInstanceOf(TcxConnectionError);
    expect((err as TcxConnectionError).timedOut).toBe(true);
    expect(Date.now() - started).toBeLessThan(3_000);
    const html = await rejection(c.listParticipants());
    expect(html).toBeInstanceOf(TcxResponseError);
    expect((html as TcxResponseError).status).toBe(502);
  });
});
