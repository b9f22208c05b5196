import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { loadConfig } from '../../src/config.js';
import { nodeLogIo, type LogFile, type LogIo } from '../../src/log/file-log.js';
import { balanceOf, createAccounts, freshDatabase, preparedGids, withClient, prepareByHand } from '../support/databases.js';
import { startCoordinator, type InProcessCoordinator } from '../support/in-process-coordinator.js';

const API = 'api-token-0123456789abcdef';
const ADMIN = 'admin-token-0123456789abcdef';
let dbA: string;
let dbB: string;

const transferSql = (account: string, delta: number) => ({
  sql: 'UPDATE accounts SET balance = balance + $1 WHERE id = $2',
  params: [delta, account],
});

async function call(c: InProcessCoordinator, method: 'GET' | 'POST' | 'DELETE', url: string, payload?: unknown, token?: string) {
  const res = await c.app.inject({
    method,
    url,
    ...(payload === undefined ? {} : { payload: payload as object }),
    ...(token === undefined ? {} : { headers: { authorization: `Bearer ${token}` } }),
  });
  return { status: res.statusCode, body: res.body === '' ? undefined : res.json() };
}


beforeAll(async () => {
  [dbA, dbB] = await Promise.all([freshDatabase(inject('pgUrlA')), freshDatabase(inject('pgUrlB'))]);
  await createAccounts(dbA, { alice: 100, lost: 0 });
  await createAccounts(dbB, { bob: 100 });
});

afterAll(async () => {
  for (const gid of await preparedGids(dbA)) await withClient(dbA, (c) => c.query(`ROLLBACK PREPARED '${gid}'`));
});

describe('authentication', () => {
  let c: InProcessCoordinator;
  beforeAll(async () => {
    c = await startCoordinator({ TCX_API_TOKENS: API, TCX_ADMIN_TOKENS: ADMIN });
  });
  afterAll(async () => c?.destroy());

  it('requires a bearer token on every /v1 route, and an admin token to register participants', async () => {
    expect((await call(c, 'GET', '/healthz')).status).toBe(200);
    const none = await call(c, 'GET', '/v1/participants');
    expect(none.status).toBe(401);
    expect(none.body.error.code).toBe('UNAUTHORIZED');
    expect((await call(c, 'GET', '/v1/participants', undefined, 'wrong-token-0123456789')).status).toBe(401);
    expect((await call(c, 'GET', '/v1/participants', undefined, API)).status).toBe(200);
    const register = { name: 'a', kind: 'postgres', connectionString: dbA };
    const forbidden = await call(c, 'POST', '/v1/participants', register, API);
    expect(forbidden.status).toBe(403);
    expect(forbidden.body.error.code).toBe('FORBIDDEN');
    expect((await call(c, 'GET', '/v1/participants', undefined, API)).body.participants).toEqual([]);
    expect((await call(c, 'POST', '/v1/participants', register, ADMIN)).status).toBe(201);
    expect((await call(c, 'POST', '/v1/transactions', {}, API)).status).toBe(201);
  });

  it('decides on the matched route, so percent-encoded paths do not slip past', async () => {
    expect((await call(c, 'GET', '/%761/participants')).status).toBe(401);
    const sneaky = await call(c, 'POST', '/v1/%70articipants', { name: 'x', kind: 'postgres', connectionString: dbA }, API);
    expect(sneaky.status).toBe(403);
    expect((await call(c, 'GET', '/v1/participants/x', undefined, API)).status).toBe(404);
  });

  it('refuses to listen on a non-loopback address without tokens', () => {
    expect(() => loadConfig({ TCX_HOST: '0.0.0.0' })).toThrow(/TCX_API_TOKENS/);
    expect(() => loadConfig({ TCX_HOST: '0.0.0.0', TCX_API_TOKENS: API, TCX_ADMIN_TOKENS: ADMIN })).not.toThrow();
    // The rule is "at least one token", and the message says so.
    expect(() => loadConfig({ TCX_HOST: '0.0.0.0' })).toThrow(/at least one bearer token/);
    expect(() => loadConfig({ TCX_HOST: '0.0.0.0', TCX_ADMIN_TOKENS: ADMIN })).not.toThrow();
  });

  it('refuses an allowlist entry it could not honour, such as an impossible CIDR, at start', () => {
    for (const bad of ['10.0.0.0/33', '300.1.1.1/8', '10.0.0.0/8/1', 'db host']) {
      expect(() => loadConfig({ TCX_PARTICIPANT_HOSTS: bad }), bad).toThrow(/TCX_PARTICIPANT_HOSTS/);
    }
    expect(() => loadConfig({ TCX_PARTICIPANT_HOSTS: '10.0.0.0/8,*.internal,::1,db-a' })).not.toThrow();
  });
});

describe('participant allowlist', () => {
  let c: InProcessCoordinator;
  beforeAll(async () => {
    c = await startCoordinator({ TCX_PARTICIPANT_HOSTS: '127.0.0.1,*.example.internal' });
  });
  afterAll(async () => c?.destroy());

  it('refuses addresses off the allowlist before connecting, and accepts listed ones', async () => {
    for (const body of [
      { name: 'meta', kind: 'http', baseUrl: 'http://169.254.169.254/latest' },
      { name: 'pg', kind: 'postgres', connectionString: 'postgres://u@10.0.0.5:5432/db' },
      { name: 'hq', kind: 'postgres', connectionString: 'postgres://127.0.0.1:5432/db?host=db.other.internal' },
      { name: 'r', kind: 'redis', url: 'redis://localhost:6379' },
      { name: 'ha', kind: 'postgres', connectionString: 'postgres://127.0.0.1/x?hostaddr=10.0.0.5' },
      { name: 'hl', kind: 'postgres', connectionString: 'postgres://127.0.0.1/db?host=127.0.0.1,10.0.0.6' },
    ]) {
      const res = await call(c, 'POST', '/v1/participants', body);
      expect({ name: body.name, status: res.status, code: res.body.error.code }).toEqual({ name: body.name, status: 403, code: 'PARTICIPANT_NOT_ALLOWED' });
    }
    // Addresses the driver parses differently from a URL check are refused outright.
    for (const connectionString of ['postgres://u@/db?host=db.other.internal', 'host=db.other.internal dbname=x', 'postgres://127.0.0.1/db?sslrootcert=/etc/shadow']) {
      const res = await call(c, 'POST', '/v1/participants', { name: 'odd', kind: 'postgres', connectionString });
      expect({ connectionString, status: res.status }).toEqual({ connectionString, status: 400 });
    }
    expect((await call(c, 'POST', '/v1/participants', { name: 'a', kind: 'postgres', connectionString: dbA })).status).toBe(201);
    expect((await call(c, 'GET', '/v1/participants')).body.participants.map((p: { name: string }) => p.name)).toEqual(['a']);
  });
});

describe('operator controls', () => {
  let c: InProcessCoordinator;
  beforeAll(async () => {
    c = await startCoordinator({ TCX_RECOVERY_INTERVAL_MS: '3600000' });
    await call(c, 'POST', '/v1/participants', { name: 'a', kind: 'postgres', connectionString: dbA });
    await call(c, 'POST', '/v1/participants', { name: 'b', kind: 'postgres', connectionString: dbB });
  });
  afterAll(async () => c?.destroy());

  it('lists prepared branches with what the log says, and resolves a lost one by hand (audited)', async () => {
    // A branch of a coordinator whose log is gone (its data directory was wiped).
    const gid = 'tcx:lostcoord:66666666-6666-4666-8666-666666666666:1';
    await prepareByHand(dbA, gid, 'lost', 7);
    const listed = await call(c, 'GET', '/v1/participants/a/prepared?coordinatorId=lostcoord');
    expect(listed.status).toBe(200);
    expect(listed.body.branches).toEqual([
      expect.objectContaining({ gid, coordinatorId: 'lostcoord', log: { known: false, decision: null, outcome: null, live: false } }),
    ]);
    const resolved = await call(c, 'POST', `/v1/participants/a/prepared/${encodeURIComponent(gid)}/resolve`, {
      outcome: 'commit',
      reason: 'ticket OPS-42: sibling branch committed before the disk was replaced',
    });
    expect(resolved.status).toBe(200);
    expect(resolved.body).toMatchObject({ gid, outcome: 'commit', loggedDecision: null });
    expect(await balanceOf(dbA, 'lost')).toBe(7);
    expect(await preparedGids(dbA, 'tcx:lostcoord:')).toEqual([]);
    // Repeated once carried out: nothing is prepared any more, so nothing is left to resolve.
    const repeated = await call(c, 'POST', `/v1/participants/a/prepared/${encodeURIComponent(gid)}/resolve`, { outcome: 'commit', reason: 'again' });
    expect(repeated.status).toBe(409);
    expect(repeated.body.error.code).toBe('INVALID_STATE_TRANSITION');
  });

  it('refuses a manual resolution that contradicts the log', async () => {
    const id = c.coordinator.coordinatorId;
    // A committed transaction whose branch is (artificially) prepared again under the same gid.
    const done = await call(c, 'POST', '/v1/transactions', {
      branches: [{ participant: 'a', operations: [transferSql('alice', -1)] }, { participant: 'b', operations: [transferSql('bob', 1)] }],
      commit: true,
    });
    expect(done.body.state).toBe('committed');
    const gid = `tcx:${id}:${done.body.id}:1`;
    await prepareByHand(dbA, gid, 'alice', 0);
    const refused = await call(c, 'POST', `/v1/participants/a/prepared/${encodeURIComponent(gid)}/resolve`, { outcome: 'abort', reason: 'x' });
    expect(refused.status).toBe(409);
    expect(refused.body.error.code).toBe('RESOLUTION_CONTRADICTS_LOG');
    expect((await preparedGids(dbA, gid)).length).toBe(1);
    const listed = await call(c, 'GET', '/v1/participants/a/prepared');
    expect(listed.body.branches).toEqual([expect.objectContaining({ gid, log: expect.objectContaining({ known: true, decision: 'commit' }) })]);
    expect((await call(c, 'POST', `/v1/participants/a/prepared/${encodeURIComponent(gid)}/resolve`, { outcome: 'commit', reason: 'matches the log' })).status).toBe(200);
    expect(await preparedGids(dbA, gid)).toEqual([]);
  });

  it('keeps presumed abort for this coordinator\'s own branches, and one outcome per lost transaction', async () => {
    const own = `tcx:${c.coordinator.coordinatorId}:88888888-8888-4888-8888-888888888888:1`;
    await prepareByHand(dbA, own, 'lost', 1);
    const commit = await call(c, 'POST', `/v1/participants/a/prepared/${encodeURIComponent(own)}/resolve`, { outcome: 'commit', reason: 'x' });
    expect(commit.status).toBe(409);
    expect(commit.body.error.code).toBe('RESOLUTION_CONTRADICTS_LOG');
    // Removing the participant is refused while it holds a prepared branch of ours.
    const remove = await call(c, 'DELETE', '/v1/participants/a');
    expect(remove.status).toBe(409);
    expect(remove.body.error.code).toBe('PARTICIPANT_IN_USE');
    expect((await call(c, 'POST', `/v1/participants/a/prepared/${encodeURIComponent(own)}/resolve`, { outcome: 'abort', reason: 'x' })).status).toBe(200);
    // Two branches of one lost transaction of another coordinator: the second must agree.
    const tx = '99999999-9999-4999-8999-999999999999';
    await prepareByHand(dbA, `tcx:gone:${tx}:1`, 'lost', 1);
    await prepareByHand(dbB, `tcx:gone:${tx}:2`, 'bob', 1);
    expect((await call(c, 'POST', `/v1/participants/a/prepared/${encodeURIComponent(`tcx:gone:${tx}:1`)}/resolve`, { outcome: 'abort', reason: 'none committed' })).status).toBe(200);
    const contradicting = await call(c, 'POST', `/v1/participants/b/prepared/${encodeURIComponent(`tcx:gone:${tx}:2`)}/resolve`, { outcome: 'commit', reason: 'oops' });
    expect(contradicting.status).toBe(409);
    expect(contradicting.body.error.code).toBe('RESOLUTION_CONTRADICTS_LOG');
    expect((await call(c, 'POST', `/v1/participants/b/prepared/${encodeURIComponent(`tcx:gone:${tx}:2`)}/resolve`, { outcome: 'abort', reason: 'none committed' })).status).toBe(200);
    expect(await preparedGids(dbB, 'tcx:gone:')).toEqual([]);
  });

  it('answers retry-now only for an in-doubt transaction', async () => {
    const { body } = await call(c, 'POST', '/v1/transactions', {});
    const res = await call(c, 'POST', `/v1/transactions/${body.id}/retry`);
    expect(res.status).toBe(409);
    expect(res.body.error.code).toBe('INVALID_STATE_TRANSITION');
    expect((await call(c, 'POST', '/v1/transactions/77777777-7777-4777-8777-777777777777/retry')).status).toBe(404);
  });
});

describe('fail-stop when the log cannot be made durable', () => {
  it('sends no commit, answers 503, reports unhealthy, refuses new work; recovery then rolls back', async () => {
    let failSyncs = false;
    const io: LogIo = {
      ...nodeLogIo,
      async open(path: string, flags: string): Promise<LogFile> {
        const file = await nodeLogIo.open(path, flags);
        return {
          write: (b, o, l, p) => file.write(b, o, l, p),
          datasync: async () => {
            if (failSyncs) throw Object.assign(new Error('EIO: i/o error, fdatasync'), { code: 'EIO' });
            return file.datasync();
          },
          sync: () => file.sync(),
          truncate: (n) => file.truncate(n),
          close: () => file.close(),
        };
      },
    };
    const c = await startCoordinator({}, undefined, { logIo: io });
    const dataDir = c.dataDir;
    try {
      await call(c, 'POST', '/v1/participants', { name: 'a', kind: 'postgres', connectionString: dbA });
      await call(c, 'POST', '/v1/participants', { name: 'b', kind: 'postgres', connectionString: dbB });
      const { body } = await call(c, 'POST', '/v1/transactions', {});
      await call(c, 'POST', `/v1/transactions/${body.id}/branches`, { participant: 'a', operations: [transferSql('alice', -10)] });
      await call(c, 'POST', `/v1/transactions/${body.id}/branches`, { participant: 'b', operations: [transferSql('bob', 10)] });
      const idle = (await call(c, 'POST', '/v1/transactions', {})).body.id as string;
      const before = [await balanceOf(dbA, 'alice'), await balanceOf(dbB, 'bob')];
      failSyncs = true;
      const commit = await call(c, 'POST', `/v1/transactions/${body.id}/commit`);
      expect(commit.status).toBe(503);
      expect(commit.body.error.code).toBe('LOG_UNAVAILABLE');
      expect(commit.body.state).toBe('deciding');
      // A transaction begun before the failure: its commit and prepare are refused, saying where it stands.
      for (const step of ['commit', 'prepare']) {
        const refused = await call(c, 'POST', `/v1/transactions/${idle}/${step}`);
        expect({ step, status: refused.status, code: refused.body.error.code, state: refused.body.state, id: refused.body.error.details?.transactionId }).toEqual({
          step,
          status: 503,
          code: 'LOG_UNAVAILABLE',
          state: 'active',
          id: idle,
        });
      }
      // No commit left: both branches are still prepared, nothing applied.
      expect([await balanceOf(dbA, 'alice'), await balanceOf(dbB, 'bob')]).toEqual(before);
      expect((await preparedGids(dbA)).length + (await preparedGids(dbB)).length).toBe(2);
      const health = await call(c, 'GET', '/healthz');
      expect(health.status).toBe(503);
      expect(health.body.reason).toMatch(/write-ahead log failed/);
      expect((await call(c, 'POST', '/v1/transactions', {})).status).toBe(503);
    } finally {
      await c.stop().catch(() => undefined);
    }
    // After the disk is fixed: recovery finds no commit decision and rolls both back.
    const restarted = await startCoordinator({}, dataDir);
    try {
      expect(await preparedGids(dbA)).toEqual([]);
      expect(await preparedGids(dbB)).toEqual([]);
    } finally {
      await restarted.destroy();
    }
  });
});

describe('limits that protect the coordinator and the databases', () => {
  let c: InProcessCoordinator;
  beforeAll(async () => {
    c = await startCoordinator({ TCX_MAX_ACTIVE_TRANSACTIONS: '3', TCX_STATEMENT_TIMEOUT_MS: '300' });
    await call(c, 'POST', '/v1/participants', { name: 'a', kind: 'postgres', connectionString: dbA.replace('postgres://postgres@', 'postgres://postgres:s3cret@') });
  });
  afterAll(async () => c?.destroy());

  it('answers 429 past the cap on undecided transactions instead of piling them up', async () => {
    const ids: string[] = [];
    for (let i = 0; i < 3; i++) ids.push((await call(c, 'POST', '/v1/transactions', {})).body.id);
    const refused = await call(c, 'POST', '/v1/transactions', {});
    expect(refused.status).toBe(429);
    expect(refused.body.error.code).toBe('TOO_MANY_TRANSACTIONS');
    for (const id of ids) await call(c, 'POST', `/v1/transactions/${id}/abort`);
    expect((await call(c, 'POST', '/v1/transactions', {})).status).toBe(201);
  });

  it('runs branch sessions under statement_timeout: a runaway statement aborts its transaction', async () => {
    const res = await call(c, 'POST', '/v1/transactions', {
      branches: [{ participant: 'a', operations: [{ sql: 'SELECT pg_sleep(5)' }] }],
      commit: true,
    });
    expect(res.status).toBe(409);
    expect(res.body.state).toBe('aborted');
    expect(res.body.reason).toMatch(/statement timeout/);
  });

  it('limits operations per branch and redacts the password in every answer', async () => {
    const tooMany = await call(c, 'POST', '/v1/transactions', {
      branches: [{ participant: 'a', operations: Array.from({ length: 101 }, () => ({ sql: 'SELECT 1' })) }],
    });
    expect(tooMany.status).toBe(400);
    const shown = await call(c, 'GET', '/v1/participants/a');
    expect(shown.body.connectionString).toContain('***');
    expect(JSON.stringify(await call(c, 'GET', '/v1/participants'))).not.toContain('s3cret');
  });
});
