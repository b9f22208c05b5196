/**
 * Per-token fair use: one API token cannot take every open-transaction slot, nor begin
 * faster than its rate; others are not affected, and a decided transaction frees its slot.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startCoordinator, type InProcessCoordinator } from '../support/in-process-coordinator.js';

const TOKEN_A = 'token-a-0123456789abcdef';
const TOKEN_B = 'token-b-0123456789abcdef';
const ADMIN = 'admin-0123456789abcdef00';

let c: InProcessCoordinator;

beforeAll(async () => {
  c = await startCoordinator({ TCX_API_TOKENS: `${TOKEN_A},${TOKEN_B}`, TCX_ADMIN_TOKENS: ADMIN, TCX_TOKEN_MAX_ACTIVE_TRANSACTIONS: '3' });
});
afterAll(async () => c?.destroy());

async function call(token: string, method: 'POST' | 'GET', url: string, scheme = 'Bearer') {
  const res = await c.app.inject({ method, url, headers: { authorization: `${scheme} ${token}` }, ...(method === 'POST' ? { payload: {} } : {}) });
  return { status: res.statusCode, headers: res.headers, body: res.json() as { id: string; error?: { code: string; details?: unknown } } };
}

describe('per-token quotas', () => {
  it('refuses a token its next open transaction with 429 QUOTA_EXCEEDED and Retry-After, while other tokens go on', async () => {
    const mine = [];
    for (let i = 0; i < 3; i++) {
      const res = await call(TOKEN_A, 'POST', '/v1/transactions');
      expect(res.status).toBe(201);
      mine.push(res.body.id);
    }
    const refused = await call(TOKEN_A, 'POST', '/v1/transactions');
    expect(refused.status).toBe(429);
    expect(refused.body.error?.code).toBe('QUOTA_EXCEEDED');
    expect(refused.headers['retry-after']).toBe('1');
    expect(refused.body.error?.details).toEqual({ quota: 'active-transactions', limit: 3 });
    // The same token in lowercase scheme (RFC 7235) is the same token, with the same quota.
    expect((await call(TOKEN_A, 'POST', '/v1/transactions', 'bearer')).status).toBe(429);
    expect((await call(TOKEN_B, 'POST', '/v1/transactions')).status).toBe(201);

    // A decided transaction frees its slot.
    expect((await call(TOKEN_A, 'POST', `/v1/transactions/${mine[0]}/abort`)).status).toBe(200);
    expect((await call(TOKEN_A, 'POST', '/v1/transactions')).status).toBe(201);
    expect((await call(TOKEN_A, 'POST', '/v1/transactions')).status).toBe(429);
  });

  it('limits how fast one token begins transactions', async () => {
    const limited = await startCoordinator({ TCX_API_TOKENS: TOKEN_A, TCX_ADMIN_TOKENS: ADMIN, TCX_TOKEN_BEGINS_PER_SECOND: '2' });
    try {
      const begin = async (token: string) =>
        limited.app.inject({ method: 'POST', url: '/v1/transactions', headers: { authorization: `Bearer ${token}` }, payload: {} });
      expect((await begin(TOKEN_A)).statusCode).toBe(201);
      expect((await begin(TOKEN_A)).statusCode).toBe(201);
      const third = await begin(TOKEN_A);
      expect(third.statusCode).toBe(429);
      expect(third.json().error.details).toEqual({ quota: 'begins-per-second', limit: 2 });
      expect(Number(third.headers['retry-after'])).toBeGreaterThanOrEqual(1);
      expect((await begin(ADMIN)).statusCode).toBe(201); // another token has its own rate
    } finally {
      await limited.destroy();
    }
  });
});
