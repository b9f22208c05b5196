/**
 * One-phase commit of a Postgres branch: a plain COMMIT of its open session, no
 * PREPARE TRANSACTION. The server decides; what it decided is known from the
 * COMMIT's answer — or, when that answer was lost (the connection broke, the
 * read timed out), from the evidence read before COMMIT was sent (in the work's
 * own round trip when the commit follows at once):
 *
 *   xid         txid_current(): assigned even to a branch that only read, since
 *               COMMIT itself can write (a NOTIFY takes its id there); null only
 *               on a standby, where nothing can be written
 *   pid, since  the backend, and the server's clock when it ran the read
 *   postmaster  when the server's postmaster started
 *   system      the cluster's system identifier
 *
 * Once that backend is gone, `txid_status` on the same cluster's primary tells
 * what happened — with one trap: a server that crashed since hands out again
 * the ids whose records never reached disk, so "committed" may be another
 * transaction's. It is trusted only while a backend that started before
 * `since` still runs under the same postmaster (a crash or restart ends every
 * backend). "aborted", or an id "in the future", mean the COMMIT never became
 * durable, whatever happened since. Nothing is concluded from a standby or
 * from another cluster, nor from "in progress" (the backend may still be
 * committing: behind a pooler its pid is not the server's); "committed" that
 * cannot be trusted stays in doubt for an operator.
 */

import type pg from 'pg';
import { DatabaseError } from 'pg-protocol';
import { errorMessage } from '../errors.js';
import type { OnePhaseEvidence, OnePhaseResult, OnePhaseUnknown } from './participant.js';
import { micros, stopBackendStartedBy } from './postgres-control.js';
import { runSimple } from './pg-pipeline.js';
import { release, type BranchSession } from './postgres-session.js';

/**
 * Appended to the work when a one-phase commit follows: what a lost COMMIT answer needs.
 *
 * It also makes the COMMIT as durable as COMMIT PREPARED: Postgres always flushes a prepared
 * transaction's commit, but a plain COMMIT under `synchronous_commit = off` answers before
 * its WAL is written, and a server killed then loses a commit the client was told of. For
 * this transaction only (SET LOCAL), `off` becomes `local`; every stronger setting stays.
 */
export const EVIDENCE_QUERY =
  `SELECT CASE WHEN pg_is_in_recovery() THEN NULL ELSE txid_current()::text END AS xid, ${micros('statement_timestamp()')}::text AS since, ` +
  `${micros('pg_postmaster_start_time()')}::text AS postmaster, (SELECT system_identifier FROM pg_control_system())::text AS system, ` +
  `set_config('synchronous_commit', CASE current_setting('synchronous_commit') WHEN 'off' THEN 'local' ELSE current_setting('synchronous_commit') END, true) AS durability`;

const INSUFFICIENT_PRIVILEGE = '42501';

/**
 * Whether the role may read what EVIDENCE_QUERY reads (pg_control_system() can be revoked
 * from PUBLIC): true or false, or undefined when the server could not be asked (ask again).
 */
export async function evidenceReadable(control: pg.Pool): Promise<boolean | undefined> {
  try {
    await control.query('SELECT (SELECT system_identifier FROM pg_control_system())::text AS system, pg_postmaster_start_time() AS postmaster');
    return true;
  } catch (err) {
    return (err as { code?: unknown }).code === INSUFFICIENT_PRIVILEGE ? false : undefined;
  }
}

export function evidenceUnreadableWarning(participant: string): string {
  return (
    `one-phase commit is off for ${participant}: its role may not execute pg_control_system(), which a lost COMMIT's evidence needs ` +
    '(GRANT EXECUTE ON FUNCTION pg_control_system() TO the role; it is checked again at the next restart); its single-branch transactions take the full protocol'
  );
}

/** What finding a lost COMMIT's outcome needs, read on its session before COMMIT. */
export interface CommitEvidence {
  /** Null on a standby (nothing written, nothing to commit). */
  readonly xid: string | null;
  /** Server clock, microseconds since the epoch. */
  readonly since: string;
  readonly postmaster: string;
  readonly system: string;
}

const SQLSTATE_INVALID_PARAMETER = '22023';

export function evidenceOf(rows: readonly unknown[] | undefined): CommitEvidence | undefined {
  const row = rows?.[0] as Record<string, unknown> | undefined;
  const { xid, since, postmaster, system } = row ?? {};
  if ((typeof xid !== 'string' && xid !== null) || typeof since !== 'string' || typeof postmaster !== 'string' || typeof system !== 'string') return undefined;
  return { xid, since, postmaster, system };
}

/** The evidence back from the log, checked (it comes from disk, maybe from an older version). */
function parseEvidence(evidence: OnePhaseEvidence): (CommitEvidence & { pid: number }) | undefined {
  const { xid, since, postmaster, system, pid } = evidence;
  const digits = (v: unknown): v is string => typeof v === 'string' && /^\d{1,20}$/.test(v);
  if (!(xid === null || digits(xid)) || !digits(since) || !digits(postmaster) || !digits(system) || typeof pid !== 'number' || !Number.isInteger(pid)) return undefined;
  return { xid, since, postmaster, system, pid };
}

/**
 * COMMIT of the branch's open session; the session goes back to the pool (or is closed) in
 * every case — once COMMIT answers, even when `stopWaiting` stopped the wait for it.
 */
export async function commitSession(session: BranchSession, participant: string, stopWaiting?: AbortSignal): Promise<OnePhaseResult | OnePhaseUnknown> {
  if (session.failure !== undefined) {
    await endQuietly(session);
    return { outcome: 'abort', reason: session.failure };
  }
  let evidence = session.evidence;
  if (evidence === undefined) {
    try {
      evidence = evidenceOf((await session.client.query(EVIDENCE_QUERY)).rows);
      if (evidence === undefined) throw new Error('the server did not answer the transaction id');
    } catch (err) {
      // No COMMIT was sent: the server rolls the work back, now or when it sees the connection go.
      release(session, err);
      return { outcome: 'abort', reason: `could not read the transaction id on ${participant} before COMMIT: ${errorMessage(err)}` };
    }
  }
  if (stopWaiting?.aborted === true) {
    await endQuietly(session);
    return { outcome: 'abort', reason: `the coordinator is shutting down: no COMMIT was sent to ${participant}` };
  }
  let tag: string | null;
  try {
    const committing = runSimple(session.client, 'COMMIT');
    const answer = await answerUnlessStopped(committing, stopWaiting);
    if (answer === ABANDONED) {
      committing.then(
        () => release(session),
        (err: unknown) => release(session, err),
      );
      return {
        outcome: 'unknown',
        evidence: { ...evidence, pid: session.backendPid },
        reason: `the coordinator shut down before COMMIT on ${participant} answered`,
      };
    }
    tag = answer;
  } catch (err) {
    // A COMMIT the server refused with an ERROR (a deferred constraint, a serialization
    // failure) rolled back. FATAL or PANIC end the backend, maybe after the commit was
    // durable (terminated while waiting for a synchronous standby): not known.
    if (err instanceof DatabaseError && err.severity === 'ERROR') {
      release(session);
      return { outcome: 'abort', reason: `commit failed on ${participant}: ${errorMessage(err)}` };
    }
    release(session, err);
    return {
      outcome: 'unknown',
      evidence: { ...evidence, pid: session.backendPid },
      reason: `the answer to COMMIT on ${participant} was lost: ${errorMessage(err)}`,
    };
  }
  release(session);
  // COMMIT of a transaction that had already failed answers ROLLBACK.
  if (tag !== 'COMMIT') return { outcome: 'abort', reason: `commit on ${participant} answered ${tag ?? 'nothing'}: the transaction had failed` };
  return { outcome: 'commit' };
}

const ABANDONED = Symbol('abandoned');

/**
 * COMMIT's answer, or ABANDONED once `stopWaiting` aborts first. An abandoned COMMIT still
 * runs on the server; its session is released when the answer comes (or the connection ends).
 */
async function answerUnlessStopped(committing: Promise<string | null>, stopWaiting: AbortSignal | undefined): Promise<string | null | typeof ABANDONED> {
  if (stopWaiting === undefined) return committing;
  let onStop: (() => void) | undefined;
  const stopped = new Promise<typeof ABANDONED>((resolve) => {
    onStop = () => resolve(ABANDONED);
    stopWaiting.addEventListener('abort', onStop, { once: true });
  });
  try {
    return await Promise.race([committing, stopped]);
  } finally {
    stopWaiting.removeEventListener('abort', onStop!);
  }
}

/**
 * The outcome of a lost COMMIT, read on a control session once its backend is gone (so the
 * transaction is no longer in progress). Throws while the server cannot say.
 */
export async function lostCommitOutcome(raw: OnePhaseEvidence, control: pg.Pool, participant: string): Promise<OnePhaseResult> {
  const lost = parseEvidence(raw);
  if (lost === undefined) throw new Error(`the evidence kept for a lost COMMIT on ${participant} cannot be read: check the data and resolve the transaction by hand`);
  if (lost.xid === null) return { outcome: 'commit' }; // read on a standby: nothing was written, committed and rolled back are the same
  const xid = lost.xid;
  await stopBackendStartedBy(control, { pid: lost.pid, startedByMicros: lost.since, postmasterMicros: lost.postmaster }, participant);
  const client = await control.connect();
  // A connection that breaks while checked out says so with an 'error' event: heard here (the
  // query fails too), else it would end the process.
  const onError = (): void => undefined;
  client.on('error', onError);
  let status: string | null;
  let server: { standby: boolean; sameSystem: boolean; unbroken: boolean } | undefined;
  let broken: unknown;
  try {
    // This session's own backend may be the witness: whatever started before `since` and runs now.
    server = (
      await client.query<{ standby: boolean; sameSystem: boolean; unbroken: boolean }>(
        `SELECT pg_is_in_recovery() AS standby,
                (SELECT system_identifier FROM pg_control_system())::text = $3 AS "sameSystem",
                ${micros('pg_postmaster_start_time()')} = $1::bigint
                  AND EXISTS (SELECT 1 FROM pg_stat_activity WHERE ${micros('backend_start')} < $2::bigint) AS unbroken`,
        [lost.postmaster, lost.since, lost.system],
      )
    ).rows[0];
    if (server === undefined || server.standby || !server.sameSystem) {
      throw new Error(`${participant} answered from ${server?.standby === true ? 'a standby' : 'another cluster'}: the outcome of transaction ${xid} is asked again`);
    }
    try {
      status = (await client.query<{ status: string | null }>('SELECT txid_status($1::bigint) AS status', [xid])).rows[0]?.status ?? null;
    } catch (err) {
      // 22023 from txid_status: the id is "in the future" — the primary never made it durable (it restarted since).
      if (err instanceof DatabaseError && err.code === SQLSTATE_INVALID_PARAMETER) status = 'future';
      else throw err;
    }
  } catch (err) {
    broken = err instanceof DatabaseError ? undefined : err;
    throw err;
  } finally {
    client.off('error', onError);
    // A broken connection is closed, not pooled.
    client.release(broken instanceof Error ? broken : broken === undefined ? undefined : true);
  }
  if (status === 'committed' && server.unbroken) return { outcome: 'commit' };
  if (status === 'aborted' || status === 'future') {
    return { outcome: 'abort', reason: `the answer to COMMIT on ${participant} was lost, and the server rolled the transaction back` };
  }
  if (status === 'committed') {
    throw new Error(
      `${participant} cannot prove it did not restart (or crash) since COMMIT of transaction ${xid} was sent — after one it may have given that id to ` +
        'another transaction, so its "committed" cannot be trusted. Check the data and resolve the transaction by hand (a role with pg_read_all_stats lets the coordinator see that no crash happened)',
    );
  }
  throw new Error(
    status === null
      ? `${participant} no longer knows transaction ${xid} (too old): its one-phase outcome cannot be read`
      : `transaction ${xid} on ${participant} is still ${status}`,
  );
}

async function endQuietly(session: BranchSession): Promise<void> {
  try {
    await session.client.query('ROLLBACK');
    release(session);
  } catch (err) {
    release(session, err);
  }
}
