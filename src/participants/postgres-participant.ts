/**
 * PostgreSQL participant. A branch is one database session:
 *
 *   enlist   BEGIN on a dedicated session and the branch's statements, in one
 *            round trip (pg-pipeline.ts); asked to (`prepareAfter`) and when
 *            the work may write, PREPARE TRANSACTION 'gid' rides along too,
 *            and runs only if every statement before it succeeded
 *   prepare  PREPARE TRANSACTION 'gid' — the durable yes. A branch that wrote
 *            nothing votes read-only and ends locally. A failed statement or
 *            PREPARE is a no.
 *   commit   COMMIT PREPARED 'gid' — on the branch's own session when it was
 *            kept for phase 2 (the decision follows the votes at once), else on
 *            any control session (42704, "does not exist", means it was already
 *            committed: the caller only commits after a logged commit decision)
 *   abort    ROLLBACK of the open session, or ROLLBACK PREPARED 'gid'
 *   recovery pg_prepared_xacts of this database, filtered by gid prefix
 *
 * Two pools: one for branch sessions, one small pool for phase-2 retries and
 * recovery commands, so that open branches can never starve commit delivery.
 * Every session runs with statement_timeout and idle_in_transaction_session_timeout.
 */

import pg from 'pg';
import type { Logger } from 'pino';
import { CoordinatorError, errorMessage } from '../errors.js';
import { isSafeGid } from '../coordinator/gid.js';
import type { BranchRef, EnlistOptions, EnlistResult, ParticipantAdapter, PrepareOptions, PrepareResult } from './participant.js';
import { PipelineError, runPipeline, runSimple, type PipelineStatement, type StatementResult } from './pg-pipeline.js';
import { parseSqlOperations, type SqlOperation } from './sql-operations.js';

export interface PostgresParticipantOptions {
  readonly name: string;
  readonly connectionString: string;
  readonly maxSessions: number;
  readonly connectTimeoutMs: number;
  readonly statementTimeoutMs: number;
  readonly idleInTransactionTimeoutMs: number;
  readonly logger: Logger;
}

const UNDEFINED_OBJECT = '42704';

interface BranchSession {
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
}

export class PostgresParticipant implements ParticipantAdapter {
  readonly kind = 'postgres' as const;
  readonly work = 'operations' as const;
  readonly listsPreparedBranches = true;
  readonly name: string;
  readonly #sessions: pg.Pool;
  readonly #control: pg.Pool;
  readonly #open = new Map<string, BranchSession>();
  /** Prepares in flight, by gid. */
  readonly #preparing = new Map<string, Promise<PrepareResult>>();
  /** Prepared branches whose session is kept for their phase 2. */
  readonly #kept = new Map<string, { session: BranchSession; since: number }>();
  #keptSweep: NodeJS.Timeout | undefined;
  readonly #log: Logger;

  constructor(options: PostgresParticipantOptions) {
    this.name = options.name;
    this.#log = options.logger.child({ participant: options.name });
    const base: pg.PoolConfig = {
      connectionString: options.connectionString,
      connectionTimeoutMillis: options.connectTimeoutMs,
      query_timeout: options.statementTimeoutMs + 5_000,
      options: `-c statement_timeout=${options.statementTimeoutMs} -c idle_in_transaction_session_timeout=${options.idleInTransactionTimeoutMs}`,
      idleTimeoutMillis: 30_000,
      application_name: 'tx-coordinator',
    };
    this.#sessions = new pg.Pool({ ...base, max: options.maxSessions });
    this.#control = new pg.Pool({ ...base, max: 4 });
    // An idle client that loses its connection emits 'error' on the pool; unhandled, it would end the process.
    for (const pool of [this.#sessions, this.#control]) {
      pool.on('error', (err) => this.#log.warn({ err: errorMessage(err) }, 'idle postgres connection failed'));
    }
  }

  async verify(): Promise<void> {
    let value: string;
    try {
      const res = await this.#control.query<{ max_prepared_transactions: string }>('SHOW max_prepared_transactions');
      value = res.rows[0]?.max_prepared_transactions ?? '0';
    } catch (err) {
      throw new CoordinatorError('PARTICIPANT_UNREACHABLE', `cannot reach postgres participant ${this.name}: ${errorMessage(err)}`, {
        cause: err,
      });
    }
    if (Number(value) <= 0) {
      throw new CoordinatorError(
        'PARTICIPANT_MISCONFIGURED',
        `postgres participant ${this.name} has max_prepared_transactions = ${value}: PREPARE TRANSACTION would fail. ` +
          'Set max_prepared_transactions (for example to max_connections) in postgresql.conf and restart the server.',
        { details: { setting: 'max_prepared_transactions', value } },
      );
    }
  }

  validateWork(work: unknown): void {
    parseSqlOperations(work);
  }

  async enlist(branch: BranchRef, work: unknown, signal?: AbortSignal, options: EnlistOptions = {}): Promise<EnlistResult> {
    assertSafeGid(branch.gid);
    const operations = parseSqlOperations(work);
    const existing = this.#open.get(branch.gid);
    if (existing?.failure !== undefined) {
      throw new CoordinatorError('OPERATION_FAILED', `branch ${branch.branchId} can no longer run work: ${existing.failure}`);
    }
    if (existing?.busy !== undefined) throw new CoordinatorError('INVALID_STATE_TRANSITION', `branch ${branch.branchId} is still running work`);
    const session = existing ?? (await this.#checkout());
    const begins = existing === undefined;
    if (begins) this.#open.set(branch.gid, session);
    if (operations.some((op) => !looksReadOnly(op.sql))) session.mayWrite = true;
    if (operations.some((op) => LEAKS_SESSION_STATE.test(op.sql))) session.mustNotBeReused = true;
    if (signal?.aborted === true) {
      session.failure = `cancelled: ${errorMessage(signal.reason)}`;
      throw new CoordinatorError('OPERATION_FAILED', session.failure);
    }
    // A transaction that times out (or is aborted) while a statement waits — on a lock held by
    // another transaction, say — cancels the statement instead of waiting for statement_timeout.
    const cancel = (): void => {
      session.mustNotBeReused = true;
      this.#control.query('SELECT pg_cancel_backend($1)', [session.backendPid]).catch((err: unknown) => {
        this.#log.warn({ err: errorMessage(err), gid: branch.gid }, 'could not cancel a running statement');
      });
    };
    signal?.addEventListener('abort', cancel, { once: true });
    // A read-only-looking branch keeps its separate prepare: it may end with a plain COMMIT.
    const running = this.#runWork(branch, session, operations, begins, options.prepareAfter === true && session.mayWrite);
    session.busy = running;
    try {
      return await running;
    } finally {
      session.busy = undefined;
      signal?.removeEventListener('abort', cancel);
    }
  }

  /** The work (after BEGIN on a new session, and followed by PREPARE when asked) in one round trip. */
  async #runWork(branch: BranchRef, session: BranchSession, operations: readonly SqlOperation[], begins: boolean, prepares: boolean): Promise<EnlistResult> {
    const statements: PipelineStatement[] = [
      ...(begins ? [{ text: 'BEGIN' }] : []),
      ...operations.map((op) => ({ text: op.sql, values: op.params, rows: true })),
      ...(prepares ? [{ text: `PREPARE TRANSACTION '${branch.gid}'` }] : []),
    ];
    const first = begins ? 1 : 0;
    let answers: StatementResult[];
    try {
      answers = await runPipeline(session.client, statements, MAX_ROWS_RETURNED);
    } catch (err) {
      const index = err instanceof PipelineError ? err.statementIndex : -1;
      if (err instanceof PipelineError && !err.sent) {
        // Nothing reached the server (a parameter that cannot be encoded): a failed operation.
        if (begins) {
          this.#open.delete(branch.gid);
          release(session);
        } else {
          session.failure ??= errorMessage(err);
        }
        throw new CoordinatorError('OPERATION_FAILED', `cannot send the operations to ${this.name}: ${errorMessage(err)}`, { cause: err });
      }
      session.failure ??= errorMessage(err);
      if (index < first) {
        // BEGIN failed, or the connection did: the session holds none of this branch's work
        // (a disconnected server rolls back what it had). An abort still rolls back a PREPARE
        // that may have run before the answer was lost.
        this.#open.delete(branch.gid);
        release(session, err);
        throw new CoordinatorError('PARTICIPANT_UNREACHABLE', `lost the session on ${this.name}: ${errorMessage(err)}`, { cause: err });
      }
      const operation = index - first;
      if (operation >= operations.length) {
        // The work ran and PREPARE failed (a failed PREPARE rolls the transaction back): a no vote.
        this.#open.delete(branch.gid);
        release(session, err);
        const ran = err instanceof PipelineError ? err.results.slice(first) : [];
        return { results: resultsOf(ran), vote: { vote: 'no', reason: `prepare failed on ${this.name}: ${errorMessage(err)}` } };
      }
      const sqlState = err instanceof PipelineError ? err.code : undefined;
      throw new CoordinatorError('OPERATION_FAILED', `operation ${operation} failed on ${this.name}: ${errorMessage(err)}`, {
        cause: err,
        details: { participant: this.name, operation, ...(sqlState === undefined ? {} : { sqlState }) },
      });
    }
    const results = resultsOf(answers.slice(first, first + operations.length));
    if (!prepares) return { results };
    this.#open.delete(branch.gid);
    const tag = answers.at(-1)?.command;
    if (tag !== 'PREPARE') {
      // Not prepared after all (PREPARE in a transaction the server had already ended answers ROLLBACK).
      release(session);
      return { results, vote: { vote: 'no', reason: `prepare on ${this.name} answered ${tag ?? 'nothing'}` } };
    }
    this.#keepForPhase2(branch.gid, session);
    return { results, vote: { vote: 'yes' } };
  }

  /** A pooled session, listening for a dropped connection from the first moment (unheard, 'error' ends the process). */
  async #checkout(): Promise<BranchSession> {
    let client: pg.PoolClient;
    try {
      client = await this.#sessions.connect();
    } catch (err) {
      throw new CoordinatorError('PARTICIPANT_UNREACHABLE', `cannot open a session on ${this.name}: ${errorMessage(err)}`, {
        cause: err,
      });
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

  async prepare(branch: BranchRef, options: PrepareOptions = {}): Promise<PrepareResult> {
    assertSafeGid(branch.gid);
    const session = this.#open.get(branch.gid);
    if (session === undefined) return { vote: 'no', reason: `no open session for branch ${branch.branchId}` };
    if (session.busy !== undefined) return { vote: 'no', reason: `branch ${branch.branchId} is still running work` };
    this.#open.delete(branch.gid);
    // Until it has answered, an abort of this branch waits: it could not tell which rollback it needs.
    const preparing = this.#prepareSession(branch, session, options);
    this.#preparing.set(branch.gid, preparing);
    try {
      return await preparing;
    } finally {
      if (this.#preparing.get(branch.gid) === preparing) this.#preparing.delete(branch.gid);
    }
  }

  async #prepareSession(branch: BranchRef, session: BranchSession, options: PrepareOptions): Promise<PrepareResult> {
    if (session.failure !== undefined) {
      await this.#endSession(session, 'ROLLBACK');
      return { vote: 'no', reason: session.failure };
    }
    try {
      // A branch of plain queries may still have written (a function with side effects):
      // ask the server whether it holds a transaction id. A branch that wrote skips the check.
      if (!session.mayWrite) {
        const res = await session.client.query<{ read_only: boolean }>('SELECT pg_current_xact_id_if_assigned() IS NULL AS read_only');
        if (res.rows[0]?.read_only === true) {
          await this.#endSession(session, 'COMMIT');
          return { vote: 'read-only' };
        }
      }
      await session.client.query(`PREPARE TRANSACTION '${branch.gid}'`);
    } catch (err) {
      // A failed PREPARE rolls the transaction back; a broken connection may or may not have
      // prepared it — the abort that follows a no vote resolves either case.
      release(session, err);
      return { vote: 'no', reason: `prepare failed on ${this.name}: ${errorMessage(err)}` };
    }
    if (options.decisionFollows === true) this.#keepForPhase2(branch.gid, session);
    else release(session);
    return { vote: 'yes' };
  }

  /**
   * Keeps a prepared branch's session for its phase 2, which follows at once: no pool
   * round trip, and commit delivery never waits for a free control session. A kept
   * session that is not used within the bound goes back to the pool (one sweep for all).
   */
  #keepForPhase2(gid: string, session: BranchSession): void {
    this.#kept.set(gid, { session, since: Date.now() });
    this.#keptSweep ??= setInterval(() => this.#releaseStaleKept(), KEEP_FOR_PHASE2_MS).unref();
  }

  #releaseStaleKept(): void {
    const stale = Date.now() - KEEP_FOR_PHASE2_MS;
    for (const [gid, kept] of this.#kept) {
      if (kept.since > stale) continue;
      this.#kept.delete(gid);
      release(kept.session);
    }
    if (this.#kept.size === 0) {
      clearInterval(this.#keptSweep);
      this.#keptSweep = undefined;
    }
  }

  #takeKept(gid: string): BranchSession | undefined {
    const kept = this.#kept.get(gid);
    if (kept === undefined) return undefined;
    this.#kept.delete(gid);
    return kept.session;
  }

  async #endSession(session: BranchSession, statement: 'COMMIT' | 'ROLLBACK'): Promise<void> {
    try {
      await session.client.query(statement);
      release(session);
    } catch (err) {
      release(session, err);
    }
  }

  async commit(branch: BranchRef): Promise<void> {
    assertSafeGid(branch.gid);
    await this.#resolvePrepared(branch.gid, `COMMIT PREPARED '${branch.gid}'`);
  }

  async abort(branch: BranchRef): Promise<void> {
    assertSafeGid(branch.gid);
    // Work or a prepare still running on the branch's session (a cancelled statement, say)
    // finishes first: it may end prepared, and only then is it clear which rollback it needs.
    await this.#open.get(branch.gid)?.busy?.catch(() => undefined);
    await this.#preparing.get(branch.gid)?.catch(() => undefined);
    const session = this.#open.get(branch.gid);
    if (session !== undefined) {
      this.#open.delete(branch.gid);
      await this.#endSession(session, 'ROLLBACK');
      return;
    }
    await this.#resolvePrepared(branch.gid, `ROLLBACK PREPARED '${branch.gid}'`);
  }

  async #resolvePrepared(gid: string, statement: string): Promise<void> {
    const kept = this.#takeKept(gid);
    try {
      if (kept === undefined) await this.#control.query(statement);
      else await runSimple(kept.client, statement);
      if (kept !== undefined) release(kept);
    } catch (err) {
      if (kept !== undefined) release(kept, err);
      if ((err as { code?: unknown }).code === UNDEFINED_OBJECT) return; // already resolved
      throw err;
    }
  }

  async findPrepared(gidPrefix: string): Promise<string[]> {
    const res = await this.#control.query<{ gid: string }>(
      'SELECT gid FROM pg_prepared_xacts WHERE database = current_database() AND starts_with(gid, $1) ORDER BY prepared',
      [gidPrefix],
    );
    return res.rows.map((r) => r.gid);
  }

  openBranches(): number {
    return this.#open.size;
  }

  async close(): Promise<void> {
    for (const [gid, session] of this.#open) {
      this.#open.delete(gid);
      await session.busy?.catch(() => undefined);
      await this.#endSession(session, 'ROLLBACK');
    }
    for (const gid of [...this.#kept.keys()]) {
      const session = this.#takeKept(gid);
      if (session !== undefined) release(session);
    }
    clearInterval(this.#keptSweep);
    await Promise.allSettled([this.#sessions.end(), this.#control.end()]);
  }
}

/** Statements that only read unless they call a function that writes (the read-only check catches that). */
function looksReadOnly(sql: string): boolean {
  return /^\s*(SELECT|VALUES|TABLE|SHOW|EXPLAIN)\b/i.test(sql) && !/\b(INSERT|UPDATE|DELETE|MERGE)\b/i.test(sql);
}

/** Returns the session's connection to the pool (closing it after an error, or when it must not be reused). */
function release(session: BranchSession, err?: unknown): void {
  session.client.off('error', session.onError);
  const destroy = err !== undefined || session.mustNotBeReused;
  session.client.release(destroy ? (err instanceof Error ? err : true) : undefined);
}

/** Calls that leave state on the session beyond its transaction. */
const LEAKS_SESSION_STATE = /\b(set_config|pg_advisory_lock|pg_advisory_lock_shared|pg_try_advisory_lock|pg_try_advisory_lock_shared|dblink_connect|lo_open)\b/i;

/** Rows answered per operation; more are dropped from the answer (the statement still ran). */
const MAX_ROWS_RETURNED = 10_000;

/** How long a prepared branch's session waits for its phase 2 before it goes back to the pool. */
const KEEP_FOR_PHASE2_MS = 5_000;

function resultsOf(answers: readonly StatementResult[]): { rows: unknown[]; rowCount: number | null; truncated?: boolean }[] {
  return answers.map((a) => ({ rows: a.rows, rowCount: a.rowCount, ...(a.truncated ? { truncated: true } : {}) }));
}

function assertSafeGid(gid: string): void {
  if (!isSafeGid(gid)) throw new CoordinatorError('INTERNAL', `refusing to use malformed gid ${JSON.stringify(gid)}`);
}
