/**
 * A lost one-phase COMMIT answer is settled from txid_status only with a witness: a backend
 * older than the COMMIT, still running, proves the server did not crash since. A role without
 * pg_read_all_stats sees only its own sessions, and once the pool's older sessions are gone
 * there would be none: the adapter's witness session (held open from registration on) is it.
 * Without it, this transaction would stay in doubt for an operator.
 */
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { balanceOf, createAccounts, freshDatabase, withClient } from '../support/databases.js';
import { FaultProxy } from '../support/fault-proxy.js';
import { PLAIN_COMMIT } from '../support/one-phase-faults.js';
import { startCoordinator, type InProcessCoordinator } from '../support/in-process-coordinator.js';
import { until } from '../crash/helpers.js';

const ROLE = `tcx_witness_${process.pid}`;
let db: string;
let proxy: FaultProxy;
let c: InProcessCoordinator;

const api: InProcessCoordinator['api'] = (method, url, payload) => c.api(method, url, payload);

/** A one-phase deposit of 5 to alice whose COMMIT answer the proxy drops. */
async function depositWithCommitAnswerLost() {
  proxy.cutReplies(PLAIN_COMMIT, 1);
  try {
    return await api('POST', '/v1/transactions', {
      branches: [{ participant: 'bank', operations: [{ sql: 'UPDATE accounts SET balance = balance + 5 WHERE id = $1', params: ['alice'] }] }],
      commit: true,
    });
  } finally {
    proxy.reset();
  }
}

beforeAll(async () => {
  db = await freshDatabase(inject('pgUrlA'));
  await createAccounts(db, { alice: 100 });
  await withClient(db, async (client) => {
    await client.query(`CREATE ROLE ${ROLE} LOGIN`);
    await client.query(`GRANT SELECT, UPDATE ON accounts TO ${ROLE}`);
  });
  proxy = await FaultProxy.forUrl(db, { name: 'pg' });
  c = await startCoordinator({ TCX_RECOVERY_INTERVAL_MS: '3600000', TCX_COMMIT_WAIT_MS: '2000' });
});

afterAll(async () => {
  await c?.destroy();
  await proxy?.close();
  await withClient(db, async (client) => {
    await client.query(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '${ROLE}'`);
    await client.query(`DROP OWNED BY ${ROLE}`);
    await client.query(`DROP ROLE ${ROLE}`);
  }).catch(() => undefined);
});

describe('one-phase commit: the witness session', () => {
  it("a lost COMMIT answer is settled as committed for a role that sees only its own sessions", async () => {
    const u = new URL(db);
    const roleUrl = proxy.rewriteUrl(`postgres://${ROLE}@${u.host}${u.pathname}`);
    expect((await api('POST', '/v1/participants', { name: 'bank', kind: 'postgres', connectionString: roleUrl })).status).toBe(201);
    await until('the witness session is open', () =>
      withClient(db, async (client) => {
        const res = await client.query("SELECT 1 FROM pg_stat_activity WHERE usename = $1 AND application_name = 'tx-coordinator witness'", [ROLE]);
        return res.rowCount === 1 ? true : undefined;
      }),
    );
    // No other session of the role is older than the COMMIT to come.
    await withClient(db, async (client) => {
      await client.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1 AND application_name = 'tx-coordinator'", [ROLE]);
    });

    const res = await depositWithCommitAnswerLost();
    expect(res.status, JSON.stringify(res.body)).toBe(200);
    expect(res.body).toMatchObject({ state: 'committed', onePhase: true, inDoubt: false });
    expect(await balanceOf(db, 'alice')).toBe(105);
  });

  it('without it (the witness ended too), the same lost answer stays in doubt: only a backend older than the COMMIT proves no crash', async () => {
    await withClient(db, async (client) => {
      await client.query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1', [ROLE]);
    });
    const res = await depositWithCommitAnswerLost();
    expect(res.status, JSON.stringify(res.body)).toBe(202);
    expect(res.body).toMatchObject({ state: 'one-phase', onePhase: true, inDoubt: true });
    expect(await balanceOf(db, 'alice')).toBe(110); // committed all the same: the coordinator cannot prove it
  });
});
