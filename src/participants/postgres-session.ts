/**
 * A Postgres branch's session and what the adapter needs around it: returning it to the pool
 * (or closing it when it must not be reused), the read-only guesses, and the sessions of
 * prepared branches kept for their phase 2.
 */
import type { CommitEvidence } from './postgres-one-phase.js';
import type pg from 'pg';
import { CoordinatorError, errorMessage } from '../errors.js';
import type { StatementResult } from './pg-pipeline.js';

export interface BranchSession {
  readonly client: pg.PoolClient;
  readonly backendPid: number;
  readonly onError: (err: Error) => void;
  /** Set when the session can no longer prepare: a statement failed or the connection broke. */
  failure: string | undefined;
  /** Some statement may have written (anything but a plain query): skip the read-only check. */
  mayWrite: boolean;
  /**
   * The connection may carry state past this branch — a cancel request in flight (it could
   * hit the next user's statement), session settings or advisory locks — so it is closed
   * instead of returned to the pool.
   */
  mustNotBeReused: boolean;
  /** Work running on the session right now (an abort waits for it before it looks). */
  busy: Promise<unknown> | undefined;
  /**
   * The transaction's id (and when, under which postmaster) as read after the last work;
   * undefined when not read since. A one-phase commit needs it to learn its outcome should
   * COMMIT's answer be lost.
   */
  evidence?: CommitEvidence | undefined;
}

/**
 * A pooled session for a new branch, listening for a dropped connection from the first moment
 * (unheard, 'error' ends the process). Every session busy: said at once rather than queueing
 * the request behind the connect deadline and then calling the participant unreachable.
 */
export async function checkoutSession(pool: pg.Pool, maxSessions: number, participant: string): Promise<BranchSession> {
  if ((pool.totalCount >= maxSessions && pool.idleCount === 0) || pool.waitingCount > 0) {
    throw new CoordinatorError('PARTICIPANT_BUSY', `all ${maxSessions} sessions to ${participant} are in use (TCX_PG_MAX_SESSIONS); retry shortly`, {
      details: { participant },
      retryAfterSeconds: 1,
    });
  }
  let client: pg.PoolClient;
  try {
    client = await pool.connect();
  } catch (err) {
    throw new CoordinatorError('PARTICIPANT_UNREACHABLE', `cannot open a session on ${participant}: ${errorMessage(err)}`, { cause: err });
  }
  const session: BranchSession = {
    client,
    backendPid: (client as unknown as { processID?: number }).processID ?? 0,
    failure: undefined,
    mayWrite: false,
    mustNotBeReused: false,
    busy: undefined,
    onError: (err: Error): void => {
      session.failure = `connection lost: ${errorMessage(err)}`;
    },
  };
  client.on('error', session.onError);
  return session;
}

/**
 * Sessions of prepared branches kept for their phase 2, which follows at once: no pool round
 * trip, and commit delivery never waits for a free control session. One that is not taken
 * within the bound goes back to the pool (one sweep for all).
 */
export class KeptSessions {
  readonly #kept = new Map<string, { session: BranchSession; since: number }>();
  readonly #boundMs: number;
  #sweep: NodeJS.Timeout | undefined;

  constructor(boundMs: number) {
    this.#boundMs = boundMs;
  }

  keep(gid: string, session: BranchSession): void {
    this.#kept.set(gid, { session, since: Date.now() });
    this.#sweep ??= setInterval(() => this.#releaseStale(), this.#boundMs).unref();
  }

  take(gid: string): BranchSession | undefined {
    const kept = this.#kept.get(gid);
    if (kept === undefined) return undefined;
    this.#kept.delete(gid);
    return kept.session;
  }

  releaseAll(): void {
    for (const { session } of this.#kept.values()) release(session);
    this.#kept.clear();
    clearInterval(this.#sweep);
    this.#sweep = undefined;
  }

  #releaseStale(): void {
    const stale = Date.now() - this.#boundMs;
    for (const [gid, kept] of this.#kept) {
      if (kept.since > stale) continue;
      this.#kept.delete(gid);
      release(kept.session);
    }
    if (this.#kept.size === 0) {
      clearInterval(this.#sweep);
      this.#sweep = undefined;
    }
  }
}

/** Statements that only read unless they call a function that writes (the read-only check catches that). */
export function looksReadOnly(sql: string): boolean {
  return /^\s*(SELECT|VALUES|TABLE|SHOW|EXPLAIN)\b/i.test(sql) && !/\b(INSERT|UPDATE|DELETE|MERGE)\b/i.test(sql);
}

/** Returns the session's connection to the pool (closing it after an error, or when it must not be reused). */
export function release(session: BranchSession, err?: unknown): void {
  session.client.off('error', session.onError);
  const destroy = err !== undefined || session.mustNotBeReused;
  session.client.release(destroy ? (err instanceof Error ? err : true) : undefined);
}

/** Calls that leave state on the session beyond its transaction. */
export const LEAKS_SESSION_STATE = /\b(set_config|pg_advisory_lock|pg_advisory_lock_shared|pg_try_advisory_lock|pg_try_advisory_lock_shared|dblink_connect|lo_open)\b/i;

/** Rows answered per operation; more are dropped from the answer (the statement still ran). */
export const MAX_ROWS_RETURNED = 10_000;

export function resultsOf(answers: readonly StatementResult[]): { rows: unknown[]; rowCount: number | null; truncated?: boolean }[] {
  return answers.map((a) => ({ rows: a.rows, rowCount: a.rowCount, ...(a.truncated ? { truncated: true } : {}) }));
}
