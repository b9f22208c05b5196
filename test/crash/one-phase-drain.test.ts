/**
 * A graceful stop while a one-phase COMMIT is still running on the database (a deferred
 * trigger that sleeps at COMMIT): the stop does not wait past its deadline, yet it does not
 * forget the transaction either. Its evidence is forced before the log closes, and after the
 * restart the coordinator asks the database and reports what it did. Without that record the
 * restarted coordinator would not know the transaction at all (404) while its work committed.
 */
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { balanceOf, createAccounts, freshDatabase, withClient } from '../support/databases.js';
import { startCoordinator, tempDataDir, type InProcessCoordinator } from '../support/in-process-coordinator.js';
import { until } from './helpers.js';

const COMMIT_SLEEP_S = 3;
const ENV = { TCX_RECOVERY_INTERVAL_MS: '3600000', TCX_COMMIT_WAIT_MS: '1500', TCX_RETRY_INITIAL_MS: '50', TCX_RETRY_MAX_MS: '200' };

let db: string;
let c: InProcessCoordinator | undefined;
const dataDir = tempDataDir();

const api: InProcessCoordinator['api'] = (method, url, payload) => c!.api(method, url, payload);

beforeAll(async () => {
  db = await freshDatabase(inject('pgUrlA'));
  await createAccounts(db, { slow: 0 });
  await withClient(db, async (client) => {
    await client.query(`CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN IF NEW.id = 'slow' THEN PERFORM pg_sleep(${COMMIT_SLEEP_S}); END IF; RETURN NEW; END $$`);
    await client.query(`CREATE CONSTRAINT TRIGGER slow_commit AFTER UPDATE ON accounts
      DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_commit()`);
  });
});

afterAll(async () => {
  await c?.destroy();
});

describe('graceful stop during a one-phase commit', () => {
  it('a COMMIT still running at the deadline: its evidence is forced, and after the restart the outcome is asked for and reported', async () => {
    c = await startCoordinator(ENV, dataDir);
    expect((await api('POST', '/v1/participants', { name: 'bank', kind: 'postgres', connectionString: db })).status).toBe(201);
    const answer = api('POST', '/v1/transactions', {
      branches: [{ participant: 'bank', operations: [{ sql: 'UPDATE accounts SET balance = balance + 1 WHERE id = $1', params: ['slow'] }] }],
      commit: true,
    });
    // The COMMIT runs the deferred trigger, asleep.
    await until('COMMIT is running on the database', () =>
      withClient(db, async (client) => {
        const res = await client.query("SELECT 1 FROM pg_stat_activity WHERE application_name = 'tx-coordinator' AND query = 'COMMIT' AND state = 'active'");
        return res.rowCount === 1 ? true : undefined;
      }),
    );
    const stopping = c.coordinator.stop(1_000);
    const answered = await answer;
    // The client hears that the outcome is not known yet (the store has it).
    expect(answered.status, JSON.stringify(answered.body)).toBe(202);
    expect(answered.body).toMatchObject({ state: 'one-phase', onePhase: true, inDoubt: true });
    const id = answered.body.id as string;
    await stopping;
    await c.app.close();
    c = undefined;
    // The abandoned COMMIT finishes on the database by itself.
    await until('the COMMIT finished on the database', async () => ((await balanceOf(db, 'slow')) === 1 ? true : undefined), (COMMIT_SLEEP_S + 10) * 1_000);

    c = await startCoordinator(ENV, dataDir);
    // Known after the restart (resumed from its forced evidence), not a 404.
    const known = await api('GET', `/v1/transactions/${id}`);
    expect(known.status, JSON.stringify(known.body)).toBe(200);
    const view = await until('the restarted coordinator reports the outcome', async () => {
      const got = await api('GET', `/v1/transactions/${id}`);
      return got.body.state === 'committed' ? got.body : undefined;
    });
    expect(view).toMatchObject({ state: 'committed', decision: 'commit', onePhase: true, inDoubt: false });
    expect(await balanceOf(db, 'slow')).toBe(1);
  });
});
