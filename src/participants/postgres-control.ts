/**
 * What the Postgres adapter does on its control sessions besides phase 2: ending a backend it
 * lost track of, and telling an operator what a failed control call means.
 */

import type pg from 'pg';
import { DatabaseError } from 'pg-protocol';
import { CoordinatorError, errorMessage } from '../errors.js';

/** How long we wait for a lost session's backend to end before giving up (the caller retries). */
const STOP_BACKEND_WAIT_MS = 10_000;

/**
 * Ends a backend whose session we gave up on while it may still be running a branch's work
 * (or its COMMIT), and waits (bounded) until it is gone: only then does ROLLBACK PREPARED of a
 * gid that does not exist mean "never prepared", or txid_status no longer say "in progress".
 * Only the backend that was there when we lost it is hit (a pid reused since has a later
 * backend_start).
 */
export async function stopBackend(control: pg.Pool, pid: number, since: Date, participant: string): Promise<void> {
  if (pid === 0) return;
  await stopMatching(control, 'pid = $1 AND backend_start < $2', [pid, since], participant);
}

/** Microseconds since the epoch of a server timestamp, exactly (extract answers numeric), as text. */
export const micros = (expression: string): string => `(extract(epoch from ${expression}) * 1000000)::bigint`;

/**
 * As stopBackend, for a backend known by the server's own clock: started no later than
 * `startedByMicros`, under the postmaster that started at `postmasterMicros` — so that nothing
 * is hit on a server that restarted since (or on another one, after a failover).
 */
export async function stopBackendStartedBy(
  control: pg.Pool,
  backend: { readonly pid: number; readonly startedByMicros: string; readonly postmasterMicros: string },
  participant: string,
): Promise<void> {
  if (backend.pid === 0) return;
  const where = `pid = $1 AND ${micros('backend_start')} <= $2::bigint AND ${micros('pg_postmaster_start_time()')} = $3::bigint`;
  // A COMMIT waiting for its synchronous standby is not ended (that would commit it locally
  // without the standby): it is waited for.
  await stopMatching(control, where, [backend.pid, backend.startedByMicros, backend.postmasterMicros], participant, { spareSyncRep: true });
}

async function stopMatching(control: pg.Pool, where: string, params: unknown[], participant: string, options: { spareSyncRep?: boolean } = {}): Promise<void> {
  const spare = options.spareSyncRep === true ? " AND wait_event IS DISTINCT FROM 'SyncRep'" : '';
  await control.query(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE ${where}${spare}`, params);
  const deadline = Date.now() + STOP_BACKEND_WAIT_MS;
  for (;;) {
    const res = await control.query(`SELECT 1 FROM pg_stat_activity WHERE ${where}`, params);
    if (res.rowCount === 0) return;
    if (Date.now() > deadline) throw new Error(`backend ${String(params[0])} on ${participant} still runs a lost session; the call is retried`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/**
 * A control-session call failed: the server refused the credentials (SQLSTATE class 28), or
 * answered with another error, or could not be reached at all — three different things for
 * an operator (and only the last means the participant may be gone).
 */
export function controlFailure(name: string, what: string, err: unknown): CoordinatorError {
  if (err instanceof DatabaseError) {
    const code = err.code?.startsWith('28') === true ? 'PARTICIPANT_AUTH_FAILED' : 'OPERATION_FAILED';
    return new CoordinatorError(code, `postgres participant ${name} refused ${what}: ${err.message}`, { cause: err, details: { sqlState: err.code } });
  }
  return new CoordinatorError('PARTICIPANT_UNREACHABLE', `cannot reach postgres participant ${name}: ${errorMessage(err)}`, { cause: err });
}
