/**
 * The shared log's database crashes and comes back while two instances carry transfers
 * (real processes, a real Postgres for the log that the test kills and restarts). The
 * instances fail-stop: a decision whose log write may not have committed is never
 * delivered. The test acts as their supervisor and restarts each one that exits; they
 * wait for the log database, take their ids back and recover. Then every transfer is on
 * both databases or on neither, each one the databases hold is `committed` in the log, and
 * every commit a client saw is among them.
 */
import { afterAll, afterEach, expect, inject, it } from 'vitest';
import { CoordinatorProcess } from '../support/coordinator-process.js';
import { createAccounts, eventually, freshDatabase, preparedGids, totalBalance, withClient } from '../support/databases.js';
import { PostgresServer } from '../support/postgres-server.js';
import { sleep } from '../support/spawned-process.js';

const LEASE_MS = 1_500;
const started: CoordinatorProcess[] = [];
let logServer: PostgresServer | undefined;
const databases: string[] = [];

afterEach(async () => {
  for (const p of started.splice(0)) await p.destroy();
  await logServer?.destroy();
  logServer = undefined;
});

afterAll(async () => {
  for (const db of databases) {
    for (const gid of await preparedGids(db)) await withClient(db, (c) => c.query(`ROLLBACK PREPARED '${gid}'`)).catch(() => undefined);
  }
});

const sql = (text: string, params: unknown[]) => ({ sql: text, params });

it('instances fail-stop while the log database is down, are restarted, wait for it and recover: no transfer is half done, none is committed without its logged decision', async () => {
  logServer = await PostgresServer.start({ name: 'cluster-log' });
  const logUrl = await logServer.createDatabase('tcx_log');
  const [dbA, dbB] = [await freshDatabase(inject('pgUrlA'), 'bank'), await freshDatabase(inject('pgUrlB'), 'bank')];
  databases.push(dbA, dbB);
  const accounts = Object.fromEntries(Array.from({ length: 4 }, (_, i) => [`acc${i}`, 1_000]));
  for (const db of [dbA, dbB]) {
    await createAccounts(db, accounts);
    await withClient(db, (c) => c.query('CREATE TABLE transfers (tx text PRIMARY KEY)'));
  }
  const env = { TCX_LOG_URL: logUrl, TCX_LEASE_MS: String(LEASE_MS), TCX_LOG_WAIT_MS: '30000', TCX_RECOVERY_INTERVAL_MS: '1000', TCX_COMMIT_WAIT_MS: '1000' };
  const nodes = [
    await CoordinatorProcess.start({ env: { ...env, TCX_COORDINATOR_ID: 'logdb-a' } }),
    await CoordinatorProcess.start({ env: { ...env, TCX_COORDINATOR_ID: 'logdb-b' } }),
  ];
  started.push(...nodes);
  for (const [name, url] of [['bank-a', dbA], ['bank-b', dbB]] as const) {
    const res = await nodes[0]!.request('POST', '/v1/participants', { name, kind: 'postgres', connectionString: url });
    expect(res.status, JSON.stringify(res.body)).toBe(201);
  }
  await eventually(async () => (await nodes[1]!.request('GET', '/v1/participants/bank-b')).status === 200);

  // The supervisor: an instance that exits is restarted (its start-up waits for the log database).
  let stop = false;
  const exits: { node: number; code: number | null }[] = [];
  const supervise = async (i: number): Promise<void> => {
    const node = nodes[i]!;
    while (!stop) {
      const exit = await Promise.race([node.exited, sleep(200).then(() => undefined)]);
      if (exit === undefined || stop) continue;
      exits.push({ node: i, code: exit.code });
      // A start can itself step down (the database went away again meanwhile): the supervisor tries again.
      await node.restart({}, 60_000).catch(() => sleep(500));
    }
  };

  // One transfer: begin, one branch per bank (each also records the transaction's id), commit.
  const committed: string[] = [];
  const client = async (i: number): Promise<void> => {
    for (let n = 0; !stop; n++) {
      const node = nodes[i]!;
      const account = `acc${(i * 2 + n) % 4}`;
      try {
        const begun = await node.request('POST', '/v1/transactions', { timeoutMs: 5_000 }, 5_000);
        const id = begun.body?.id as string | undefined;
        if (begun.status !== 201 || id === undefined) throw new Error('not begun');
        for (const [participant, delta] of [['bank-a', -1], ['bank-b', 1]] as const) {
          const res = await node.request('POST', `/v1/transactions/${id}/branches`, {
            participant,
            operations: [sql('UPDATE accounts SET balance = balance + $1 WHERE id = $2', [delta, account]), sql('INSERT INTO transfers (tx) VALUES ($1)', [id])],
          }, 5_000);
          if (res.status !== 201) throw new Error('not enlisted');
        }
        const res = await node.request('POST', `/v1/transactions/${id}/commit`, undefined, 10_000);
        if (res.status === 200 && res.body.state === 'committed') committed.push(id);
      } catch {
        await sleep(100);
      }
    }
  };

  const supervisors = nodes.map((_, i) => supervise(i));
  const load = nodes.map((_, i) => client(i));
  await eventually(async () => committed.length >= 20, 30_000);
  await logServer.kill(); // a crash: the instances' open log connections break mid-write
  await sleep(1_000);
  await logServer.restart();
  // Both instances stepped down (their log writes failed or their leases could not be renewed) and came back.
  await eventually(async () => new Set(exits.map((e) => e.node)).size === 2 && nodes.every((n) => n.running), 60_000);
  const beforeResume = committed.length;
  await eventually(async () => committed.length >= beforeResume + 20, 60_000);
  stop = true;
  await Promise.all(load);
  await Promise.all(supervisors);

  expect(exits.every((e) => e.code === 3), JSON.stringify(exits)).toBe(true);
  for (const node of nodes) {
    expect(node.logLines(0).some((l) => /write-ahead log failed|stepping down/.test(String(l.msg)))).toBe(true);
  }
  await eventually(async () => (await preparedGids(dbA)).length === 0 && (await preparedGids(dbB)).length === 0, 30_000);
  const transfersOn = async (db: string): Promise<string[]> => withClient(db, async (c) => (await c.query<{ tx: string }>('SELECT tx FROM transfers ORDER BY tx')).rows.map((r) => r.tx));
  const [onA, onB] = [await transfersOn(dbA), await transfersOn(dbB)];
  expect(onA).toEqual(onB); // all or nothing, per transfer
  expect((await totalBalance(dbA)) + (await totalBalance(dbB))).toBe(8_000);
  expect(await totalBalance(dbA)).toBe(4_000 - onA.length);
  const held = new Set(onA);
  for (const id of committed) expect(held.has(id), `client saw ${id} committed`).toBe(true);
  // Every transfer the databases hold was decided commit in the log: asked after the restarts,
  // the instances answer from what their logs hold (a missing decision would read `aborted`).
  for (const id of onA) {
    const answers = await Promise.all(nodes.map((n) => n.request('GET', `/v1/transactions/${id}`)));
    expect(answers.some((r) => r.status === 200 && r.body.state === 'committed'), `${id}: ${JSON.stringify(answers.map((a) => a.body))}`).toBe(true);
  }
}, 180_000);

it('a log database that answers "no" (here: it does not exist) fails start-up at once instead of being waited for', async () => {
  const server = inject('pgUrlB');
  const missing = new URL(server);
  missing.pathname = '/tcx_log_that_does_not_exist';
  // With a start-up wait far longer than the test: only an immediate failure passes.
  const start = CoordinatorProcess.start({ env: { TCX_LOG_URL: missing.toString(), TCX_COORDINATOR_ID: 'no-db', TCX_LOG_WAIT_MS: '600000' }, readyTimeoutMs: 30_000 });
  await expect(start).rejects.toThrow(/exited with code 1[\s\S]*does not exist/);
});
