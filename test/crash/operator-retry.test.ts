/**
 * The operator's "retry now": an in-doubt transaction whose next delivery attempt is far
 * away (long backoff) completes as soon as the operator asks, once the participant is back.
 */
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { balanceOf, createAccounts, freshDatabase, preparedGids } from '../support/databases.js';
import { FaultProxy } from '../support/fault-proxy.js';
import { startCoordinator, type InProcessCoordinator } from '../support/in-process-coordinator.js';
import { transferSql, until } from './helpers.js';

let db: string;
let proxy: FaultProxy;
let c: InProcessCoordinator;

const api: InProcessCoordinator['api'] = (method, url, payload) => c.api(method, url, payload);

beforeAll(async () => {
  db = await freshDatabase(inject('pgUrlA'), 'retry');
  await createAccounts(db, { alice: 100 });
  proxy = await FaultProxy.forUrl(db);
  c = await startCoordinator({
    // Backoff so long that without "retry now" the test would time out.
    TCX_RETRY_INITIAL_MS: '60000',
    TCX_RETRY_MAX_MS: '120000',
    TCX_COMMIT_WAIT_MS: '300',
    TCX_CONNECT_TIMEOUT_MS: '300',
    TCX_RECOVERY_INTERVAL_MS: '3600000',
  });
  expect((await api('POST', '/v1/participants', { name: 'a', kind: 'postgres', connectionString: proxy.rewriteUrl(db) })).status).toBe(201);
});

afterAll(async () => {
  await c?.destroy();
  await proxy?.close();
});

describe('retry now', () => {
  it('delivers a pending commit at once instead of waiting out the backoff', async () => {
    const { body } = await api('POST', '/v1/transactions', {});
    await api('POST', `/v1/transactions/${body.id}/branches`, { participant: 'a', operations: [transferSql('alice', -5)] });
    expect((await api('POST', `/v1/transactions/${body.id}/prepare`)).body.state).toBe('prepared');
    proxy.dropNewConnections(true);
    proxy.cutOpenConnections();
    const commit = await api('POST', `/v1/transactions/${body.id}/commit`);
    expect(commit.status).toBe(202);
    await until('a failed delivery attempt', async () => {
      const tx = (await api('GET', `/v1/transactions/${body.id}`)).body;
      return tx.branches[0].lastError !== undefined ? true : undefined;
    });
    proxy.dropNewConnections(false);
    const retried = await api('POST', `/v1/transactions/${body.id}/retry`);
    expect(retried.status).toBe(200);
    // The answer is the state after the attempt it triggered, not before.
    expect(retried.body.state).toBe('committed');
    await until(
      'the commit delivered after retry-now',
      async () => ((await api('GET', `/v1/transactions/${body.id}`)).body.state === 'committed' ? true : undefined),
      5_000,
    );
    expect(await balanceOf(db, 'alice')).toBe(95);
    expect(await preparedGids(db)).toEqual([]);
  });
});
