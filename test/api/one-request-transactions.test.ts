/**
 * The one-request path's speed-ups and the safety conditions they rest on: a branch prepared
 * early (while the next branch's work runs, or in the same round trip as its own work) must
 * still end rolled back when a sibling fails — at once, not only after a recovery sweep — and
 * the default order keeps its lock-order promise.
 */
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { balanceOf, createAccounts, freshDatabase, preparedGids, withClient } from '../support/databases.js';
import { startCoordinator, type InProcessCoordinator } from '../support/in-process-coordinator.js';

let c: InProcessCoordinator;
let dbA: string;
let dbB: string;

const transferSql = (account: string, delta: number) => ({
  sql: 'UPDATE accounts SET balance = balance + $1 WHERE id = $2 RETURNING balance',
  params: [delta, account],
});

const api: InProcessCoordinator['api'] = (method, url, payload) => c.api(method, url, payload);

beforeAll(async () => {
  [dbA, dbB] = await Promise.all([freshDatabase(inject('pgUrlA')), freshDatabase(inject('pgUrlB'))]);
  await createAccounts(dbA, { alice: 100, slowpoke: 100 });
  await createAccounts(dbB, { bob: 100 });
  // PREPARE of a branch that touched `slowpoke` takes 400 ms: a deferred constraint trigger runs
  // at PREPARE TRANSACTION and sleeps. It makes "a prepare still in flight" deterministic.
  await withClient(dbA, async (client) => {
    await client.query(`CREATE FUNCTION slow_prepare() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN IF NEW.id = 'slowpoke' THEN PERFORM pg_sleep(0.4); END IF; RETURN NEW; END $$`);
    await client.query(`CREATE CONSTRAINT TRIGGER slow_prepare AFTER UPDATE ON accounts
      DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_prepare()`);
  });
  // A long sweep interval: whatever is left prepared stays visible to the assertions.
  c = await startCoordinator({ TCX_DEFAULT_TIMEOUT_MS: '10000', TCX_RECOVERY_INTERVAL_MS: '3600000' });
  expect((await api('POST', '/v1/participants', { name: 'bank-a', kind: 'postgres', connectionString: dbA })).status).toBe(201);
  expect((await api('POST', '/v1/participants', { name: 'bank-b', kind: 'postgres', connectionString: dbB })).status).toBe(201);
});

afterAll(async () => {
  await c?.destroy();
});

describe('one-request transactions', () => {
  for (const parallel of [false, true]) {
    it(`${parallel ? 'parallel' : 'in order'}: a sibling that fails while a branch is still preparing leaves nothing prepared`, async () => {
      const res = await api('POST', '/v1/transactions', {
        parallel,
        branches: [
          { participant: 'bank-a', operations: [transferSql('slowpoke', -1)] },
          // Fails at once: bob would go negative (CHECK balance >= 0).
          { participant: 'bank-b', operations: [transferSql('bob', -1000)] },
        ],
        commit: true,
      });
      expect(res.status).toBe(409);
      expect(res.body.state).toBe('aborted');
      // The answer holds the work that ran before the entry that failed (in request order), not the failed one's.
      expect((res.body.results as { participant: string }[]).map((r) => r.participant)).toEqual(['bank-a']);
      // No sweep runs; once the slow PREPARE would have finished, the branch is rolled back, not prepared.
      await new Promise((r) => setTimeout(r, 600));
      expect(await preparedGids(dbA)).toEqual([]);
      expect(await balanceOf(dbA, 'slowpoke')).toBe(100);
      expect(await balanceOf(dbB, 'bob')).toBe(100);
    });
  }

  it('commits with early prepares in request order and in parallel, with the same outcome', async () => {
    for (const parallel of [false, true]) {
      const res = await api('POST', '/v1/transactions', {
        parallel,
        branches: [
          { participant: 'bank-a', operations: [transferSql('slowpoke', -5)] },
          { participant: 'bank-b', operations: [transferSql('bob', 5)] },
        ],
        commit: true,
      });
      expect(res.status).toBe(200);
      expect(res.body.state).toBe('committed');
      // Each branch's answer says the state the request left the transaction in, not 'active'.
      expect(res.body.results.map((r: { state: string }) => r.state)).toEqual(['committed', 'committed']);
      expect(res.body.results.map((r: { results: { rows: { balance: string }[] }[] }) => r.results[0]!.rows[0]!.balance)).toEqual(
        parallel ? ['90', '110'] : ['95', '105'],
      );
    }
    expect(await preparedGids(dbA)).toEqual([]);
    expect(await preparedGids(dbB)).toEqual([]);
  });

  it('in order (the default), two transfers locking the same rows in the same order never deadlock across databases', async () => {
    await createAccounts(dbA, { hot: 1000 });
    await createAccounts(dbB, { hot: 1000 });
    const transfer = () =>
      api('POST', '/v1/transactions', {
        timeoutMs: 5_000,
        branches: [
          { participant: 'bank-a', operations: [transferSql('hot', -1)] },
          { participant: 'bank-b', operations: [transferSql('hot', 1)] },
        ],
        commit: true,
      });
    const answers = await Promise.all(Array.from({ length: 20 }, transfer));
    expect(answers.map((a) => a.body.state)).toEqual(Array(20).fill('committed'));
    expect(await balanceOf(dbA, 'hot')).toBe(980);
    expect(await balanceOf(dbB, 'hot')).toBe(1020);
  });

  it('refuses parallel without branches', async () => {
    const res = await api('POST', '/v1/transactions', { parallel: true });
    expect(res.status).toBe(400);
    expect(res.body.error.code).toBe('VALIDATION_FAILED');
  });
});
