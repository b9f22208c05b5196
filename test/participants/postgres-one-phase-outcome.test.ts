/**
 * The outcome of a one-phase COMMIT whose answer was lost, read back from the real server
 * with the evidence the adapter keeps (transaction id, the server's clock, its postmaster's
 * start). The safety condition: a server that restarted since may have handed the id to
 * another transaction, so its "committed" is trusted only while a backend older than the
 * evidence still runs under the same postmaster; "aborted" and "in the future" are safe to
 * take either way — but only from the same cluster's primary.
 */
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { EVIDENCE_QUERY, evidenceOf, lostCommitOutcome } from '../../src/participants/postgres-one-phase.js';
import { createAccounts, freshDatabase } from '../support/databases.js';

let db: string;
let control: pg.Pool;

/** Runs an update in a transaction that ends with `end`, and answers its evidence as the adapter reads it. */
async function transactionEnding(end: 'COMMIT' | 'ROLLBACK'): Promise<Record<string, string | number | null>> {
  const client = new pg.Client({ connectionString: db });
  await client.connect();
  try {
    await client.query('BEGIN');
    await client.query("UPDATE accounts SET balance = balance + 1 WHERE id = 'alice'");
    const evidence = evidenceOf((await client.query(EVIDENCE_QUERY)).rows);
    if (evidence === undefined) throw new Error('no evidence');
    await client.query(end);
    return { ...evidence, pid: (client as unknown as { processID?: number }).processID ?? 0 };
  } finally {
    await client.end();
  }
}

beforeAll(async () => {
  db = await freshDatabase(inject('pgUrlA'), 'onephase_outcome');
  await createAccounts(db, { alice: 100 });
  control = new pg.Pool({ connectionString: db, max: 2 });
});

afterAll(async () => {
  await control?.end();
});

describe('one-phase COMMIT outcome after a lost answer', () => {
  it('a committed transaction on the same, unbroken server: commit', async () => {
    const evidence = await transactionEnding('COMMIT');
    expect(await lostCommitOutcome(evidence, control, 'bank')).toEqual({ outcome: 'commit' });
  });

  it('a rolled-back transaction: abort, with the reason', async () => {
    const evidence = await transactionEnding('ROLLBACK');
    const result = await lostCommitOutcome(evidence, control, 'bank');
    expect(result.outcome).toBe('abort');
    expect(result.reason).toMatch(/rolled the transaction back/);
  });

  it('"committed" under another postmaster (the server restarted since): not trusted, stays in doubt', async () => {
    const evidence = await transactionEnding('COMMIT');
    const restarted = { ...evidence, postmaster: String(BigInt(evidence.postmaster as string) - 1n) };
    await expect(lostCommitOutcome(restarted, control, 'bank')).rejects.toThrow(/cannot be trusted.*resolve the transaction by hand/);
  });

  it('"committed" when no backend older than the evidence survives (a crash ends them all): not trusted', async () => {
    const evidence = await transactionEnding('COMMIT');
    // As if read before every backend running now started: all of them came after it.
    const older = { ...evidence, since: '1' };
    await expect(lostCommitOutcome(older, control, 'bank')).rejects.toThrow(/cannot be trusted/);
  });

  it('"aborted" under another postmaster: abort (a committed id is never reused)', async () => {
    const evidence = await transactionEnding('ROLLBACK');
    const restarted = { ...evidence, postmaster: String(BigInt(evidence.postmaster as string) - 1n) };
    expect((await lostCommitOutcome(restarted, control, 'bank')).outcome).toBe('abort');
  });

  it('an id the server has not handed out yet (its records never reached disk before a crash): abort', async () => {
    const evidence = await transactionEnding('COMMIT');
    const future = { ...evidence, xid: String(BigInt(evidence.xid as string) + 1_000_000n), postmaster: String(BigInt(evidence.postmaster as string) - 1n) };
    expect((await lostCommitOutcome(future, control, 'bank')).outcome).toBe('abort');
  });

  it('an answer from another cluster (its system identifier differs): nothing concluded, not even "aborted"', async () => {
    for (const end of ['COMMIT', 'ROLLBACK'] as const) {
      const evidence = await transactionEnding(end);
      const elsewhere = { ...evidence, system: String(BigInt(evidence.system as string) + 1n) };
      await expect(lostCommitOutcome(elsewhere, control, 'bank')).rejects.toThrow(/another cluster/);
    }
  });

  it('a transaction still in progress: asked again, never taken for an abort', async () => {
    const client = new pg.Client({ connectionString: db });
    await client.connect();
    try {
      await client.query('BEGIN');
      const evidence = evidenceOf((await client.query(EVIDENCE_QUERY)).rows);
      // Another pid (a pooler's): the adapter cannot end that backend, and must not conclude anything.
      await expect(lostCommitOutcome({ ...evidence!, pid: 1 }, control, 'bank')).rejects.toThrow(/still in progress/);
      await client.query('ROLLBACK');
    } finally {
      await client.end();
    }
  });

  it('evidence read on a standby has no transaction id (nothing could be written): commit', async () => {
    const evidence = await transactionEnding('COMMIT');
    expect(await lostCommitOutcome({ ...evidence, xid: null }, control, 'bank')).toEqual({ outcome: 'commit' });
  });

  it('evidence that cannot be read (a damaged or foreign record): stays in doubt', async () => {
    await expect(lostCommitOutcome({ xid: 'x; DROP TABLE accounts', since: '1', postmaster: '1', system: '1', pid: 1 }, control, 'bank')).rejects.toThrow(/cannot be read/);
  });
});
