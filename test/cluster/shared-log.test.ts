/**
 * Several coordinator instances over one Postgres log (real processes, real Postgres):
 * survivors take over the coordinator id of an instance that died, a restarted instance gets
 * its id back through the lease, and an instance paused past its lease (a zombie) writes and
 * delivers nothing once it runs again, and steps down.
 */
import { afterAll, afterEach, describe, expect, inject, it } from 'vitest';
import { CoordinatorProcess } from '../support/coordinator-process.js';
import { createAccounts, eventually, freshDatabase, preparedGids, totalBalance, withClient } from '../support/databases.js';
import { FaultProxy } from '../support/fault-proxy.js';
import { OUTCOME_QUERY, PLAIN_COMMIT } from '../support/one-phase-faults.js';

const LEASE_MS = 1_500;
const started: CoordinatorProcess[] = [];
const proxies: FaultProxy[] = [];

afterEach(async () => {
  for (const p of started.splice(0)) {
    try {
      process.kill(p.pid, 'SIGCONT');
    } catch {
      // not running
    }
    await p.destroy();
  }
  for (const p of proxies.splice(0)) await p.close();
});

const databases: string[] = [];
afterAll(async () => {
  for (const db of databases) {
    for (const gid of await preparedGids(db)) await withClient(db, (c) => c.query(`ROLLBACK PREPARED '${gid}'`)).catch(() => undefined);
  }
});

async function instance(id: string, logUrl: string, env: Record<string, string> = {}): Promise<CoordinatorProcess> {
  const p = await CoordinatorProcess.start({
    env: { TCX_LOG_URL: logUrl, TCX_COORDINATOR_ID: id, TCX_LEASE_MS: String(LEASE_MS), TCX_RECOVERY_INTERVAL_MS: '1000', TCX_COMMIT_WAIT_MS: '1000', ...env },
  });
  started.push(p);
  return p;
}

async function register(p: CoordinatorProcess, participants: readonly { name: string; url: string }[]): Promise<void> {
  for (const { name, url } of participants) {
    const res = await p.request('POST', '/v1/participants', { name, kind: 'postgres', connectionString: url });
    expect(res.status, JSON.stringify(res.body)).toBe(201);
  }
}

const transferSql = (account: string, delta: number) => ({ sql: 'UPDATE accounts SET balance = balance + $1 WHERE id = $2 RETURNING balance', params: [delta, account] });

describe('three instances over one log', () => {
  it('survivors finish every transaction of an instance killed for good and of one killed and restarted; money is conserved and every commit a client saw stays committed', async () => {
    const logUrl = await freshDatabase(inject('pgUrlB'), 'cluster');
    const [dbA, dbB] = [await freshDatabase(inject('pgUrlA'), 'bank'), await freshDatabase(inject('pgUrlB'), 'bank')];
    databases.push(dbA, dbB);
    const accounts = Object.fromEntries(Array.from({ length: 6 }, (_, i) => [`acc${i}`, 1_000]));
    await createAccounts(dbA, accounts);
    await createAccounts(dbB, accounts);
    const before = (await totalBalance(dbA)) + (await totalBalance(dbB));
    const nodes = { a: await instance('inst-a', logUrl), b: await instance('inst-b', logUrl), c: await instance('inst-c', logUrl) };
    // Registered through one instance: usable through all (the shared registry).
    await register(nodes.a, [{ name: 'bank-a', url: dbA }, { name: 'bank-b', url: dbB }]);

    const committed: string[] = [];
    let stop = false;
    const client = async (node: CoordinatorProcess, n: number): Promise<void> => {
      for (let i = 0; !stop; i++) {
        const account = `acc${(n + i) % 6}`;
        const res = await node
          .request('POST', '/v1/transactions', {
            branches: [
              { participant: 'bank-a', operations: [transferSql(account, -1)] },
              { participant: 'bank-b', operations: [transferSql(account, 1)] },
            ],
            commit: true,
            timeoutMs: 5_000,
          }, 5_000)
          .catch(() => undefined);
        if (res?.status === 200 && res.body.state === 'committed') committed.push(res.body.id as string);
        if (res === undefined || !node.running) await new Promise((r) => setTimeout(r, 100));
      }
    };
    const load = [client(nodes.a, 0), client(nodes.b, 2), client(nodes.c, 4)];
    await eventually(async () => committed.length >= 30, 20_000);
    await nodes.a.kill(); // for good
    await nodes.b.kill();
    const killedAt = Date.now();
    await new Promise((r) => setTimeout(r, 300));
    await nodes.b.restart(); // takes its own id back (it held it last, or from its adopter)
    // When its killed process's lease had not lapsed yet, the restart waited for it before recovering.
    const held = nodes.b.logLines(1).find((l) => /holding the lease on this instance's id/.test(String(l.msg)));
    const waited = nodes.b.logLines(1).some((l) => /from a lease that had not lapsed/.test(String(l.msg)) || /asking for it back/.test(String(l.msg)));
    if (held !== undefined && Date.parse(String(held.time)) - killedAt < LEASE_MS / 2) expect(waited).toBe(true);
    await eventually(async () => committed.length >= 60, 20_000);
    stop = true;
    await Promise.all(load);

    // inst-a's lease lapses; one survivor adopts it and runs its recovery.
    await eventually(async () => {
      const view = await nodes.c.request('GET', '/v1/cluster');
      const a = (view.body.leases as { coordinatorId: string; holder: string; expired: boolean }[]).find((l) => l.coordinatorId === 'inst-a');
      return a !== undefined && a.holder !== 'inst-a' && !a.expired;
    }, 15_000);
    await eventually(async () => (await preparedGids(dbA)).length === 0 && (await preparedGids(dbB)).length === 0, 20_000);
    expect((await totalBalance(dbA)) + (await totalBalance(dbB))).toBe(before);
    expect(await totalBalance(dbA)).toBeLessThanOrEqual(6_000 - committed.length); // each transfer moved one unit, all or nothing

    // Every commit a client saw is reported committed by a surviving instance.
    for (const id of committed) {
      const answers = await Promise.all([nodes.b, nodes.c].map((n) => n.request('GET', `/v1/transactions/${id}`)));
      expect(answers.some((r) => r.status === 200 && r.body.state === 'committed'), id).toBe(true);
    }
    const cluster = (await nodes.b.request('GET', '/v1/cluster')).body as { leases: { coordinatorId: string; holder: string }[] };
    expect(cluster.leases.find((l) => l.coordinatorId === 'inst-b')?.holder).toBe('inst-b');
  }, 120_000);
});

describe('routing', () => {
  it('any instance answers for a transaction another one runs (forwarded to the owner), and every participant registered through one', async () => {
    const logUrl = await freshDatabase(inject('pgUrlB'), 'cluster');
    const db = await freshDatabase(inject('pgUrlA'), 'bank');
    databases.push(db);
    await createAccounts(db, { r1: 100 });
    const [a, b, c] = [await instance('route-a', logUrl), await instance('route-b', logUrl), await instance('route-c', logUrl)];
    await register(c, [{ name: 'bank', url: db }]);
    // The instances learn of each other from the leases, within a third of a lease.
    await eventually(async () => ((await b.request('GET', '/v1/cluster')).body.leases as unknown[]).length === 3);
    await new Promise((r) => setTimeout(r, LEASE_MS / 2));

    const id = (await a.request('POST', '/v1/transactions', {})).body.id as string;
    const enlisted = await b.request('POST', `/v1/transactions/${id}/branches`, { participant: 'bank', operations: [transferSql('r1', -7)] });
    expect(enlisted.status, JSON.stringify(enlisted.body)).toBe(201);
    expect((await c.request('GET', `/v1/transactions/${id}`)).body.state).toBe('active');
    const committed = await c.request('POST', `/v1/transactions/${id}/commit`);
    expect(committed.status).toBe(200);
    expect(committed.body.state).toBe('committed');
    expect((await b.request('GET', `/v1/transactions/${id}`)).body.state).toBe('committed');
    // Any instance lists every instance's transactions, newest first, a page at a time.
    const second = (await b.request('POST', '/v1/transactions', {})).body.id as string;
    const listed = await c.request('GET', '/v1/transactions?limit=1');
    expect(listed.body.transactions.map((t: { id: string }) => t.id)).toEqual([second]);
    const next = await c.request('GET', `/v1/transactions?limit=1&cursor=${listed.body.nextCursor}`);
    expect(next.body.transactions.map((t: { id: string }) => t.id)).toEqual([id]);
    expect((await a.request('GET', '/v1/transactions?state=committed')).body.transactions.map((t: { id: string }) => t.id)).toEqual([id]);
    expect((await a.request('POST', `/v1/transactions/${second}/abort`)).body.state).toBe('aborted');
    expect(await withClient(db, async (q) => Number((await q.query(`SELECT balance FROM accounts WHERE id = 'r1'`)).rows[0].balance))).toBe(93);
    // The owner ran it: its log, not the others', holds it.
    const owners = await withClient(logUrl, async (q) => (await q.query<{ coordinator_id: string }>(`SELECT DISTINCT coordinator_id FROM tcx_log WHERE record LIKE '%' || $1 || '%'`, [id])).rows);
    expect(owners.map((o) => o.coordinator_id)).toEqual(['route-a']);
    // Removed through one instance, the participant goes from every instance.
    expect((await b.request('DELETE', '/v1/participants/bank')).status).toBe(204);
    await eventually(async () => (await a.request('GET', '/v1/participants/bank')).status === 404 && (await c.request('GET', '/v1/participants/bank')).status === 404);
    const refused = await a.request('POST', '/v1/transactions', { branches: [{ participant: 'bank', operations: [transferSql('r1', 1)] }], commit: true });
    expect(refused.body.error.code).toBe('UNKNOWN_PARTICIPANT');
    // A transaction nobody knows is 404 everywhere.
    const unknown = await b.request('GET', '/v1/transactions/00000000-0000-4000-8000-000000000000');
    expect(unknown.status).toBe(404);
    expect(unknown.body.error.code).toBe('UNKNOWN_TRANSACTION');
  }, 60_000);
});

describe('an instance gone for good', () => {
  it('is adopted until nothing is left to do under its id, then settled: no survivor adopts it again, and it can still come back', async () => {
    const logUrl = await freshDatabase(inject('pgUrlB'), 'cluster');
    const db = await freshDatabase(inject('pgUrlA'), 'bank');
    databases.push(db);
    await createAccounts(db, { g1: 100 });
    // No retention: a finished transaction keeps nothing under the id.
    const gone = await instance('gone', logUrl, { TCX_RETENTION_HOURS: '0' });
    const survivor = await instance('stays', logUrl, { TCX_RETENTION_HOURS: '0' });
    await register(gone, [{ name: 'bank', url: db }]);
    const done = await gone.request('POST', '/v1/transactions', { branches: [{ participant: 'bank', operations: [transferSql('g1', -1)] }], commit: true });
    expect(done.body.state).toBe('committed');
    await gone.kill();
    const leaseOfGone = async () =>
      ((await survivor.request('GET', '/v1/cluster')).body.leases as { coordinatorId: string; holder: string; settled: boolean }[]).find((l) => l.coordinatorId === 'gone')!;
    await eventually(async () => (await leaseOfGone()).holder === 'stays', 15_000);
    await eventually(async () => (await leaseOfGone()).settled, 15_000);
    expect((await survivor.request('GET', '/v1/cluster')).body.adopted).toEqual([]);
    await new Promise((r) => setTimeout(r, 2 * LEASE_MS));
    expect((await leaseOfGone()).settled).toBe(true); // nobody adopted it again
    await gone.restart();
    expect((await leaseOfGone()).holder).toBe('gone');
    expect((await leaseOfGone()).settled).toBe(false);
  }, 60_000);
});

describe('a one-phase commit in doubt on an instance that died', () => {
  it('is asked by the adopter from the shared log, and an operator resolves it there', async () => {
    const logUrl = await freshDatabase(inject('pgUrlB'), 'cluster');
    const db = await freshDatabase(inject('pgUrlA'), 'bank');
    databases.push(db);
    await createAccounts(db, { o1: 100 });
    const proxy = await FaultProxy.forUrl(db, { name: 'pg' });
    proxies.push(proxy);
    // Killed once the lost answer's evidence is durable, before it asked the database.
    const gone = await instance('gone', logUrl, { TCX_FAIL_POINT: 'one-phase-answer-lost' });
    const survivor = await instance('stays', logUrl);
    await register(gone, [{ name: 'bank', url: proxy.rewriteUrl(db) }]);
    proxy.cutReplies(PLAIN_COMMIT, 1);
    proxy.cutReplies(OUTCOME_QUERY, 10_000); // nobody can read the outcome from the database
    const lost = await gone.request('POST', '/v1/transactions', { branches: [{ participant: 'bank', operations: [transferSql('o1', 5)] }], commit: true }).catch(() => undefined);
    expect(lost, 'the instance died before answering').toBeUndefined();
    const [row] = await withClient(db, (c) => c.query<{ balance: string }>("SELECT balance FROM accounts WHERE id = 'o1'")).then((r) => r.rows);
    expect(Number(row?.balance)).toBe(105); // the database committed; its answer was lost

    const inDoubt = async () => ((await survivor.request('GET', '/v1/transactions?state=in-doubt')).body.transactions as { id: string; onePhase?: boolean }[]).find((t) => t.onePhase === true);
    await eventually(async () => (await inDoubt()) !== undefined, 20_000);
    const id = (await inDoubt())!.id;
    const gid = `tcx:gone:${id}:1`;
    const resolved = await survivor.request('POST', `/v1/participants/bank/prepared/${encodeURIComponent(gid)}/resolve`, { outcome: 'commit', reason: 'the balance shows the deposit' });
    expect(resolved.status, JSON.stringify(resolved.body)).toBe(200);
    expect(resolved.body).toMatchObject({ gid, outcome: 'commit' });
    expect((await survivor.request('GET', `/v1/transactions/${id}`)).body).toMatchObject({ state: 'committed', onePhase: true, inDoubt: false });
    proxy.reset();
  }, 60_000);
});

describe('a zombie', () => {
  it('paused past its lease while its id is adopted writes nothing and delivers nothing once it runs again, and steps down', async () => {
    const logUrl = await freshDatabase(inject('pgUrlB'), 'cluster');
    const db = await freshDatabase(inject('pgUrlA'), 'bank');
    databases.push(db);
    await createAccounts(db, { z1: 100, z2: 100 });
    const proxy = await FaultProxy.forUrl(db, { name: 'zombie-bank' });
    proxies.push(proxy);
    const zombie = await instance('zombie', logUrl);
    const survivor = await instance('survivor', logUrl);
    await register(zombie, [{ name: 'bank', url: db }, { name: 'slow-bank', url: proxy.rewriteUrl(db) }]);
    await eventually(async () => (await survivor.request('GET', '/v1/participants/slow-bank')).status === 200); // the shared registry

    // A transaction whose commit is durable but cannot be delivered to slow-bank yet.
    const begun = await zombie.request('POST', '/v1/transactions', {
      branches: [
        { participant: 'bank', operations: [transferSql('z1', -5)] },
        { participant: 'slow-bank', operations: [transferSql('z2', 5)] },
      ],
    });
    const id = begun.body.id as string;
    expect((await zombie.request('POST', `/v1/transactions/${id}/prepare`)).body.state).toBe('prepared');
    proxy.blackhole(true);
    proxy.cutOpenConnections();
    expect((await zombie.request('POST', `/v1/transactions/${id}/commit`)).body.state).toBe('committing');

    const rowsOf = async (epoch: string): Promise<number> =>
      withClient(logUrl, async (c) => Number((await c.query<{ n: string }>(`SELECT count(*) AS n FROM tcx_log WHERE coordinator_id = 'zombie' AND epoch = $1`, [epoch])).rows[0]!.n));
    const zombieEpoch = ((await zombie.request('GET', '/v1/cluster')).body.leases as { coordinatorId: string; epoch: string }[]).find((l) => l.coordinatorId === 'zombie')!.epoch;

    process.kill(zombie.pid, 'SIGSTOP');
    // The survivor adopts the lapsed id and delivers the commit once slow-bank is back.
    await eventually(async () => ((await survivor.request('GET', '/v1/cluster')).body.adopted as string[]).includes('zombie'), 15_000);
    const written = await rowsOf(zombieEpoch);
    proxy.blackhole(false);
    await eventually(async () => (await preparedGids(db)).length === 0, 15_000);
    expect((await survivor.request('GET', `/v1/transactions/${id}`)).body.state).toBe('committed');

    const linesBefore = zombie.logLines().length;
    process.kill(zombie.pid, 'SIGCONT');
    const exit = await zombie.waitExit(10_000);
    expect(exit.code).toBe(3); // stepped down
    const after = zombie.logLines().slice(linesBefore);
    expect(after.some((l) => /stepping down/.test(String(l.msg)))).toBe(true);
    expect(after.filter((l) => /phase-2 delivery|resolved prepared branch/.test(String(l.msg)))).toEqual([]);
    expect(await rowsOf(zombieEpoch)).toBe(written);
    const [z1, z2] = await withClient(db, async (c) => (await c.query<{ balance: number }>(`SELECT balance FROM accounts WHERE id IN ('z1', 'z2') ORDER BY id`)).rows.map((r) => Number(r.balance)));
    expect([z1, z2]).toEqual([95, 105]);
  }, 60_000);
});

describe('a dead instance before its lease lapses', () => {
  it('has its transactions read from the shared log by the others; a change to one waits for its adopter', async () => {
    const logUrl = await freshDatabase(inject('pgUrlB'), 'cluster');
    const db = await freshDatabase(inject('pgUrlA'), 'bank');
    databases.push(db);
    await createAccounts(db, { d1: 100, d2: 100, d3: 100 });
    const proxy = await FaultProxy.forUrl(db, { name: 'dead-bank' });
    proxies.push(proxy);
    // A lease long enough that the dead instance's id is still held while the survivor is asked.
    const leaseMs = { TCX_LEASE_MS: '8000' };
    const dying = await instance('dying', logUrl, leaseMs);
    const survivor = await instance('living', logUrl, leaseMs);
    await register(dying, [{ name: 'bank', url: db }, { name: 'slow-bank', url: proxy.rewriteUrl(db) }]);
    await eventually(async () => (await survivor.request('GET', '/v1/participants/slow-bank')).status === 200); // the shared registry
    await eventually(async () => ((await survivor.request('GET', '/v1/cluster')).body.leases as unknown[]).length === 2);

    const done = await dying.request('POST', '/v1/transactions', { branches: [{ participant: 'bank', operations: [transferSql('d1', -1)] }], commit: true });
    expect(done.body.state).toBe('committed');
    // Decided commit, one branch not delivered yet: in doubt.
    const begun = await dying.request('POST', '/v1/transactions', {
      branches: [
        { participant: 'bank', operations: [transferSql('d1', -5)] },
        { participant: 'slow-bank', operations: [transferSql('d2', 5)] },
      ],
    });
    const inDoubt = begun.body.id as string;
    expect((await dying.request('POST', `/v1/transactions/${inDoubt}/prepare`)).body.state).toBe('prepared');
    proxy.blackhole(true);
    proxy.cutOpenConnections();
    expect((await dying.request('POST', `/v1/transactions/${inDoubt}/commit`)).body.state).toBe('committing');
    // Prepared, not decided: only its own instance (or, once the lease lapses, the adopter) may say what it becomes.
    const open = (await dying.request('POST', '/v1/transactions', { branches: [{ participant: 'bank', operations: [transferSql('d3', -1)] }] })).body.id as string;
    expect((await dying.request('POST', `/v1/transactions/${open}/prepare`)).body.state).toBe('prepared');
    await dying.kill();

    // Its lease still holds: nobody runs its transactions, yet they are visible as its log has them.
    const read = await survivor.request('GET', `/v1/transactions/${done.body.id as string}`);
    expect(read.status, JSON.stringify(read.body)).toBe(200);
    expect(read.body.state).toBe('committed');
    const pending = await survivor.request('GET', `/v1/transactions/${inDoubt}`);
    expect(pending.status).toBe(200);
    expect(pending.body).toMatchObject({ state: 'committing', decision: 'commit' });
    const undecided = await survivor.request('GET', `/v1/transactions/${open}`);
    expect(undecided.status).toBe(503);
    expect(undecided.body.error.code).toBe('OWNER_UNREACHABLE');
    const retry = await survivor.request('POST', `/v1/transactions/${inDoubt}/retry`);
    expect(retry.status).toBe(503);
    expect(retry.body.error.code).toBe('OWNER_UNREACHABLE');
    const cluster = (await survivor.request('GET', '/v1/cluster')).body as { leases: { coordinatorId: string; holder: string; expired: boolean }[] };
    expect(cluster.leases.find((l) => l.coordinatorId === 'dying')).toMatchObject({ holder: 'dying', expired: false });

    // Once the lease lapses the survivor adopts the id and finishes the commit.
    proxy.blackhole(false);
    await eventually(async () => (await survivor.request('GET', `/v1/transactions/${inDoubt}`)).body.state === 'committed', 30_000);
    expect((await survivor.request('GET', `/v1/transactions/${open}`)).body.state).toBe('aborted'); // presumed abort
    expect(await preparedGids(db)).toEqual([]);
  }, 60_000);
});

describe('an id handed back to its restarted instance', () => {
  it('never makes a committed transaction of that id read as unknown on any instance', async () => {
    const logUrl = await freshDatabase(inject('pgUrlB'), 'cluster');
    const db = await freshDatabase(inject('pgUrlA'), 'bank');
    databases.push(db);
    await createAccounts(db, { h1: 1_000 });
    const [one, two, three] = [await instance('back-1', logUrl), await instance('back-2', logUrl), await instance('back-3', logUrl)];
    await register(one, [{ name: 'bank', url: db }]);
    await eventually(async () => (await two.request('GET', '/v1/participants/bank')).status === 200);
    const ids: string[] = [];
    for (let i = 0; i < 5; i++) {
      const res = await two.request('POST', '/v1/transactions', { branches: [{ participant: 'bank', operations: [transferSql('h1', -1)] }], commit: true });
      expect(res.body.state).toBe('committed');
      ids.push(res.body.id as string);
    }
    await two.kill();
    const holderOfTwo = async () => ((await one.request('GET', '/v1/cluster')).body.leases as { coordinatorId: string; holder: string; expired: boolean }[]).find((l) => l.coordinatorId === 'back-2');
    await eventually(async () => {
      const l = await holderOfTwo();
      return l !== undefined && l.holder !== 'back-2' && !l.expired;
    }, 15_000);
    // While the id goes back (the adopter halts its copy, the restarted instance recovers it), the others are asked all along.
    let ready = false;
    const restarting = two.restart().then(() => (ready = true));
    const answers: string[] = [];
    const until = { at: Number.POSITIVE_INFINITY };
    for (let n = 0; performance.now() < until.at; n++) {
      if (ready && until.at === Number.POSITIVE_INFINITY) until.at = performance.now() + LEASE_MS;
      const asker = n % 2 === 0 ? one : three;
      const res = await asker.request('GET', `/v1/transactions/${ids[n % ids.length]!}`);
      answers.push(res.status === 200 ? String(res.body.state) : `${res.status} ${String(res.body?.error?.code)}`);
      await new Promise((r) => setTimeout(r, 10));
    }
    await restarting;
    expect((await holderOfTwo())?.holder).toBe('back-2');
    // Committed, or "retry shortly" while nobody could answer — never unknown (presumed abort) or another outcome.
    expect(answers.filter((a) => a !== 'committed' && a !== '503 OWNER_UNREACHABLE')).toEqual([]);
    expect(answers.filter((a) => a === 'committed').length).toBeGreaterThan(10);
  }, 90_000);
});
