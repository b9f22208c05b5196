/**
 * The Postgres adapter's round-trip savings and what keeps them safe: work, BEGIN and
 * PREPARE in one pipeline (PREPARE runs only after every statement succeeded), phase 2 on
 * the branch's own session (and on any other when that one is gone).
 */
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { silentLogger } from '../../src/logger.js';
import { PostgresParticipant } from '../../src/participants/postgres-participant.js';
import type { BranchRef } from '../../src/participants/participant.js';
import { balanceOf, createAccounts, freshDatabase, preparedGids, withClient } from '../support/databases.js';
import { FaultProxy } from '../support/fault-proxy.js';

let db: string;
let pgp: PostgresParticipant;
let n = 0;

const branch = (): BranchRef => {
  n++;
  return { transactionId: `00000000-0000-4000-8000-${String(n).padStart(12, '0')}`, branchId: 'b1', gid: `tcx:pgtest:00000000-0000-4000-8000-${String(n).padStart(12, '0')}:1` };
};
const update = (account: string, delta: number) => [{ sql: 'UPDATE accounts SET balance = balance + $1 WHERE id = $2 RETURNING balance', params: [delta, account] }];

beforeAll(async () => {
  db = await freshDatabase(inject('pgUrlA'));
  await createAccounts(db, { alice: 100, bob: 0 });
  pgp = new PostgresParticipant({
    name: 'bank',
    connectionString: db,
    maxSessions: 8,
    connectTimeoutMs: 5_000,
    statementTimeoutMs: 10_000,
    idleInTransactionTimeoutMs: 60_000,
    logger: silentLogger(),
  });
  await pgp.verify();
});

afterAll(async () => {
  await pgp?.close();
});

describe('postgres participant: pipelined work and prepare', () => {
  it('prepares in the same round trip as the work when asked, and answers the rows and the vote', async () => {
    const ref = branch();
    const result = await pgp.enlist(ref, update('alice', -10), undefined, { prepareAfter: true });
    expect(result.vote).toEqual({ vote: 'yes' });
    expect(result.results).toEqual([{ rows: [{ balance: '90' }], rowCount: 1 }]);
    expect(await preparedGids(db, 'tcx:pgtest:')).toEqual([ref.gid]);
    expect(pgp.openBranches()).toBe(0);
    await pgp.commit(ref);
    expect(await preparedGids(db, 'tcx:pgtest:')).toEqual([]);
    expect(await balanceOf(db, 'alice')).toBe(90);
  });

  it('does not prepare when a statement of the pipeline fails: the failure names the operation, abort rolls it back', async () => {
    const ref = branch();
    const work = [...update('alice', 1), ...update('bob', -1)]; // bob would go below 0
    const err = await pgp.enlist(ref, work, undefined, { prepareAfter: true }).then(() => undefined, (e: unknown) => e);
    expect(err).toMatchObject({ code: 'OPERATION_FAILED', details: { operation: 1, sqlState: '23514' } });
    expect(await preparedGids(db, 'tcx:pgtest:')).toEqual([]);
    await pgp.abort(ref);
    expect(pgp.openBranches()).toBe(0);
    expect(await balanceOf(db, 'alice')).toBe(90);
  });

  it('votes no when the pipelined PREPARE itself fails, and leaves the other holder of the gid alone', async () => {
    const ref = branch();
    // Someone else holds the gid already: PREPARE TRANSACTION fails with "already in use".
    await withClient(db, async (client) => {
      await client.query('BEGIN');
      await client.query(`PREPARE TRANSACTION '${ref.gid}'`);
    });
    const result = await pgp.enlist(ref, update('bob', 5), undefined, { prepareAfter: true });
    expect(result.vote?.vote).toBe('no');
    expect(result.results).toEqual([{ rows: [{ balance: '5' }], rowCount: 1 }]);
    expect(await balanceOf(db, 'bob')).toBe(0); // the failed PREPARE rolled the work back
    await withClient(db, (client) => client.query(`ROLLBACK PREPARED '${ref.gid}'`));
  });

  it('keeps a read-only-looking branch out of the pipelined prepare: it may still end read-only', async () => {
    const ref = branch();
    const result = await pgp.enlist(ref, [{ sql: 'SELECT balance FROM accounts WHERE id = $1', params: ['alice'] }], undefined, { prepareAfter: true });
    expect(result.vote).toBeUndefined();
    expect(await pgp.prepare(ref)).toEqual({ vote: 'read-only' });
    expect(await preparedGids(db, 'tcx:pgtest:')).toEqual([]);
  });
});

describe('postgres participant: phase 2 on the branch session', () => {
  it('commits on another session when the kept one was lost between prepare and commit', async () => {
    const ref = branch();
    const result = await pgp.enlist(ref, update('alice', -1), undefined, { prepareAfter: true });
    expect(result.vote?.vote).toBe('yes');
    // Kill every session of the adapter except the one doing the killing.
    await withClient(db, (client) =>
      client.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'tx-coordinator' AND pid <> pg_backend_pid()"),
    );
    // The coordinator retries phase 2 until acknowledged. An attempt may fail on the dead kept
    // session, and one more on a pooled idle session terminated too but not yet noticed
    // (its socket closes asynchronously); then a fresh session commits.
    let attempts = 0;
    for (;;) {
      attempts++;
      try {
        await pgp.commit(ref);
        break;
      } catch (err) {
        if (attempts >= 4) throw err;
      }
    }
    expect(attempts).toBeLessThanOrEqual(3);
    expect(await preparedGids(db, 'tcx:pgtest:')).toEqual([]);
    expect(await balanceOf(db, 'alice')).toBe(89);
  });

  it('rolls back an early prepare that is still running when the abort comes: the abort waits for it', async () => {
    await withClient(db, async (client) => {
      await client.query(`CREATE OR REPLACE FUNCTION slow_prepare() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN IF NEW.id = 'bob' THEN PERFORM pg_sleep(0.3); END IF; RETURN NEW; END $$`);
      await client.query(`CREATE CONSTRAINT TRIGGER slow_prepare AFTER UPDATE ON accounts
        DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_prepare()`);
    });
    try {
      const ref = branch();
      await pgp.enlist(ref, update('bob', 7));
      const preparing = pgp.prepare(ref, { decisionFollows: true });
      await new Promise((r) => setTimeout(r, 50)); // PREPARE is running (the trigger sleeps)
      await pgp.abort(ref);
      expect(await preparing).toEqual({ vote: 'yes' });
      expect(await preparedGids(db, 'tcx:pgtest:')).toEqual([]);
      expect(await balanceOf(db, 'bob')).toBe(0);
    } finally {
      await withClient(db, (client) => client.query('DROP TRIGGER slow_prepare ON accounts'));
    }
  });
});

describe('postgres participant: a session lost on our side while the server still runs it', () => {
  it('the abort stops the backend first: a PREPARE that was still to run never lands', async () => {
    const proxy = await FaultProxy.forUrl(db, { name: 'pg' });
    const viaProxy = new PostgresParticipant({
      name: 'bank-via-proxy',
      connectionString: proxy.rewriteUrl(db),
      maxSessions: 4,
      connectTimeoutMs: 5_000,
      statementTimeoutMs: 10_000,
      idleInTransactionTimeoutMs: 60_000,
      logger: silentLogger(),
    });
    try {
      const ref = branch();
      const before = await balanceOf(db, 'alice');
      // The server reads the whole pipeline, then sleeps before PREPARE; meanwhile the
      // connection is cut. Postgres does not notice a closed socket while it sleeps.
      const work = [...update('alice', -3), { sql: 'SELECT pg_sleep(1)', params: [] }];
      const enlisted = viaProxy.enlist(ref, work, undefined, { prepareAfter: true });
      await new Promise((r) => setTimeout(r, 250));
      proxy.cutOpenConnections();
      await expect(enlisted).rejects.toMatchObject({ code: 'PARTICIPANT_UNREACHABLE' });
      // The coordinator aborts the branch (retrying until acknowledged).
      for (let attempt = 1; ; attempt++) {
        try {
          await viaProxy.abort(ref);
          break;
        } catch (err) {
          if (attempt >= 5) throw err;
          await new Promise((r) => setTimeout(r, 100));
        }
      }
      // Long after the sleep would have ended and PREPARE would have run: nothing prepared, nothing changed.
      await new Promise((r) => setTimeout(r, 1_500));
      expect(await preparedGids(db, ref.gid)).toEqual([]);
      expect(await balanceOf(db, 'alice')).toBe(before);
    } finally {
      await viaProxy.close();
      await proxy.close();
    }
  });

  it('one-phase commit once the coordinator stopped waiting (a graceful stop): no COMMIT is sent, the work is rolled back', async () => {
    const ref = branch();
    await pgp.enlist(ref, update('bob', 7), undefined, { onePhaseFollows: true });
    const stopped = new AbortController();
    stopped.abort();
    const result = await pgp.commitOnePhase(ref, stopped.signal);
    expect(result.outcome).toBe('abort');
    expect(result.outcome === 'abort' ? result.reason : '').toMatch(/shutting down: no COMMIT was sent/);
    expect(pgp.openBranches()).toBe(0);
    expect(await balanceOf(db, 'bob')).toBe(0);
  });
});
