/**
 * One-phase commit of a Postgres branch: a plain COMMIT of its open session, no
 * PREPARE TRANSACTION. The server decides; what it decided is known from the
 * COMMIT's answer — or, when that answer was lost (the connection broke, the
 * read timed out), from the transaction's id: it is read before COMMIT is sent
 * (in the work's own round trip when the commit follows at once), and
 * `txid_status` tells afterwards whether that transaction committed, once the
 * backend that ran it is gone. A branch that never wrote holds no transaction
 * id: its COMMIT and a ROLLBACK come to the same.
 */

import type pg from 'pg';
import { DatabaseError } from 'pg-protocol';
import { errorMessage } from '../errors.js';
import type { OnePhaseResult } from './participant.js';
import { runSimple } from './pg-pipeline.js';
import { release, type BranchSession } from './postgres-session.js';

/** Appended to the work when a one-phase commit follows: the transaction's id, or null while it wrote nothing. */
export const XID_QUERY = 'SELECT txid_current_if_assigned()::text AS xid';

/** A one-phase commit whose answer was lost: what finding its outcome needs. */
export interface LostCommit {
  /** The transaction's id; null when it wrote nothing. */
  readonly xid: string | null;
  /** The backend that ran it, and when we lost it (a pid reused since has a later backend_start). */
  readonly pid: number;
  readonly since: Date;
}

export type CommitAnswer = OnePhaseResult | { readonly lost: LostCommit; readonly error: unknown };

export function xidOf(rows: readonly unknown[] | undefined): string | null {
  const xid = (rows?.[0] as { xid?: unknown } | undefined)?.xid;
  return typeof xid === 'string' ? xid : null;
}

/** COMMIT of the branch's open session; the session goes back to the pool (or is closed) in every case. */
export async function commitSession(session: BranchSession, participant: string): Promise<CommitAnswer> {
  if (session.failure !== undefined) {
    await endQuietly(session, 'ROLLBACK');
    return { outcome: 'abort', reason: session.failure };
  }
  if (session.xid === undefined) {
    try {
      const res = await session.client.query<{ xid: string | null }>(XID_QUERY);
      session.xid = xidOf(res.rows);
    } catch (err) {
      // No COMMIT was sent: the server rolls the work back, now or when it sees the connection go.
      release(session, err);
      return { outcome: 'abort', reason: `could not read the transaction id on ${participant} before COMMIT: ${errorMessage(err)}` };
    }
  }
  const xid = session.xid;
  let tag: string | null;
  try {
    tag = await runSimple(session.client, 'COMMIT');
  } catch (err) {
    if (err instanceof DatabaseError) {
      // A COMMIT the server refused (a deferred constraint, a serialization failure) rolled back.
      release(session);
      return { outcome: 'abort', reason: `commit failed on ${participant}: ${errorMessage(err)}` };
    }
    release(session, err);
    return { lost: { xid, pid: session.backendPid, since: new Date() }, error: err };
  }
  release(session);
  // COMMIT of a transaction that had already failed answers ROLLBACK.
  if (tag !== 'COMMIT') return { outcome: 'abort', reason: `commit on ${participant} answered ${tag ?? 'nothing'}: the transaction had failed` };
  return { outcome: 'commit' };
}

/**
 * The outcome of a lost COMMIT, read on a control session once its backend is gone (so the
 * transaction is no longer in progress). Throws while the server cannot say.
 */
export async function lostCommitOutcome(
  lost: LostCommit,
  control: pg.Pool,
  stopBackend: (pid: number, since: Date) => Promise<void>,
  participant: string,
): Promise<OnePhaseResult> {
  if (lost.xid === null) return { outcome: 'commit' }; // it wrote nothing: committed and rolled back are the same
  await stopBackend(lost.pid, lost.since);
  const res = await control.query<{ status: string | null }>('SELECT txid_status($1::bigint) AS status', [lost.xid]);
  const status = res.rows[0]?.status ?? null;
  if (status === 'committed') return { outcome: 'commit' };
  if (status === 'aborted') return { outcome: 'abort', reason: `the connection to ${participant} broke during COMMIT, and the server rolled the transaction back` };
  throw new Error(
    status === null
      ? `${participant} no longer knows transaction ${lost.xid} (too old): its one-phase outcome cannot be read`
      : `transaction ${lost.xid} on ${participant} is still ${status}`,
  );
}

async function endQuietly(session: BranchSession, statement: 'ROLLBACK'): Promise<void> {
  try {
    await session.client.query(statement);
    release(session);
  } catch (err) {
    release(session, err);
  }
}
