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
 *   one-phase  a lone branch: COMMIT of its open session (postgres-one-phase.ts);
 *            its transaction id rides along with the work so that a lost
 *            answer can be resolved with txid_status
 *   recovery pg_prepared_xacts of this database, filtered by gid prefix
 *
 * Two pools: one for branch sessions, one small pool for phase-2 retries and
 * recovery commands, so that open branches can never starve commit delivery.
 * Every session runs with statement_timeout and idle_in_transaction_session_timeout.
 */

import pg from 'pg';
import { DatabaseError } from 'pg-protocol';
import type { Logger } from 'pino';
import { CoordinatorError, errorMessage } from '../errors.js';
import { isSafeGid } from './gid.js';
import type { BranchRef, EnlistOptions, EnlistResult, OnePhaseEvidence, OnePhaseResult, OnePhaseUnknown, ParticipantAdapter, PrepareOptions, PrepareResult } from './participant.js';
import { commitSession, EVIDENCE_QUERY, evidenceOf, evidenceReadable, evidenceUnreadableWarning, lostCommitOutcome } from './postgres-one-phase.js';
import { controlFailure as failure, stopBackend } from './postgres-control.js';
import { PipelineError, runPipeline, runSimple, type PipelineStatement, type StatementResult } from './pg-pipeline.js';
import { parseSqlOperations, type SqlOperation } from './sql-operations.js';
import { WitnessSession } from './postgres-witness.js';
import {
  checkoutSession,
  KeptSessions,
  LEAKS_SESSION_STATE,
  looksReadOnly,
  MAX_ROWS_RETURNED,
  release,
  resultsOf,
  type BranchSession,
} from './postgres-session.js';

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

/** How long a prepared branch's session waits for its phase 2 before it goes back to the pool. */
const KEEP_FOR_PHASE2_MS = 5_000;

export class PostgresParticipant implements ParticipantAdapter {
  readonly kind = 'postgres' as const;
  readonly work = 'operations' as const;
  readonly oneBranchPerStore = true;
  readonly listsPreparedBranches = true;
  readonly name: string;
  readonly #sessions: pg.Pool;
  readonly #control: pg.Pool;
  readonly #open = new Map<string, BranchSession>();
  /** Branches whose session was lost on our side while the server may still run their work: the backend, and when. */
  readonly #unsettled = new Map<string, { pid: number; since: Date }>();
  readonly #statementTimeoutMs: number;
  readonly #maxSessions: number;
  /** Prepares in flight, by gid. */
  readonly #preparing = new Map<string, Promise<PrepareResult>>();
  /** Prepared branches whose session is kept for their phase 2. */
  readonly #kept = new KeptSessions(KEEP_FOR_PHASE2_MS);
  readonly #log: Logger;
  /** Whether one-phase commit's evidence can be read here (onePhaseUsable); undefined until the server said. */
  #onePhaseUsable: boolean | undefined;
  #onePhaseCheck: Promise<boolean> | undefined;
  /** Outlives one-phase COMMITs: the witness that the server did not crash since (postgres-witness.ts). */
  readonly #witness: WitnessSession;

  constructor(options: PostgresParticipantOptions) {
    this.name = options.name;
    this.#log = options.logger.child({ participant: options.name });
    this.#statementTimeoutMs = options.statementTimeoutMs;
    this.#maxSessions = options.maxSessions;
    const base: pg.PoolConfig = {
      connectionString: options.connectionString,
      connectionTimeoutMillis: options.connectTimeoutMs,
      query_timeout: options.statementTimeoutMs + 5_000,
      options: `-c statement_timeout=${options.statementTimeoutMs} -c idle_in_transaction_session_timeout=${options.idleInTransactionTimeoutMs}`,
      idleTimeoutMillis: 30_000,
      application_name: 'tx-coordinator',
    };
    this.#sessions = new pg.Pool({ ...base, max: options.maxSessions });
    this.#witness = new WitnessSession(
      { connectionString: base.connectionString, connectionTimeoutMillis: base.connectionTimeoutMillis, options: base.options, application_name: 'tx-coordinator witness' },
      this.#log,
    );
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
      throw failure(this.name, 'SHOW max_prepared_transactions', err);
    }
    if (Number(value) <= 0) {
      throw new CoordinatorError(
        'PARTICIPANT_MISCONFIGURED',
        `postgres participant ${this.name} has max_prepared_transactions = ${value}: PREPARE TRANSACTION would fail. ` +
          'Set max_prepared_transactions (for example to max_connections) in postgresql.conf and restart the server.',
        { details: { setting: 'max_prepared_transactions', value } },
      );
    }
    if (await this.#checkOnePhase()) this.#witness.hold();
  }

  validateWork(work: unknown): void {
    parseSqlOperations(work);
  }

  onePhaseUsable(): boolean | Promise<boolean> {
    return this.#onePhaseUsable ?? this.#checkOnePhase();
  }

  warnings(): string[] {
    return this.#onePhaseUsable === false ? [evidenceUnreadableWarning(this.name)] : [];
  }

  /** Asks the server once whether the evidence can be read; while it cannot answer, no (ask again next time). */
  #checkOnePhase(): Promise<boolean> {
    this.#onePhaseCheck ??= evidenceReadable(this.#control)
      .then((readable) => {
        if (readable === undefined) return false;
        if (!readable) this.#log.warn(evidenceUnreadableWarning(this.name));
        this.#onePhaseUsable = readable;
        return readable;
      })
      .finally(() => {
        this.#onePhaseCheck = undefined;
      });
    return this.#onePhaseCheck;
  }

  async enlist(branch: BranchRef, work: unknown, signal?: AbortSignal, options: EnlistOptions = {}): Promise<EnlistResult> {
    assertSafeGid(branch.gid);
    const operations = parseSqlOperations(work);
    const existing = this.#open.get(branch.gid);
    if (existing?.failure !== undefined) {
      throw new CoordinatorError('OPERATION_FAILED', `branch ${branch.branchId} can no longer run work: ${existing.failure}`);
    }
    if (existing?.busy !== undefined) throw new CoordinatorError('INVALID_STATE_TRANSITION', `branch ${branch.branchId} is still running work`);
    const session = existing ?? (await checkoutSession(this.#sessions, this.#maxSessions, this.name));
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
    const running = this.#runWork(branch, session, operations, begins, options.prepareAfter === true && session.mayWrite, options.onePhaseFollows === true);
    session.busy = running;
    try {
      return await running;
    } finally {
      session.busy = undefined;
      signal?.removeEventListener('abort', cancel);
    }
  }

  /** The work (after BEGIN on a new session, and followed by PREPARE when asked) in one round trip. */
  async #runWork(
    branch: BranchRef,
    session: BranchSession,
    operations: readonly SqlOperation[],
    begins: boolean,
    prepares: boolean,
    readsXid: boolean,
  ): Promise<EnlistResult> {
    const statements: PipelineStatement[] = [
      ...(begins ? [{ text: 'BEGIN' }] : []),
      ...operations.map((op) => ({ text: op.sql, values: op.params, rows: true })),
      ...(prepares ? [{ text: `PREPARE TRANSACTION '${branch.gid}'` }] : []),
      ...(readsXid && !prepares ? [{ text: EVIDENCE_QUERY, rows: true }] : []),
    ];
    session.evidence = undefined; // read again after this work
    const first = begins ? 1 : 0;
    let answers: StatementResult[];
    try {
      // The server bounds each statement by statement_timeout; the exchange as a whole gets room for all of them.
      const readTimeoutMs = statements.length * this.#statementTimeoutMs + 5_000;
      answers = await runPipeline(session.client, statements, { maxRows: MAX_ROWS_RETURNED, readTimeoutMs });
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
        // BEGIN failed, or the exchange did on our side (a read timeout, a lost connection). In
        // the second case the server may still be running what it read, PREPARE included: the
        // branch's abort first stops that backend, then rolls back whatever it prepared.
        if (index < 0) this.#unsettled.set(branch.gid, { pid: session.backendPid, since: new Date() });
        this.#open.delete(branch.gid);
        release(session, err);
        throw new CoordinatorError('PARTICIPANT_UNREACHABLE', `lost the session on ${this.name}: ${errorMessage(err)}`, { cause: err });
      }
      const operation = index - first;
      if (operation >= operations.length && !prepares) {
        // The work ran; reading the transaction id after it did not.
        throw new CoordinatorError('OPERATION_FAILED', `reading the transaction id on ${this.name} failed: ${errorMessage(err)}`, { cause: err });
      }
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
    if (readsXid && !prepares) session.evidence = evidenceOf(answers.at(-1)?.rows);
    if (!prepares) return { results };
    this.#open.delete(branch.gid);
    const tag = answers.at(-1)?.command;
    if (tag !== 'PREPARE') {
      // Not prepared after all (PREPARE in a transaction the server had already ended answers ROLLBACK).
      release(session);
      return { results, vote: { vote: 'no', reason: `prepare on ${this.name} answered ${tag ?? 'nothing'}` } };
    }
    this.#kept.keep(branch.gid, session);
    return { results, vote: { vote: 'yes' } };
  }

  async prepare(branch: BranchRef, options: PrepareOptions = {}): Promise<PrepareResult> {
    assertSafeGid(branch.gid);
    const session = this.#open.get(branch.gid);
    if (session === undefined) return this.#preparedAlready(branch);
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
      // A PREPARE the server refused rolled the transaction back. One whose answer was lost on
      // our side may still run on the server: the abort that follows the no vote stops it first.
      if (!(err instanceof DatabaseError)) this.#unsettled.set(branch.gid, { pid: session.backendPid, since: new Date() });
      release(session, err);
      return { vote: 'no', reason: `prepare failed on ${this.name}: ${errorMessage(err)}` };
    }
    if (options.decisionFollows === true) this.#kept.keep(branch.gid, session);
    else release(session);
    return { vote: 'yes' };
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

  async commitOnePhase(branch: BranchRef, stopWaiting?: AbortSignal): Promise<OnePhaseResult | OnePhaseUnknown> {
    assertSafeGid(branch.gid);
    this.#witness.hold(); // for later COMMITs: one opened now starts after this one's evidence
    const session = this.#open.get(branch.gid);
    if (session === undefined) return { outcome: 'abort', reason: `no open session for branch ${branch.branchId} on ${this.name}` };
    // Off the open list before anything is awaited: an abort arriving now finds nothing to roll back.
    this.#open.delete(branch.gid);
    await session.busy?.catch(() => undefined);
    return commitSession(session, this.name, stopWaiting);
  }

  async onePhaseOutcome(_branch: BranchRef, evidence: OnePhaseEvidence): Promise<OnePhaseResult> {
    return lostCommitOutcome(evidence, this.#control, this.name);
  }

  async abort(branch: BranchRef): Promise<void> {
    assertSafeGid(branch.gid);
    // Work or a prepare still running on the branch's session (a cancelled statement, say)
    // finishes first: it may end prepared, and only then is it clear which rollback it needs.
    await this.#open.get(branch.gid)?.busy?.catch(() => undefined);
    await this.#preparing.get(branch.gid)?.catch(() => undefined);
    const unsettled = this.#unsettled.get(branch.gid);
    if (unsettled !== undefined) {
      await stopBackend(this.#control, unsettled.pid, unsettled.since, this.name);
      this.#unsettled.delete(branch.gid);
    }
    const session = this.#open.get(branch.gid);
    if (session !== undefined) {
      this.#open.delete(branch.gid);
      await this.#endSession(session, 'ROLLBACK');
      return;
    }
    await this.#resolvePrepared(branch.gid, `ROLLBACK PREPARED '${branch.gid}'`);
  }

  async #resolvePrepared(gid: string, statement: string): Promise<void> {
    const kept = this.#kept.take(gid);
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

  /**
   * A prepare with no open session: one under way or done already answers as it did (prepare is
   * idempotent: a repeat after a lost answer must not turn a prepared branch into a "no");
   * anything else has nothing to prepare.
   */
  async #preparedAlready(branch: BranchRef): Promise<PrepareResult> {
    const preparing = this.#preparing.get(branch.gid);
    if (preparing !== undefined) return preparing;
    let prepared: boolean;
    try {
      const res = await this.#control.query('SELECT 1 FROM pg_prepared_xacts WHERE database = current_database() AND gid = $1', [branch.gid]);
      prepared = (res.rowCount ?? 0) > 0;
    } catch (err) {
      return { vote: 'no', reason: `no open session for branch ${branch.branchId}, and whether it is prepared could not be read: ${errorMessage(err)}` };
    }
    return prepared ? { vote: 'yes' } : { vote: 'no', reason: `no open session for branch ${branch.branchId}` };
  }

  async findPrepared(gidPrefix: string): Promise<string[]> {
    try {
      const res = await this.#control.query<{ gid: string }>(
        'SELECT gid FROM pg_prepared_xacts WHERE database = current_database() AND starts_with(gid, $1) ORDER BY prepared',
        [gidPrefix],
      );
      return res.rows.map((r) => r.gid);
    } catch (err) {
      throw failure(this.name, 'listing prepared transactions', err);
    }
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
    this.#kept.releaseAll();
    await Promise.allSettled([this.#sessions.end(), this.#control.end(), this.#witness.close()]);
  }
}

function assertSafeGid(gid: string): void {
  if (!isSafeGid(gid)) throw new CoordinatorError('INTERNAL', `refusing to use malformed gid ${JSON.stringify(gid)}`);
}
