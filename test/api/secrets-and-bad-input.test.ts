/**
 * Issue 9, first part: secrets stay secret (answers, errors, files), and input that would
 * reach a recursive walk, a framework error or a driver option is refused cleanly, 4xx in
 * the catalogue's shape, with nothing changed.
 */
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { Redis } from 'ioredis';
import { freshDatabase } from '../support/databases.js';
import { RedisServer } from '../support/redis-server.js';
import { startCoordinator, tempDataDir, type InProcessCoordinator } from '../support/in-process-coordinator.js';

let c: InProcessCoordinator;
let db: string;
let service: http.Server;
let serviceUrl: string;
const seen: { url: string; authorization: string | undefined }[] = [];

async function api(method: 'GET' | 'POST', url: string, payload?: unknown, raw?: string) {
  const res = await c.app.inject({
    method,
    url,
    ...(raw !== undefined ? { payload: raw, headers: { 'content-type': 'application/json' } } : payload === undefined ? {} : { payload: payload as object }),
  });
  return { status: res.statusCode, text: res.body, body: res.body === '' ? undefined : res.json() };
}

beforeAll(async () => {
  db = await freshDatabase(inject('pgUrlA'));
  // An HTTP participant that votes yes and remembers how it was called.
  service = http.createServer((req, res) => {
    seen.push({ url: req.url ?? '', authorization: req.headers.authorization });
    req.resume();
    req.on('end', () => res.end(req.url === '/prepare' ? '{"vote":"yes"}' : '{}'));
  });
  await new Promise<void>((r) => service.listen(0, '127.0.0.1', r));
  serviceUrl = `http://127.0.0.1:${(service.address() as { port: number }).port}`;
  c = await startCoordinator({ TCX_STATEMENT_TIMEOUT_MS: '12345' });
});

afterAll(async () => {
  await c?.destroy();
  service?.close();
});

describe('secrets', () => {
  it('never shows an http participant credentials, in the answer or later, and sends them as Authorization', async () => {
    const withUserinfo = serviceUrl.replace('http://', 'http://svc:S3cretPW@') + '/?api_key=K3yValue';
    const registered = await api('POST', '/v1/participants', { name: 'svc', kind: 'http', baseUrl: withUserinfo });
    expect(registered.status).toBe(201);
    const bearer = await api('POST', '/v1/participants', { name: 'svc2', kind: 'http', baseUrl: serviceUrl, auth: { type: 'bearer', token: 'Tok3nTok3nTok3n' } });
    expect(bearer.status).toBe(201);
    expect(bearer.body.auth).toEqual({ type: 'bearer' });
    const answers = [registered.text, bearer.text, (await api('GET', '/v1/participants')).text, (await api('GET', '/v1/participants/svc')).text];
    for (const text of answers) for (const secret of ['S3cretPW', 'K3yValue', 'Tok3nTok3nTok3n']) expect(text).not.toContain(secret);

    seen.length = 0;
    const tx = await api('POST', '/v1/transactions', { branches: [{ participant: 'svc2', payload: {} }], commit: true });
    expect(tx.body.state).toBe('committed');
    expect(seen.map((s) => s.authorization)).toEqual(['Bearer Tok3nTok3nTok3n', 'Bearer Tok3nTok3nTok3n']);
  });

  it('refuses auth with the wrong shape or on another kind', async () => {
    for (const body of [
      { name: 'x1', kind: 'http', baseUrl: serviceUrl, auth: { type: 'bearer' } },
      { name: 'x2', kind: 'http', baseUrl: serviceUrl, auth: { type: 'basic', token: 'abc' } },
      { name: 'x3', kind: 'postgres', connectionString: db, auth: { type: 'bearer', token: 'abc' } },
      { name: 'x4', kind: 'http', baseUrl: serviceUrl.replace('http://', 'http://u:p@'), auth: { type: 'bearer', token: 'abc' } },
      // A password without a user name would silently go unsent.
      { name: 'x5', kind: 'http', baseUrl: serviceUrl.replace('http://', 'http://:lonely-password@') },
    ]) {
      const res = await api('POST', '/v1/participants', body);
      expect({ name: body.name, status: res.status, code: res.body.error.code }).toEqual({ name: body.name, status: 400, code: 'VALIDATION_FAILED' });
    }
  });

  it('names no piece of a password in errors about addresses it cannot parse strictly', async () => {
    for (const connectionString of [
      'postgres://p@ssuser:p@ssLEAKPART#1@127.0.0.1:5/x',
      'postgres://user:se@cretLEAKPART@10.0.0.9/x',
      'postgres://user:pw#LEAKPART@127.0.0.1/x',
      // An unencoded "?" turns the rest of the password into a query parameter's name.
      'postgres://u:?LEAKPART=cret@10.0.0.9/bank',
    ]) {
      const res = await api('POST', '/v1/participants', { name: 'leaky', kind: 'postgres', connectionString });
      expect(res.status).toBe(400);
      expect(res.body.error.code).toBe('VALIDATION_FAILED');
      expect(res.text).not.toMatch(/LEAKPART|ssuser|cret/);
    }
  });

  it('keeps the log readable by the coordinator alone, and narrows wider permissions it finds', async () => {
    const dir = tempDataDir();
    fs.chmodSync(dir, 0o755);
    fs.writeFileSync(path.join(dir, 'notes.txt'), 'x', { mode: 0o644 });
    const other = await startCoordinator({}, dir);
    try {
      expect((await other.app.inject({ method: 'POST', url: '/v1/participants', payload: { name: 'p', kind: 'postgres', connectionString: db } })).statusCode).toBe(201);
      expect(fs.statSync(dir).mode & 0o777).toBe(0o700);
      for (const name of fs.readdirSync(dir)) {
        const st = fs.statSync(path.join(dir, name));
        if (st.isFile()) expect({ name, mode: (st.mode & 0o777).toString(8) }).toEqual({ name, mode: '600' });
      }
    } finally {
      await other.destroy();
    }
  });
});

describe('input refused cleanly', () => {
  it('refuses JSON nested deeper than 32 levels, as a payload or as a SQL parameter, before anything runs', async () => {
    await api('POST', '/v1/participants', { name: 'bank', kind: 'postgres', connectionString: db });
    const before = (await api('GET', '/v1/transactions')).body.transactions.length;
    const deep = (n: number): string => '['.repeat(n) + ']'.repeat(n);
    for (const raw of [
      `{"branches":[{"participant":"svc2","payload":${deep(5_000)}}],"commit":true}`,
      `{"branches":[{"participant":"bank","operations":[{"sql":"SELECT $1::text","params":[${deep(100_000)}]}]}],"commit":true}`,
    ]) {
      const res = await api('POST', '/v1/transactions', undefined, raw);
      expect(res.status).toBe(400);
      expect(res.body.error).toMatchObject({ code: 'VALIDATION_FAILED', message: expect.stringMatching(/nested deeper than 32/) });
    }
    expect((await api('GET', '/v1/transactions')).body.transactions.length).toBe(before);
  });

  it('answers framework errors in the catalogue shape, saying what was wrong', async () => {
    const cases: [string, string | undefined, RegExp][] = [
      [`/v1/transactions/${'a'.repeat(5_000)}`, undefined, /longer than/],
      ['/v1/transactions/%E2%98', undefined, /percent-encoded/],
      ['/v1/transactions', '{"__proto__": {"admin": true}}', /__proto__/],
      ['/v1/transactions', '{"constructor": {"prototype": {"admin": true}}}', /constructor\.prototype/],
      ['/v1/transactions', '{"branches": [', /not valid JSON/],
      ['/v1/participants', '{"name":"x","kind":"postgres","connectionString":"postgres://u:Hunter2Secret@h/db" oops}', /not valid JSON \(at position \d+\)/],
    ];
    for (const [url, raw, message] of cases) {
      const res = await api(raw === undefined ? 'GET' : 'POST', url, undefined, raw);
      expect(res.status).toBe(400);
      expect(Object.keys(res.body)).toEqual(['error']);
      expect(res.body.error.code).toBe('VALIDATION_FAILED');
      expect(res.body.error.message).toMatch(message);
      expect(res.text).not.toContain('a'.repeat(300));
      expect(res.text).not.toContain('Hunter2Secret');
    }
  });

  it('refuses Redis addresses that are not TCP host:port, before any connection', async () => {
    for (const url of ['redis://127.0.0.1:6380/?path=/tmp/some.sock', 'redis:/tmp/some.sock', 'redis://127.0.0.1:6380/0?family=6', 'redis://:pw@/x']) {
      const res = await api('POST', '/v1/participants', { name: 'sock', kind: 'redis', url });
      expect({ url, status: res.status, code: res.body.error.code }).toEqual({ url, status: 400, code: 'VALIDATION_FAILED' });
    }
  });

  it('refuses Postgres parameters that would change the session bounds, and every branch runs with them', async () => {
    for (const query of ['options=-c%20statement_timeout%3D0', 'statement_timeout=0', 'idle_in_transaction_session_timeout=0', 'application_name=x']) {
      const res = await api('POST', '/v1/participants', { name: 'opts', kind: 'postgres', connectionString: `${db}?${query}` });
      expect({ query, status: res.status, code: res.body.error.code }).toEqual({ query, status: 400, code: 'VALIDATION_FAILED' });
    }
    const res = await api('POST', '/v1/transactions', { branches: [{ participant: 'bank', operations: [{ sql: 'SHOW statement_timeout' }] }], commit: true });
    expect(res.body.state).toBe('committed');
    expect(res.body.results[0].results[0].rows[0].statement_timeout).toBe('12345ms');
  });
});

describe('fair use', () => {
  it('answers 503 PARTICIPANT_BUSY with Retry-After at once when every session to a database is in use', async () => {
    const small = await startCoordinator({ TCX_PG_MAX_SESSIONS: '2' });
    const call = async (method: 'GET' | 'POST', url: string, payload?: unknown) => {
      const res = await small.app.inject({ method, url, ...(payload === undefined ? {} : { payload: payload as object }) });
      return { status: res.statusCode, headers: res.headers, body: res.json() };
    };
    try {
      expect((await call('POST', '/v1/participants', { name: 'bank', kind: 'postgres', connectionString: db })).status).toBe(201);
      const work = { participant: 'bank', operations: [{ sql: 'SELECT 1 AS one' }] };
      // Two open transactions hold both sessions.
      for (let i = 0; i < 2; i++) expect((await call('POST', '/v1/transactions', { branches: [work] })).status).toBe(201);
      const started = Date.now();
      const third = await call('POST', '/v1/transactions', { branches: [work], commit: true });
      expect(Date.now() - started).toBeLessThan(1_000);
      expect(third.status).toBe(503);
      expect(third.body.error.code).toBe('PARTICIPANT_BUSY');
      expect(third.headers['retry-after']).toBe('1');
    } finally {
      await small.destroy();
    }
  });
});

describe('clear errors', () => {
  it('says a Redis refused the credentials (wrong or missing password), naming no piece of them', async () => {
    const redis = await RedisServer.start({ name: 'redis-auth' });
    const admin = new Redis(redis.url, { lazyConnect: true });
    try {
      await admin.connect();
      await admin.config('SET', 'requirepass', 'right-horse-battery');
      for (const [name, url] of [
        ['wrongpass', redis.url.replace('redis://', 'redis://:staple-WRONG@')],
        ['nopass', redis.url],
      ] as const) {
        const res = await api('POST', '/v1/participants', { name, kind: 'redis', url });
        expect(res.status, res.text).toBe(422);
        expect(res.body.error.code).toBe('PARTICIPANT_AUTH_FAILED');
        expect(res.body.error.message).toMatch(name === 'nopass' ? /NOAUTH/ : /WRONGPASS/);
        expect(res.text).not.toMatch(/staple|WRONG@/);
      }
      const ok = await api('POST', '/v1/participants', { name: 'authed', kind: 'redis', url: redis.url.replace('redis://', 'redis://:right-horse-battery@') });
      expect(ok.status, ok.text).toBe(201);
    } finally {
      admin.disconnect();
      await redis.destroy();
    }
  });
});
