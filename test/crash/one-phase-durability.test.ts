/**
 * A one-phase COMMIT is as durable as COMMIT PREPARED. Postgres flushes a prepared
 * transaction's commit whatever synchronous_commit says, but a plain COMMIT under
 * `synchronous_commit = off` answers before its WAL is written: a server killed then would
 * lose commits the coordinator reported (the chaos program found it). The adapter raises
 * `off` to `local` for the one-phase transaction. A server of its own: async commit, the WAL
 * writer asleep for 10 s, SIGKILLed right after the answers.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { balanceOf, createAccounts, withClient } from '../support/databases.js';
import { startCoordinator, type InProcessCoordinator } from '../support/in-process-coordinator.js';
import { PostgresServer } from '../support/postgres-server.js';

let server: PostgresServer;
let db: string;
let c: InProcessCoordinator | undefined;

const api: InProcessCoordinator['api'] = (method, url, payload) => c!.api(method, url, payload);

beforeAll(async () => {
  server = await PostgresServer.start({ name: 'onephase-async' }); // synchronous_commit = off
  db = await server.createDatabase('bank');
  await createAccounts(db, { alice: 100, bob: 100 });
  await withClient(db, async (client) => {
    await client.query("ALTER SYSTEM SET wal_writer_delay = '10s'");
    await client.query('SELECT pg_reload_conf()');
    await client.query('CHECKPOINT'); // the set-up itself survives the kill
  });
  c = await startCoordinator({ TCX_RECOVERY_INTERVAL_MS: '3600000' });
});

afterAll(async () => {
  await c?.destroy();
  await server?.destroy();
});

describe('one-phase commit on a server with synchronous_commit = off', () => {
  it('every commit the coordinator reported survives a SIGKILL of the server right after', async () => {
    expect((await api('POST', '/v1/participants', { name: 'bank', kind: 'postgres', connectionString: db })).status).toBe(201);
    for (let i = 0; i < 3; i++) {
      const res = await api('POST', '/v1/transactions', {
        branches: [
          {
            participant: 'bank',
            operations: [
              { sql: 'UPDATE accounts SET balance = balance - 1 WHERE id = $1', params: ['alice'] },
              { sql: 'UPDATE accounts SET balance = balance + 1 WHERE id = $1', params: ['bob'] },
            ],
          },
        ],
        commit: true,
      });
      expect(res.status, JSON.stringify(res.body)).toBe(200);
      expect(res.body).toMatchObject({ state: 'committed', onePhase: true });
    }
    await server.kill();
    await server.restart();
    expect(await balanceOf(db, 'alice')).toBe(97);
    expect(await balanceOf(db, 'bob')).toBe(103);
  });
});
