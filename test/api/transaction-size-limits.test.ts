/**
 * A transaction's log records must stay writable: its decision record names every branch and
 * carries the work kept in the log (http payloads, nats messages). A transaction that would
 * grow past the limits is refused at enlist (400) and stays as it was — abortable, its
 * decision record still writable. Without the limits, 65 payloads of 1 MiB-ish would make a
 * decision record the log refuses, and the transaction would hang with its branches prepared.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MAX_BRANCHES_PER_TRANSACTION, MAX_LOGGED_WORK_BYTES } from '../../src/coordinator/branch-work.js';
import { MAX_PAYLOAD_BYTES } from '../../src/participants/http-participant.js';
import { startCoordinator, type InProcessCoordinator } from '../support/in-process-coordinator.js';

let c: InProcessCoordinator;

const api: InProcessCoordinator['api'] = (method, url, payload) => c.api(method, url, payload);

beforeAll(async () => {
  c = await startCoordinator();
  // Registration of an http participant only checks its URL: nothing needs to listen there.
  expect((await api('POST', '/v1/participants', { name: 'svc', kind: 'http', baseUrl: 'http://127.0.0.1:1/svc' })).status).toBe(201);
});

afterAll(async () => c?.destroy());

describe('transaction size limits', () => {
  it(`refuses payloads past ${MAX_LOGGED_WORK_BYTES} bytes in one transaction, and the transaction stays abortable`, async () => {
    const id = (await api('POST', '/v1/transactions', {})).body.id as string;
    const payload = { blob: 'x'.repeat(MAX_PAYLOAD_BYTES - 100) };
    const fit = Math.floor(MAX_LOGGED_WORK_BYTES / Buffer.byteLength(JSON.stringify(payload)));
    for (let i = 0; i < fit; i++) expect((await api('POST', `/v1/transactions/${id}/branches`, { participant: 'svc', payload })).status).toBe(201);
    const refused = await api('POST', `/v1/transactions/${id}/branches`, { participant: 'svc', payload });
    expect(refused.status).toBe(400);
    expect(refused.body.error).toMatchObject({ code: 'VALIDATION_FAILED', message: expect.stringContaining(`at most ${MAX_LOGGED_WORK_BYTES} bytes`) });
    const view = await api('GET', `/v1/transactions/${id}`);
    expect(view.body).toMatchObject({ state: 'active' });
    expect(view.body.branches).toHaveLength(fit);
    const aborted = await api('POST', `/v1/transactions/${id}/abort`, {});
    expect(aborted.body).toMatchObject({ state: expect.stringMatching(/^abort/) });
  });

  it(`refuses a branch past ${MAX_BRANCHES_PER_TRANSACTION} in one transaction`, async () => {
    const id = (await api('POST', '/v1/transactions', {})).body.id as string;
    for (let i = 0; i < MAX_BRANCHES_PER_TRANSACTION; i++) {
      const res = await api('POST', `/v1/transactions/${id}/branches`, { participant: 'svc', payload: { i } });
      if (res.status !== 201) throw new Error(`branch ${i}: ${res.status} ${JSON.stringify(res.body)}`);
    }
    const refused = await api('POST', `/v1/transactions/${id}/branches`, { participant: 'svc', payload: { i: 'one more' } });
    expect(refused.status).toBe(400);
    expect(refused.body.error.message).toContain(`at most ${MAX_BRANCHES_PER_TRANSACTION} branches`);
    await api('POST', `/v1/transactions/${id}/abort`, {});
  });
});
