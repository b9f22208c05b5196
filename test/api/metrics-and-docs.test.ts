/**
 * The operator surface: Prometheus metrics fed by the event seam (counted from what really
 * happened on a real Postgres participant, with bounded labels only), the API docs and the
 * API description, who may read them when tokens are set, the metrics-only port, and the
 * start-up summary in JSON and in the pretty format.
 */
import { afterEach, describe, expect, inject, it } from 'vitest';
import { request } from 'undici';
import { CoordinatorProcess } from '../support/coordinator-process.js';
import { createAccounts, freshDatabase, withClient } from '../support/databases.js';
import { getFreePort } from '../support/free-port.js';
import { startCoordinator, type InProcessCoordinator } from '../support/in-process-coordinator.js';

const API_TOKEN = 'metrics-api-token-0123456789';
const ADMIN_TOKEN = 'metrics-admin-token-0123456789';
const auth = (token: string) => ({ authorization: `Bearer ${token}` });
const running: (InProcessCoordinator | CoordinatorProcess)[] = [];

afterEach(async () => {
  for (const c of running.splice(0)) await c.destroy();
});

/** The value of one sample line, e.g. `tcx_transactions_total{protocol="2pc",outcome="commit"}`; undefined when absent. */
function sample(text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  for (const line of text.split('\n')) {
    const match = /^([a-z_:]+)(\{([^}]*)\})? (\S+)$/.exec(line);
    if (match === null || match[1] !== name) continue;
    const have = Object.fromEntries([...(match[3] ?? '').matchAll(/([a-z_]+)="([^"]*)"/g)].map((m) => [m[1], m[2]]));
    if (Object.entries(labels).every(([k, v]) => have[k] === v)) return Number(match[4]);
  }
  return undefined;
}

describe('GET /metrics', () => {
  it('counts transactions, phases, participant calls and their errors, and log flushes, with bounded labels and no ids', async () => {
    const db = await freshDatabase(inject('pgUrlA'), 'metrics');
    await createAccounts(db, { m1: 100, m2: 100 });
    const c = await startCoordinator({ TCX_API_TOKENS: API_TOKEN, TCX_ADMIN_TOKENS: ADMIN_TOKEN });
    running.push(c);
    const registered = await c.app.inject({ method: 'POST', url: '/v1/participants', headers: auth(ADMIN_TOKEN), payload: { name: 'bank', kind: 'postgres', connectionString: db } });
    expect(registered.statusCode).toBe(201);
    // The full protocol (onePhase: false), so that every phase and call shows; one one-phase commit after.
    const transfer = (delta: number, onePhase = false) => ({
      branches: [{ participant: 'bank', operations: [{ sql: 'UPDATE accounts SET balance = balance + $1 WHERE id = $2', params: [delta, 'm1'] }] }],
      commit: true,
      onePhase,
    });
    const committed = await c.app.inject({ method: 'POST', url: '/v1/transactions', headers: auth(API_TOKEN), payload: transfer(-10) });
    expect(committed.json().state).toBe('committed');
    // An overdraft: the CHECK constraint refuses the work, the transaction aborts.
    const refused = await c.app.inject({ method: 'POST', url: '/v1/transactions', headers: auth(API_TOKEN), payload: transfer(-1_000) });
    expect(refused.statusCode).toBe(409);
    expect(refused.json().state).toBe('aborted');
    const onePhase = await c.app.inject({ method: 'POST', url: '/v1/transactions', headers: auth(API_TOKEN), payload: transfer(-1, true) });
    expect(onePhase.json()).toMatchObject({ state: 'committed', onePhase: true });
    expect(await withClient(db, async (q) => Number((await q.query(`SELECT balance FROM accounts WHERE id = 'm1'`)).rows[0].balance))).toBe(89);

    expect((await c.app.inject({ method: 'GET', url: '/metrics' })).statusCode).toBe(401);
    const res = await c.app.inject({ method: 'GET', url: '/metrics', headers: auth(API_TOKEN) });
    expect(res.statusCode).toBe(200);
    expect(res.headers['content-type']).toMatch(/^text\/plain/);
    const text = res.body;
    expect(sample(text, 'tcx_transactions_total', { protocol: '2pc', outcome: 'commit' })).toBe(2);
    expect(sample(text, 'tcx_transactions_total', { protocol: '2pc', outcome: 'abort' })).toBe(1);
    expect(sample(text, 'tcx_transaction_duration_seconds_count', { protocol: '2pc', outcome: 'commit' })).toBe(2);
    expect(sample(text, 'tcx_transaction_phase_duration_seconds_count', { protocol: '2pc', phase: 'deliver' })).toBeGreaterThanOrEqual(1);
    expect(sample(text, 'tcx_participant_call_duration_seconds_count', { participant: 'bank', call: 'work' })).toBe(3);
    expect(sample(text, 'tcx_participant_call_duration_seconds_count', { participant: 'bank', call: 'commit' })).toBe(1);
    expect(sample(text, 'tcx_participant_call_duration_seconds_count', { participant: 'bank', call: 'commit-one-phase' })).toBe(1);
    expect(sample(text, 'tcx_participant_errors_total', { participant: 'bank', call: 'work' })).toBe(1);
    expect(sample(text, 'tcx_log_fsync_seconds_count', { backend: 'file' })).toBeGreaterThanOrEqual(1);
    expect(sample(text, 'tcx_log_batch_records_count', { backend: 'file', forced: 'true' })).toBeGreaterThanOrEqual(1);
    expect(sample(text, 'tcx_active_transactions')).toBe(0);
    expect(sample(text, 'tcx_in_doubt_transactions')).toBe(0);
    expect(sample(text, 'tcx_retained_transactions')).toBe(3);
    expect(sample(text, 'tcx_log_healthy')).toBe(1);
    expect(sample(text, 'process_cpu_user_seconds_total')).toBeGreaterThan(0);
    // Bounded labels: no transaction id, no gid, no connection string.
    for (const id of [committed.json().id as string, refused.json().id as string]) expect(text).not.toContain(id);
    expect(text).not.toMatch(/tcx:[A-Za-z0-9-]+:/);
    expect(text).not.toContain(db);
  });
});

describe('API docs', () => {
  it('serves interactive docs and the API description without a token, from the package and openapi.yaml', async () => {
    const c = await startCoordinator({ TCX_API_TOKENS: API_TOKEN });
    running.push(c);
    const docs = await c.app.inject({ method: 'GET', url: '/docs' });
    expect(docs.statusCode).toBe(200);
    expect(docs.headers['content-type']).toMatch(/^text\/html/);
    expect(docs.body).toMatch(/swagger-ui/i);
    expect(docs.body).not.toMatch(/https?:\/\/(?!127\.0\.0\.1)/); // every asset from the coordinator itself
    const spec = await c.app.inject({ method: 'GET', url: '/openapi.json' });
    expect(spec.statusCode).toBe(200);
    expect(Object.keys(spec.json().paths)).toEqual(expect.arrayContaining(['/v1/transactions', '/metrics', '/healthz']));
    // The rest still needs the token.
    expect((await c.app.inject({ method: 'GET', url: '/v1/participants' })).statusCode).toBe(401);
  });
});

describe('the coordinator process', () => {
  it('serves /metrics without a token on TCX_METRICS_PORT only, and says at start-up where it listens, which log, whether auth is on and who takes part', async () => {
    const metricsPort = await getFreePort();
    const p = await CoordinatorProcess.start({ env: { TCX_API_TOKENS: API_TOKEN, TCX_METRICS_PORT: String(metricsPort) } });
    running.push(p);
    const open = await request(`http://127.0.0.1:${metricsPort}/metrics`, { headersTimeout: 5_000, bodyTimeout: 5_000 });
    expect(open.statusCode).toBe(200);
    expect(await open.body.text()).toContain('tcx_log_healthy 1');
    const other = await request(`http://127.0.0.1:${metricsPort}/v1/participants`, { headersTimeout: 5_000, bodyTimeout: 5_000 });
    expect(other.statusCode).toBe(404);
    await other.body.dump();
    const guarded = await request(`${p.url}/metrics`, { headersTimeout: 5_000, bodyTimeout: 5_000 });
    expect(guarded.statusCode).toBe(401);
    await guarded.body.dump();
    const summary = p.logLines().find((l) => /^listening on /.test(String(l.msg)));
    expect(summary).toMatchObject({ log: { backend: 'file' }, tokens: { apiTokens: 1, adminTokens: 0 }, participants: [], metricsUrl: `http://127.0.0.1:${metricsPort}/metrics` });
    expect(JSON.stringify(p.logLines())).not.toContain(API_TOKEN);
  });

  it('writes readable lines with TCX_LOG_FORMAT=pretty', async () => {
    const p = await CoordinatorProcess.start({ env: { TCX_LOG_FORMAT: 'pretty' } });
    running.push(p);
    const out = p.output();
    expect(out).toMatch(/INFO.*listening on http:\/\/127\.0\.0\.1:\d+/);
    expect(out.split('\n').find((l) => /listening on/.test(l))?.trim().startsWith('{')).toBe(false);
  });
});
