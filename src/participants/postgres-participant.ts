/**
 * PostgreSQL participant. A branch is one database session:
 *
 *   enlist   BEGIN on a dedicated session, then the branch's statements
 *   prepare  PREPARE TRANSACTION 'gid' — the durable yes; the session is then
 *            free. A branch that wrote nothing votes read-only and ends
 *            locally. A failed statement or PREPARE is a no.
 *   commit   COMMIT PREPARED 'gid' on any session (42704, "does not exist",
 *            means it was already committed: the caller only commits after a
 *            logged commit decision)
 *   abort    ROLLBACK of the open session, or ROLLBACK PREPARED 'gid'
 *   recovery pg_prepared_xacts of this database, filtered by gid prefix
 *
 * Two pools: one for branch sessions, one small pool for phase-2 and recovery
 * commands, so that open branches can never starve commit delivery. Every
 * session runs with statement_timeout and idle_in_transaction_session_timeout.
 */

import pg from 'pg';
import type { Logger } from 'pino';
import { CoordinatorError, errorMessage } from '../errors.js';
import { isSafeGid } from '../coordinator/gid.js';
import type { BranchRef, EnlistResult, ParticipantAdapter, PrepareResult } from './participant.js';
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

/** Backend pid of each pooled connection (to cancel its statements), asked once per connection. */
const backendPids = new WeakMap<pg.PoolClient, number>();

async function queryBackendPid(client: pg.PoolClient): Promise<number> {
  const res = await client.query<{ pid: number }>('SELECT pg_backend_pid() AS pid');
  const pid = res.rows[0]?.pid ?? 0;
  backendPids.set(client, pid);
  return pid;
}

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
}

export class PostgresParticipant implements ParticipantAdapter {
  readonly kind = 'postgres' as const;
  readonly name: string;
  readonly #sessions: pg.Pool;
  readonly #control: pg.Pool;
  readonly #open = new Map<string, BranchSession>();
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

  async enlist(branch: BranchRef, work: unknown, signal?: AbortSignal): Promise<EnlistResult> {
    const operations = parseSqlOperations(work);
    let session = this.#open.get(branch.gid);
    if (session === undefined) session = await this.#openSession(branch);
    if (session.failure !== undefined) {
      throw new CoordinatorError('OPERATION_FAILED', `branch ${branch.branchId} can no longer run work: ${session.failure}`);
    }
    const current = session;
    if (operations.some((op) => !looksReadOnly(op.sql))) current.mayWrite = true;
    if (operations.some((op) => LEAKS_SESSION_STATE.test(op.sql))) current.mustNotBeReused = true;
    // A transaction that times out (or is aborted) while a statement waits — on a lock held by
    // another transaction, say — cancels the statement instead of waiting for statement_timeout.
    const cancel = (): void => {
      current.mustNotBeReused = true;
      this.#control.query('SELECT pg_cancel_backend($1)', [current.backendPid]).catch((err: unknown) => {
        this.#log.warn({ err: errorMessage(err), gid: branch.gid }, 'could not cancel a running statement');
      });
    };
    signal?.addEventListener('abort', cancel, { once: true });
    const results: { rows: unknown[]; rowCount: number | null; truncated?: boolean }[] = [];
    try {
      for (const [index, op] of operations.entries()) {
        if (signal?.aborted === true) throw new Error(`cancelled: ${errorMessage(signal.reason)}`);
        try {
          const res = await runOperation(current.client, op);
          // Answers are bounded: a SELECT of a whole table must not exhaust the coordinator.
          const truncated = res.rows.length > MAX_ROWS_RETURNED;
          results.push({
            rows: truncated ? res.rows.slice(0, MAX_ROWS_RETURNED) : res.rows,
            rowCount: res.rowCount,
            ...(truncated ? { truncated: true } : {}),
          });
        } catch (err) {
          current.failure = errorMessage(err);
        const sqlState = (err as { code?: unknown }).code;
          throw new CoordinatorError('OPERATION_FAILED', `operation ${index} failed on ${this.name}: ${errorMessage(err)}`, {
            cause: err,
            details: { participant: this.name, operation: index, ...(typeof sqlState === 'string' ? { sqlState } : {}) },
          });
        }
      }
    } finally {
      signal?.removeEventListener('abort', cancel);
    }
    return { results };
  }

  async #openSession(branch: BranchRef): Promise<BranchSession> {
    let client: pg.PoolClient;
    try {
      client = await this.#sessions.connect();
    } catch (err) {
      throw new CoordinatorError('PARTICIPANT_UNREACHABLE', `cannot open a session on ${this.name}: ${errorMessage(err)}`, {
        cause: err,
      });
    }
    // Listen for a dropped connection from the first moment: unheard, 'error' ends the process.
    const early = { failure: undefined as string | undefined };
    const onError = (err: Error): void => {
      early.failure = `connection lost: ${errorMessage(err)}`;
    };
    client.on('error', onError);
    let backendPid: number;
    try {
      backendPid = backendPids.get(client) ?? (await queryBackendPid(client));
      await client.query('BEGIN');
    } catch (err) {
      client.off('error', onError);
      client.release(err instanceof Error ? err : true);
      throw new CoordinatorError('PARTICIPANT_UNREACHABLE', `cannot begin on ${this.name}: ${errorMessage(err)}`, { cause: err });
    }
    const session: BranchSession = {
      client,
      backendPid,
      get failure() {
        return early.failure;
      },
      set failure(value: string | undefined) {
        early.failure = value;
      },
      mayWrite: false,
      mustNotBeReused: false,
      onError,
    };
    this.#open.set(branch.gid, session);
    return session;
  }

  async prepare(branch: BranchRef): Promise<PrepareResult> {
    assertSafeGid(branch.gid);
    const session = this.#open.get(branch.gid);
    if (session === undefined) return { vote: 'no', reason: `no open session for branch ${branch.branchId}` };
    this.#open.delete(branch.gid);
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
      release(session);
      return { vote: 'yes' };
    } catch (err) {
      // A failed PREPARE rolls the transaction back; a broken connection may or may not have
      // prepared it — the abort that follows a no vote resolves either case.
      release(session, err);
      return { vote: 'no', reason: `prepare failed on ${this.name}: ${errorMessage(err)}` };
    }
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
    await this.#resolvePrepared(`COMMIT PREPARED '${branch.gid}'`);
  }

  async abort(branch: BranchRef): Promise<void> {
    assertSafeGid(branch.gid);
    const session = this.#open.get(branch.gid);
    if (session !== undefined) {
      this.#open.delete(branch.gid);
      await this.#endSession(session, 'ROLLBACK');
      return;
    }
    await this.#resolvePrepared(`ROLLBACK PREPARED '${branch.gid}'`);
  }

  async #resolvePrepared(statement: string): Promise<void> {
    try {
      await this.#control.query(statement);
    } catch (err) {
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
      await this.#endSession(session, 'ROLLBACK');
    }
    await Promise.allSettled([this.#sessions.end(), this.#control.end()]);
  }
}

function runOperation(client: pg.PoolClient, op: SqlOperation): Promise<pg.QueryResult> {
  // Extended protocol always: one statement per operation, parameters never spliced into text.
  return client.query({ text: op.sql, values: [...op.params], queryMode: 'extended' } as pg.QueryConfig);
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

function assertSafeGid(gid: string): void {
  if (!isSafeGid(gid)) throw new CoordinatorError('INTERNAL', `refusing to use malformed gid ${JSON.stringify(gid)}`);
}
