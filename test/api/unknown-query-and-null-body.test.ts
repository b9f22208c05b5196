/**
 * openapi.yaml promises that unknown query parameters are refused with 400 on every route,
 * and that a body to POST /v1/transactions is an object (or absent): a refused request
 * changes nothing.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startCoordinator, type InProcessCoordinator } from '../support/in-process-coordinator.js';

let c: InProcessCoordinator;

async function api(method: 'GET' | 'HEAD' | 'POST' | 'DELETE', url: string, raw?: string) {
  const res = await c.app.inject({ method, url, ...(raw === undefined ? {} : { payload: raw, headers: { 'content-type': 'application/json' } }) });
  return { status: res.statusCode, body: res.body === '' ? undefined : res.json() };
}

/** What a refused request must leave as it was. */
function snapshot() {
  const health = c.coordinator.health();
  return { live: health.liveTransactions, records: health.log.appendedRecords, participants: health.participants };
}

beforeAll(async () => {
  c = await startCoordinator();
});

afterAll(async () => c?.destroy());

describe('unknown query parameters', () => {
  it('POST /v1/transactions?bogus=1 answers 400 VALIDATION_FAILED and begins nothing', async () => {
    const before = snapshot();
    const res = await api('POST', '/v1/transactions?bogus=1', '{}');
    expect(res.status).toBe(400);
    expect(res.body).toEqual({
      error: { code: 'VALIDATION_FAILED', message: expect.any(String), details: expect.objectContaining({ context: 'querystring' }) },
    });
    expect(snapshot()).toEqual(before);
  });

  it('are refused on every other route too, before anything runs', async () => {
    const begun = await api('POST', '/v1/transactions', '{}');
    expect(begun.status).toBe(201);
    const id = begun.body.id as string;
    const registration = JSON.stringify({ name: 'svc', kind: 'http', baseUrl: 'http://127.0.0.1:9' });
    const before = snapshot();
    const requests: [method: 'GET' | 'HEAD' | 'POST' | 'DELETE', url: string, raw?: string][] = [
      ['GET', '/healthz?verbose=1'],
      ['HEAD', '/healthz?verbose=1'],
      ['POST', '/v1/participants?dryRun=true', registration],
      ['GET', '/v1/participants?kind=http'],
      ['GET', '/v1/participants/svc?x=1'],
      ['DELETE', '/v1/participants/svc?force=1'],
      ['GET', '/v1/participants/svc/prepared?coordinatorId=abc&x=1'],
      ['POST', `/v1/participants/svc/prepared/tcx:abc:${id}:1/resolve?x=1`, '{"outcome":"abort","reason":"r"}'],
      ['GET', `/v1/transactions/${id}?x=1`],
      ['POST', `/v1/transactions/${id}/branches?x=1`, '{"participant":"svc","payload":{}}'],
      ['POST', `/v1/transactions/${id}/prepare?x=1`],
      ['POST', `/v1/transactions/${id}/commit?x=1`],
      ['POST', `/v1/transactions/${id}/abort?x=1`],
      ['POST', `/v1/transactions/${id}/retry?x=1`],
    ];
    for (const [method, url, raw] of requests) {
      const res = await api(method, url, raw);
      expect({ method, url, status: res.status, code: res.body?.error?.code }).toEqual({
        method,
        url,
        status: 400,
        code: method === 'HEAD' ? undefined : 'VALIDATION_FAILED',
      });
    }
    expect(snapshot()).toEqual(before);
    expect((await api('GET', `/v1/transactions/${id}`)).body.state).toBe('active');
  });
});

describe('the body of POST /v1/transactions', () => {
  it('may be absent, and then begins a transaction with the defaults', async () => {
    const res = await api('POST', '/v1/transactions');
    expect(res.status).toBe(201);
    expect(res.body).toMatchObject({ protocol: '2pc', state: 'active' });
  });

  it('is refused with 400 when it is JSON null, and nothing begins', async () => {
    const before = snapshot();
    const res = await api('POST', '/v1/transactions', 'null');
    expect(res.status).toBe(400);
    expect(res.body.error).toMatchObject({ code: 'VALIDATION_FAILED', details: { context: 'body' } });
    expect(snapshot()).toEqual(before);
  });
});
