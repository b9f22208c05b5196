/**
 * One-phase commit needs the role to read pg_control_system() (a lost COMMIT's evidence names
 * the cluster). A server that revoked it from PUBLIC would make every one-phase branch fail;
 * instead the participant registers with a warning and its single-branch transactions take
 * the full protocol — also after a restart, where the check runs again at first use. A server
 * of its own: the revocation must not reach other tests' roles.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { balanceOf, createAccounts, preparedGids, withClient } from '../support/databases.js';
import { startCoordinator, tempDataDir, type InProcessCoordinator } from '../support/in-process-coordinator.js';
import { PostgresServer } from '../support/postgres-server.js';

let server: PostgresServer;
let adminUrl: string;
let limitedUrl: string;
let c: InProcessCoordinator | undefined;
const dataDir = tempDataDir();

const move = (account: string, delta: number) => ({ sql: 'UPDATE accounts SET balance = balance + $1 WHERE id = $2', params: [delta, account] });

const api: InProcessCoordinator['api'] = (method, url, payload) => c!.api(method, url, payload);

async function transfer(participant: string) {
  const res = await api('POST', '/v1/transactions', { branches: [{ participant, operations: [move('alice', -1), move('bob', 1)] }], commit: true });
  expect(res.status, JSON.stringify(res.body)).toBe(200);
  return res.body as { state: string; onePhase?: boolean; branches: { vote?: string }[] };
}

beforeAll(async () => {
  server = await PostgresServer.start({ name: 'onephase-privileges' });
  adminUrl = await server.createDatabase('bank');
  await createAccounts(adminUrl, { alice: 100, bob: 100 });
  await withClient(adminUrl, async (client) => {
    await client.query('CREATE ROLE limited LOGIN');
    await client.query('GRANT SELECT, UPDATE ON accounts TO limited');
    await client.query('REVOKE EXECUTE ON FUNCTION pg_control_system() FROM PUBLIC');
  });
  const u = new URL(adminUrl);
  limitedUrl = `postgres://limited@${u.host}${u.pathname}`;
});

afterAll(async () => {
  await c?.destroy();
  await server?.destroy();
});

describe('one-phase commit without EXECUTE on pg_control_system()', () => {
  it('registers with a warning, and single-branch transactions take the full protocol, before and after a restart', async () => {
    c = await startCoordinator({ TCX_RECOVERY_INTERVAL_MS: '3600000' }, dataDir);
    const registered = await api('POST', '/v1/participants', { name: 'limited', kind: 'postgres', connectionString: limitedUrl });
    expect(registered.status, JSON.stringify(registered.body)).toBe(201);
    expect((registered.body as { warnings?: string[] }).warnings?.join(' ')).toMatch(/one-phase commit is off for limited: its role may not execute pg_control_system\(\)/);
    // The superuser on the same server may: one-phase there.
    expect((await api('POST', '/v1/participants', { name: 'admin', kind: 'postgres', connectionString: adminUrl })).status).toBe(201);

    const full = await transfer('limited');
    expect(full.state).toBe('committed');
    expect(full.onePhase).toBeUndefined();
    expect(full.branches[0]?.vote).toBe('yes'); // prepared: the full protocol
    expect((await transfer('admin')).onePhase).toBe(true);

    await c.stop();
    c = await startCoordinator({ TCX_RECOVERY_INTERVAL_MS: '3600000' }, dataDir);
    const afterRestart = await transfer('limited');
    expect(afterRestart.state).toBe('committed');
    expect(afterRestart.onePhase).toBeUndefined();
    expect((await transfer('admin')).onePhase).toBe(true);

    expect(await balanceOf(adminUrl, 'alice')).toBe(96);
    expect(await balanceOf(adminUrl, 'bob')).toBe(104);
    expect(await preparedGids(adminUrl)).toEqual([]);
  });
});
