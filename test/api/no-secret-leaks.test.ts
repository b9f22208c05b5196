/**
 * Rule 8: secrets are never echoed back, never logged, never stored in a file others can read.
 *
 * Participants of every kind are registered with distinctive secrets — a Postgres role's
 * password, a MariaDB user's password, a Redis `requirepass`, a NATS token (the user info of
 * `nats://TOKEN@host`), HTTP bearer and basic credentials (in `auth` and as user info), a
 * secret query value — plus API and admin tokens. Transactions run through all of
 * them (2PC and 3PC, committed, aborted, in doubt then retried, resolved by hand), every route
 * is asked, addresses holding a secret are refused, and the coordinator is restarted on its
 * log. Then: no answer (body or header) and no log line (captured at trace level) holds any
 * secret in any spelling; every file under the data directory is 0600 and every directory
 * 0700; and the write-ahead log does hold the participants' secrets (recovery needs them).
 */
import { randomBytes, randomUUID } from 'node:crypto';
import net from 'node:net';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { createAccounts, eventually, freshDatabase, prepareByHand, withClient } from '../support/databases.js';
import { startAuthCheckingService, type AuthCheckingService } from '../support/auth-checking-service.js';
import { getFreePort } from '../support/free-port.js';
import { startCoordinator, tempDataDir, type InProcessCoordinator } from '../support/in-process-coordinator.js';
import { MariaDbServer } from '../support/mariadb-server.js';
import { NatsServer, createStream } from '../support/nats-server.js';
import { RedisServer } from '../support/redis-server.js';
import { contentsUnder, logCapture, secret, secretsIn, walk, type FileEntry } from '../support/secret-scan.js';

const r = (): string => randomBytes(5).toString('hex');
const ROLE = `tcx_leak_${r()}`;
const PG_PASSWORD = `PgSecret${r()}:@/#?PgTail${r()}`;
const REDIS_PASSWORD = `RdSecret${r()}#%RdTail${r()}`;
const MYSQL_PASSWORD = `MySecret${r()}:@/#?MyTail${r()}`;
const NATS_TOKEN = `NatsCredential${r()}`;
const BEARER = `BearerSecret${r()}`;
const BASIC_PASSWORD = `BasicSecret${r()}:@BasicTail${r()}`;
const USERINFO_PASSWORD = `UiSecret${r()}@:UiTail${r()}`;
const QUERY_SECRET = `QuerySecret${r()}`;
const FLAKY_TOKEN = `FlakySecret${r()}`;
const DEAD_PASSWORD = `DeadSecret${r()}`;
const API_TOKEN = `ApiTokenSecret${r()}`;
const ADMIN_TOKEN = `AdminTokenSecret${r()}`;
const BAD = `BadAddressSecret${r()}`;

/** Pieces of a secret long enough to be found alone: `PgSecret…`, `PgTail…`. */
const pieces = (name: string, value: string) => value.split(/[^A-Za-z0-9]+/).filter((p) => p.length >= 12).map((p, i) => secret(`${name} (piece ${i + 1})`, p));

const PARTICIPANT_SECRETS = [
  secret('postgres password', PG_PASSWORD),
  secret('redis password', REDIS_PASSWORD),
  secret('mysql password', MYSQL_PASSWORD),
  secret('nats credential', NATS_TOKEN),
  secret('bearer token', BEARER),
  secret('basic password', BASIC_PASSWORD, 'svcuser'),
  secret('user-info password', USERINFO_PASSWORD, 'svc'),
  secret('query secret', QUERY_SECRET),
  secret('flaky bearer token', FLAKY_TOKEN),
  secret('dead user-info password', DEAD_PASSWORD, 'dead'),
];
const ALL_SECRETS = [
  ...PARTICIPANT_SECRETS,
  secret('api token', API_TOKEN),
  secret('admin token', ADMIN_TOKEN),
  secret('refused address secret', BAD),
  ...pieces('postgres password', PG_PASSWORD),
  ...pieces('redis password', REDIS_PASSWORD),
  ...pieces('mysql password', MYSQL_PASSWORD),
  ...pieces('basic password', BASIC_PASSWORD),
  ...pieces('user-info password', USERINFO_PASSWORD),
];

interface Answer {
  readonly what: string;
  readonly status: number;
  readonly text: string;
  readonly body: unknown;
}

const answers: Answer[] = [];
const logs = logCapture();
let c: InProcessCoordinator;
let dataDir: string;
let filesBeforeRestart: FileEntry[] = [];
let redis: RedisServer;
let maria: MariaDbServer;
let mysqlUrl: string;
let nats: NatsServer;
let svc: AuthCheckingService;
let adminUrl: string;
let db: string;
let roleUrl: string;

type Method = 'GET' | 'POST' | 'DELETE';

async function call(method: Method, url: string, payload?: unknown, options: { token?: string | null; raw?: string } = {}): Promise<Answer> {
  const token = options.token === undefined ? ADMIN_TOKEN : options.token;
  const headers: Record<string, string> = token === null ? {} : { authorization: `Bearer ${token}` };
  const body = options.raw ?? (payload === undefined ? undefined : JSON.stringify(payload));
  if (body !== undefined) headers['content-type'] = 'application/json';
  const res = await c.app.inject({ method, url, headers, ...(body === undefined ? {} : { payload: body }) });
  const answer = { what: `${method} ${url}`, status: res.statusCode, text: `${JSON.stringify(res.headers)}\n${res.body}`, body: res.body === '' ? undefined : res.json() };
  answers.push(answer);
  return answer;
}

const start = async (): Promise<InProcessCoordinator> =>
  startCoordinator(
    {
      TCX_LOG_LEVEL: 'trace',
      TCX_API_TOKENS: API_TOKEN,
      TCX_ADMIN_TOKENS: ADMIN_TOKEN,
      TCX_SEGMENT_MAX_BYTES: '4096', // compactions: snapshots and finished-transaction files get written too
      TCX_RECOVERY_INTERVAL_MS: '300',
      TCX_COMMIT_WAIT_MS: '300',
    },
    dataDir,
    { logDestination: logs.stream },
  );

const debit = (account: string, amount: number) => ({ sql: 'UPDATE accounts SET balance = balance - $1 WHERE id = $2', params: [amount, account] });
const everyKind = (amount: number) => [
  { participant: 'bank', operations: [debit('alice', amount)] },
  { participant: 'cache', operations: [{ op: 'incrby', key: 'leak:wallet:{bob}', by: amount }] },
  { participant: 'shop', operations: [{ sql: 'UPDATE accounts SET balance = balance + ? WHERE id = ?', params: [amount, 'bob'] }] },
  { participant: 'events', messages: [{ subject: 'leaks.moved', data: { amount } }] },
  { participant: 'svc-bearer', payload: { amount } },
  { participant: 'svc-basic', payload: { amount } },
  { participant: 'svc-userinfo', payload: { amount } },
];

async function registerAll(): Promise<void> {
  const closedPort = await getFreePort();
  const registrations = [
    { name: 'bank', kind: 'postgres', connectionString: roleUrl },
    { name: 'cache', kind: 'redis', url: redis.url },
    { name: 'shop', kind: 'mysql', connectionString: mysqlUrl },
    { name: 'events', kind: 'nats', url: nats.url },
    { name: 'svc-bearer', kind: 'http', baseUrl: `${svc.url}/bearer`, auth: { type: 'bearer', token: BEARER } },
    { name: 'svc-basic', kind: 'http', baseUrl: `${svc.url}/basic`, auth: { type: 'basic', username: 'svcuser', password: BASIC_PASSWORD } },
    { name: 'svc-userinfo', kind: 'http', baseUrl: `${svc.url.replace('//', `//svc:${encodeURIComponent(USERINFO_PASSWORD)}@`)}/userinfo?api_key=${QUERY_SECRET}` },
    { name: 'svc-flaky', kind: 'http', baseUrl: `${svc.url}/flaky`, auth: { type: 'bearer', token: FLAKY_TOKEN } },
    { name: 'svc-dead', kind: 'http', baseUrl: `http://dead:${DEAD_PASSWORD}@127.0.0.1:${closedPort}/dead` },
  ];
  for (const body of registrations) expect((await call('POST', '/v1/participants', body)).status, body.name).toBe(201);
}

/** Registrations, bodies and tokens that hold a secret and are refused. */
async function refuseSecrets(): Promise<void> {
  const bad = encodeURIComponent(BAD);
  const refused: [unknown, number][] = [
    [{ name: 'x', kind: 'postgres', connectionString: `postgres://u:${BAD}@x@127.0.0.1/bank` }, 400],
    [{ name: 'x', kind: 'postgres', connectionString: `postgres://u:${BAD}#1@127.0.0.1/bank` }, 400],
    [{ name: 'x', kind: 'postgres', connectionString: `postgres://u:${BAD}%zz@127.0.0.1/bank` }, 400],
    [{ name: 'x', kind: 'postgres', connectionString: `postgres://u@127.0.0.1/bank?password=${BAD}` }, 400],
    [{ name: 'x', kind: 'postgres', connectionString: `postgres://u@127.0.0.1/bank?sslpassword=${BAD}` }, 400],
    [{ name: 'x', kind: 'postgres', connectionString: `host=127.0.0.1 user=u password=${BAD} dbname=bank` }, 400],
    [{ name: 'x', kind: 'postgres', connectionString: `postgres://u:${bad}@10.0.0.9/bank` }, 403],
    [{ name: 'x', kind: 'redis', url: `redis://:${bad}@127.0.0.1:${redis.port}/0?password=${BAD}` }, 400],
    [{ name: 'x', kind: 'redis', url: `redis://:${bad}@127.0.0.1:${redis.port}/0` }, 422], // a wrong password
    [{ name: 'x', kind: 'redis', url: `redis://:${bad}@evil.example:6379/0` }, 403],
    [{ name: 'x', kind: 'mysql', connectionString: `mysql://u:${bad}@127.0.0.1:${maria.port}/shop?password=${BAD}` }, 400],
    [{ name: 'x', kind: 'mysql', connectionString: `mysql://tcx_leak:${bad}@127.0.0.1:${maria.port}/shop` }, 422], // a wrong password
    [{ name: 'x', kind: 'mysql', connectionString: `mysql://u:${bad}@10.0.0.9:3306/shop` }, 403],
    [{ name: 'x', kind: 'nats', url: `nats://${BAD}@127.0.0.1:${nats.port}` }, 422], // a wrong token
    [{ name: 'x', kind: 'nats', url: `nats://${BAD}@evil.example:4222` }, 403],
    [{ name: 'x', kind: 'nats', url: `nats://u:${bad}@127.0.0.1:${nats.port}?token=${BAD}` }, 400],
    [{ name: 'x', kind: 'http', baseUrl: `http://u:${BAD}%zz@127.0.0.1:1/` }, 400],
    [{ name: 'x', kind: 'http', baseUrl: `http://u:${BAD}@10.0.0.9/?token=${BAD}` }, 403],
    [{ name: 'x', kind: 'http', baseUrl: `http://u:${bad}@127.0.0.1:1/`, auth: { type: 'bearer', token: BAD } }, 400],
    [{ name: 'x', kind: 'http', baseUrl: 'http://127.0.0.1:1/', auth: { type: 'bearer', token: BAD, password: BAD } }, 400],
    [{ name: 'x', kind: 'postgres', connectionString: roleUrl, auth: { type: 'basic', username: 'u', password: BAD } }, 400],
  ];
  for (const [body, status] of refused) expect((await call('POST', '/v1/participants', body)).status, JSON.stringify(body)).toBe(status);
  const rawBad = `{"name":"x","kind":"postgres","connectionString":"postgres://u:${BAD}@127.0.0.1/bank" oops}`;
  expect((await call('POST', '/v1/participants', undefined, { raw: rawBad })).status).toBe(400);
  expect((await call('POST', '/v1/participants', { name: 'x', kind: 'http', baseUrl: 'http://127.0.0.1:1/' }, { token: API_TOKEN })).status).toBe(403);
  expect((await call('GET', '/v1/participants', undefined, { token: BAD })).status).toBe(401);
  expect((await call('GET', '/v1/transactions', undefined, { token: null })).status).toBe(401);
}

async function runTransactions(): Promise<void> {
  const one = await call('POST', '/v1/transactions', { branches: everyKind(1), commit: true });
  expect(one.body).toMatchObject({ state: 'committed' });

  const id = ((await call('POST', '/v1/transactions', { protocol: '3pc' })).body as { id: string }).id;
  for (const branch of everyKind(2)) expect((await call('POST', `/v1/transactions/${id}/branches`, branch)).status).toBe(201);
  expect((await call('POST', `/v1/transactions/${id}/prepare`)).body).toMatchObject({ state: 'prepared' });
  expect((await call('POST', `/v1/transactions/${id}/commit`)).body).toMatchObject({ state: 'committed' });
  await call('GET', `/v1/transactions/${id}`);

  const overdrawn = await call('POST', '/v1/transactions', { branches: [{ participant: 'svc-basic', payload: {} }, { participant: 'bank', operations: [debit('alice', 1_000)] }], commit: true });
  expect(overdrawn).toMatchObject({ status: 409, body: { state: 'aborted' } });
  const dead = await call('POST', '/v1/transactions', { branches: [{ participant: 'bank', operations: [debit('alice', 1)] }, { participant: 'svc-dead', payload: {} }], commit: true });
  // Its abort cannot be delivered either: the transaction stays listed as in doubt, retried, its last error shown.
  expect(dead).toMatchObject({ status: 409, body: { state: expect.stringMatching(/^abort/) } });
  const aborted = ((await call('POST', '/v1/transactions', { branches: everyKind(1) })).body as { id: string }).id;
  expect((await call('POST', `/v1/transactions/${aborted}/abort`, { reason: 'changed my mind' })).body).toMatchObject({ state: 'aborted' });

  // In doubt: the flaky service refuses commits until told otherwise.
  svc.failCommits('flaky', true);
  const doubtful = await call('POST', '/v1/transactions', { branches: [{ participant: 'bank', operations: [debit('alice', 1)] }, { participant: 'svc-flaky', payload: {} }], commit: true });
  expect(doubtful).toMatchObject({ status: 202, body: { state: 'committing' } });
  const doubtId = (doubtful.body as { id: string }).id;
  expect(((await call('GET', '/v1/transactions?state=in-doubt')).body as { transactions: { id: string }[] }).transactions.map((t) => t.id)).toContain(doubtId);
  await call('POST', `/v1/transactions/${doubtId}/retry`);
  await call('GET', `/v1/transactions/${doubtId}`);
  svc.failCommits('flaky', false);
  await call('POST', `/v1/transactions/${doubtId}/retry`); // or the backoff's own retry got there first
  await eventually(async () => ((await call('GET', `/v1/transactions/${doubtId}`)).body as { state: string }).state === 'committed');

  // A branch of a lost coordinator, resolved by hand (audited with the admin token's fingerprint).
  const gid = `tcx:lostcoord:${randomUUID()}:1`;
  await prepareByHand(roleUrl, gid, 'alice', -1);
  await call('GET', '/v1/participants/bank/prepared?coordinatorId=lostcoord');
  expect((await call('POST', `/v1/participants/bank/prepared/${encodeURIComponent(gid)}/resolve`, { outcome: 'abort', reason: 'OPS-1' })).status).toBe(200);
}

async function askEveryRoute(): Promise<void> {
  for (const url of ['/healthz', '/v1/participants', '/v1/transactions', '/v1/transactions?state=in-doubt', '/v1/transactions?state=active', '/v1/participants/bank/prepared', '/v1/participants/cache/prepared', '/v1/participants/shop/prepared']) {
    expect((await call('GET', url)).status, url).toBe(200);
  }
  for (const name of ['bank', 'cache', 'shop', 'events', 'svc-bearer', 'svc-basic', 'svc-userinfo', 'svc-flaky', 'svc-dead']) await call('GET', `/v1/participants/${name}`);
  const listed = (await call('GET', '/v1/transactions')).body as { transactions: { id: string }[] };
  for (const t of listed.transactions) await call('GET', `/v1/transactions/${t.id}`);
}

beforeAll(async () => {
  db = await freshDatabase(inject('pgUrlA'));
  await createAccounts(db, { alice: 1_000, bob: 0 });
  await withClient(db, async (cl) => {
    await cl.query(`CREATE ROLE ${ROLE} LOGIN PASSWORD ${cl.escapeLiteral(PG_PASSWORD)}`);
    await cl.query(`GRANT SELECT, UPDATE ON accounts TO ${ROLE}`);
  });
  adminUrl = db;
  const u = new URL(db);
  roleUrl = `postgres://${ROLE}:${encodeURIComponent(PG_PASSWORD)}@${u.host}${u.pathname}`;
  redis = await RedisServer.start({ name: 'leaks', password: REDIS_PASSWORD });
  [maria, nats] = await Promise.all([MariaDbServer.start({ name: 'leaks' }), NatsServer.start({ name: 'leaks', token: NATS_TOKEN })]);
  await maria.createDatabase('shop');
  await maria.query('CREATE TABLE accounts (id VARCHAR(64) PRIMARY KEY, balance BIGINT NOT NULL) ENGINE=InnoDB', [], 'shop');
  await maria.query("INSERT INTO accounts VALUES ('bob', 0)", [], 'shop');
  await maria.createUser('tcx_leak', MYSQL_PASSWORD);
  await maria.query("GRANT SELECT, UPDATE ON shop.* TO 'tcx_leak'@'%'");
  mysqlUrl = maria.url('shop', 'tcx_leak', MYSQL_PASSWORD);
  await createStream(nats.url, { name: 'LEAKS', subjects: ['leaks.>'] });
  svc = await startAuthCheckingService();
  svc.expect('bearer', `Bearer ${BEARER}`);
  svc.expect('basic', `Basic ${Buffer.from(`svcuser:${BASIC_PASSWORD}`).toString('base64')}`);
  svc.expect('userinfo', `Basic ${Buffer.from(`svc:${USERINFO_PASSWORD}`).toString('base64')}`);
  svc.expect('flaky', `Bearer ${FLAKY_TOKEN}`);

  dataDir = tempDataDir();
  c = await start();
  await registerAll();
  await refuseSecrets();
  await runTransactions();
  await askEveryRoute();
  filesBeforeRestart = walk(dataDir);

  // Recovery reads every participant's secrets back from the log and connects with them.
  await c.stop();
  c = await start();
  await askEveryRoute();
  for (let i = 0; i < 6; i++) expect((await call('POST', '/v1/transactions', { branches: everyKind(1), commit: true })).body).toMatchObject({ state: 'committed' });
  expect((await call('POST', '/v1/participants', { name: 'spare', kind: 'http', baseUrl: `${svc.url}/spare` })).status).toBe(201);
  expect((await call('DELETE', '/v1/participants/spare')).status).toBe(204);
  expect((await call('DELETE', '/v1/participants/svc-dead')).status).toBe(409); // its aborting branch
  await new Promise((resolve) => setTimeout(resolve, 400)); // a recovery sweep with every participant
  await c.stop();
}, 120_000);

afterAll(async () => {
  await c?.destroy();
  await svc?.close();
  await Promise.all([redis?.destroy(), maria?.destroy(), nats?.destroy()]);
  if (adminUrl !== undefined) {
    await withClient(adminUrl, async (cl) => {
      await cl.query(`REVOKE ALL ON accounts FROM ${ROLE}`);
      await cl.query(`DROP ROLE IF EXISTS ${ROLE}`);
    }).catch(() => undefined);
  }
});

describe('no secret leaks', () => {
  it('ran every kind of participant with its credentials', async () => {
    expect(svc.refused).toEqual([]); // every call carried the right Authorization header
    for (const prefix of ['bearer', 'basic', 'userinfo', 'flaky']) expect(svc.served.some((s) => s.startsWith(`${prefix} commit`))).toBe(true);
    // The Redis really wants its password: without it, nothing.
    const unauthenticated = await new Promise<string>((resolve, reject) => {
      const sock = net.connect(redis.port, '127.0.0.1', () => sock.write('PING\r\n'));
      sock.once('data', (d) => resolve(d.toString()));
      sock.once('error', reject);
    });
    expect(unauthenticated).toMatch(/^-NOAUTH/);
    const role = new pg.Client({ connectionString: roleUrl });
    await role.connect();
    expect((await role.query('SELECT current_user AS u')).rows[0].u).toBe(ROLE);
    await role.end();
    expect(answers.length).toBeGreaterThan(60);
  });

  it('shows no secret in any answer, body or header', () => {
    const leaks = answers.map((a) => ({ what: a.what, status: a.status, secrets: secretsIn(a.text, ALL_SECRETS) })).filter((l) => l.secrets.length > 0);
    expect(leaks).toEqual([]);
  });

  it('writes no secret in any log line, at trace level', () => {
    const lines = logs.lines();
    const messages = lines.map((l) => (JSON.parse(l) as { msg?: string }).msg ?? '');
    for (const expected of ['participant registered', 'decision', 'operator: manual resolution', 'recovery: coordinator started', 'coordinator stopped']) {
      expect(messages, `a "${expected}" line`).toContain(expected);
    }
    expect(lines.some((l) => (JSON.parse(l) as { level: number }).level <= 20)).toBe(true); // debug lines are captured too
    const leaks = lines.map((line) => ({ line: line.slice(0, 300), secrets: secretsIn(line, ALL_SECRETS) })).filter((l) => l.secrets.length > 0);
    expect(leaks).toEqual([]);
  });

  it('keeps every file under the data directory 0600 and every directory 0700', () => {
    const files = [...filesBeforeRestart, ...walk(dataDir)];
    expect(files.filter((f) => !f.isDirectory).length).toBeGreaterThan(3);
    expect(files.some((f) => /finished-\d+\.tcxf$/.test(f.path))).toBe(true); // compaction wrote its files too
    const wrong = files.filter((f) => f.mode !== (f.isDirectory ? '700' : '600')).map((f) => `${f.path} ${f.mode}`);
    expect(wrong).toEqual([]);
  });

  it("holds the participants' secrets in the write-ahead log (recovery needs them), and no token or refused secret", () => {
    const stored = contentsUnder(dataDir);
    for (const s of PARTICIPANT_SECRETS) expect(secretsIn(stored, [s]), s.name).toEqual([s.name]);
    const never = ALL_SECRETS.filter((s) => /token|refused/.test(s.name) && !/bearer/.test(s.name));
    expect(secretsIn(stored, never)).toEqual([]);
  });
});
