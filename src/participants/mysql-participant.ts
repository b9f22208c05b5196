/**
 * MySQL / MariaDB participant, on XA transactions. A branch is one connection:
 *
 *   enlist   XA START on a connection of its own, then the branch's statements as prepared
 *            statements (params bound by the server); asked to (`prepareAfter`), XA END and
 *            XA PREPARE follow at once
 *   prepare  XA END, XA PREPARE — the durable yes (InnoDB forces the prepare to its redo log).
 *            A statement that failed is a no: MySQL rolls back only the failed statement and
 *            would happily prepare (and commit) the rest
 *   commit   XA COMMIT — on the connection that holds the prepared transaction when it was
 *            kept for phase 2, else on any connection
 *   abort    XA END + XA ROLLBACK on the open branch's connection, or XA ROLLBACK of a prepared one
 *   recovery XA RECOVER: rows with our format id, decoded to gids (mysql-xid.ts), filtered by prefix
 *
 * What the server does that shapes this (measured on MariaDB 10.11; MySQL before 8.0.29 is
 * said to match, later MySQL detaches at XA PREPARE):
 *   - After XA PREPARE the connection still holds the transaction: it can run no statement on
 *     a table (XAER_RMFAIL) until XA COMMIT / XA ROLLBACK on it, or until it is closed, which
 *     detaches the transaction (it stays prepared, XA RECOVER lists it, any connection may
 *     resolve it). So a prepared branch's connection is either kept for its phase 2 or closed,
 *     never handed to other work.
 *   - XA COMMIT / XA ROLLBACK of an xid that another live connection holds answers XAER_NOTA,
 *     the same as for an unknown xid — also for a moment after we closed that connection. So
 *     NOTA counts as "already resolved" only once the connection we gave up is gone from the
 *     server (we KILL it and wait) and XA RECOVER does not list the xid.
 *   - A prepared transaction that wrote nothing is rolled back when its connection closes; its
 *     XA COMMIT then answers XA_RBROLLBACK: nothing to commit.
 *   - XA RECOVER, XA COMMIT and XA ROLLBACK need no privilege on MariaDB; MySQL 8 needs
 *     XA_RECOVER_ADMIN for XA RECOVER. Killing one's own connections needs none.
 *   - A statement leaves the XA transaction only through a stored routine (CALL is refused,
 *     mysql-operations.ts; a stored function may still run static XA statements, and DO turns
 *     its error into a warning). Each statement's last packet carries SERVER_STATUS_IN_TRANS:
 *     one without it fails the branch before a next statement could autocommit. XA END names
 *     the xid, so at prepare it fails unless the session is in the branch's own XA transaction.
 *
 * Connections, pools and the settling of given-up connections live in mysql-link.ts. Every
 * connection runs with a statement bound, a lock-wait bound and an idle-in-transaction bound
 * (mysql-connections.ts); every call has a client-side deadline.
 *
 * Once a branch's transaction has ended on its connection (committed, rolled back, or detached
 * at prepare), the connection goes back to the pool only through a reset that drops whatever the
 * branch left on the session (user variables, named locks, session variables a function set),
 * on every path — kept for phase 2 or not. It is closed instead when a KILL QUERY may still be
 * on its way to it (a cancelled branch), and when its work looked like it leaves such state
 * (GET_LOCK, a variable assignment: mysql-operations.ts) — reset first, so that its
 * named locks are free by the time the commit or abort answers.
 */

import type { Logger } from 'pino';
import { CoordinatorError, errorMessage } from '../errors.js';
import { isSafeGid } from './gid.js';
import type { BranchRef, EnlistOptions, EnlistResult, ParticipantAdapter, PrepareOptions, PrepareResult } from './participant.js';
import { isServerError, type Session } from './mysql-connections.js';
import { MySqlLink } from './mysql-link.js';
import { parseMySqlOperations, type MySqlOperation } from './mysql-operations.js';
import { ParamCountError, ResultTooLargeError, answerBudget, type OperationResult, type StatementAnswer } from './mysql-results.js';
import { inspectServer } from './mysql-server.js';
import { KeptConnections, type OpenBranch } from './mysql-session.js';
import { xidOf, xidSql, type Xid } from './mysql-xid.js';

/** SERVER_STATUS_IN_TRANS, in the status flags of an OK packet. */
const IN_TRANSACTION = 0x0001;

export interface MySqlParticipantOptions {
  readonly name: string;
  /** mysql://user:password@host:port/database */
  readonly connectionString: string;
  readonly maxSessions: number;
  readonly connectTimeoutMs: number;
  readonly statementTimeoutMs: number;
  /** innodb_lock_wait_timeout (rounded up to seconds); default statementTimeoutMs. */
  readonly lockWaitTimeoutMs?: number;
  readonly idleInTransactionTimeoutMs: number;
  readonly logger: Logger;
  /** Accept a server whose durability is not assured; verify() then records warnings instead of refusing. */
  readonly allowVolatile?: boolean;
}

/** How long a prepared branch's connection waits for its phase 2 before it is closed (the branch stays prepared). */
const KEEP_FOR_PHASE2_MS = 5_000;

export class MySqlParticipant implements ParticipantAdapter {
  readonly kind = 'mysql' as const;
  readonly work = 'operations' as const;
  readonly oneBranchPerStore = true;
  readonly listsPreparedBranches = true;
  readonly name: string;
  readonly #options: MySqlParticipantOptions;
  readonly #log: Logger;
  readonly #link: MySqlLink;
  readonly #open = new Map<string, OpenBranch>();
  /** Prepares in flight, by gid. */
  readonly #preparing = new Map<string, Promise<PrepareResult>>();
  readonly #kept: KeptConnections;
  #warnings: string[] = [];

  constructor(options: MySqlParticipantOptions) {
    this.name = options.name;
    this.#options = options;
    this.#log = options.logger.child({ participant: options.name });
    this.#link = new MySqlLink(options, this.#log);
    this.#kept = new KeptConnections(KEEP_FOR_PHASE2_MS, (gid, session) => this.#link.giveUp(gid, session));
  }

  /** Warnings of the last verify(): risks accepted with allowVolatile, and a binary log that is not synced. */
  warnings(): string[] {
    return [...this.#warnings];
  }

  async verify(): Promise<void> {
    let findings: Awaited<ReturnType<typeof inspectServer>>;
    try {
      findings = await this.#link.withControl(async (s) =>
        inspectServer(this.name, this.#link.target.user, await this.#link.server(s), (sql) => this.#link.rows(s, sql)),
      );
    } catch (err) {
      throw this.#link.failure('the registration checks', err);
    }
    const problems = findings.volatile;
    if (problems.length > 0 && this.#options.allowVolatile !== true) {
      throw new CoordinatorError('PARTICIPANT_MISCONFIGURED', `${problems.join(' ')} Register with allowVolatile: true to accept the risk.`, {
        details: { participant: this.name, problems },
      });
    }
    this.#warnings = [...problems, ...findings.warnings];
    for (const warning of this.#warnings) this.#log.warn(warning);
  }

  validateWork(work: unknown): void {
    parseMySqlOperations(work);
  }

  async enlist(branch: BranchRef, work: unknown, signal?: AbortSignal, options: EnlistOptions = {}): Promise<EnlistResult> {
    const xid = this.#xid(branch.gid);
    const operations = parseMySqlOperations(work);
    const existing = this.#open.get(branch.gid);
    if (existing?.failure !== undefined) {
      throw new CoordinatorError('OPERATION_FAILED', `branch ${branch.branchId} can no longer run work: ${existing.failure}`);
    }
    if (existing?.busy !== undefined) throw new CoordinatorError('INVALID_STATE_TRANSITION', `branch ${branch.branchId} is still running work`);
    let b = existing;
    if (b === undefined) {
      const session = await this.#checkout();
      b = { session, xid, started: false, statusShowsTransaction: false, ended: false, failure: undefined, cancelled: false, mustNotBeReused: false, busy: undefined };
      this.#open.set(branch.gid, b);
    }
    const open = b;
    if (operations.some((op) => op.leaksSessionState)) open.mustNotBeReused = true;
    if (signal?.aborted === true) {
      open.failure = `cancelled: ${errorMessage(signal.reason)}`;
      throw new CoordinatorError('OPERATION_FAILED', open.failure);
    }
    // A transaction that times out (or is aborted) while a statement waits — on a row lock, say —
    // cancels the statement instead of waiting for the statement bound.
    const cancel = (): void => {
      open.cancelled = true;
      open.failure ??= `cancelled: ${errorMessage(signal?.reason)}`;
      this.#link.cancelQuery(open.session, branch.gid);
    };
    signal?.addEventListener('abort', cancel, { once: true });
    const running = this.#runWork(branch, open, operations, options.prepareAfter === true);
    open.busy = running;
    try {
      return await running;
    } finally {
      open.busy = undefined;
      signal?.removeEventListener('abort', cancel);
    }
  }

  /** XA START on a new branch, the work, and XA END + XA PREPARE when asked. */
  async #runWork(branch: BranchRef, b: OpenBranch, operations: readonly MySqlOperation[], prepares: boolean): Promise<EnlistResult> {
    if (!b.started) {
      try {
        const started = (await this.#link.send(b.session, `XA START ${xidSql(b.xid)}`)) as { serverStatus?: unknown } | undefined;
        b.started = true;
        // A server that reports the open transaction in its status flags (MariaDB and MySQL do) has it checked after every statement.
        b.statusShowsTransaction = typeof started?.serverStatus === 'number' && (started.serverStatus & IN_TRANSACTION) !== 0;
      } catch (err) {
        this.#open.delete(branch.gid);
        if (isServerError(err)) {
          // Refused (XAER_DUPID: the xid exists already, prepared by an earlier attempt): nothing began here.
          this.#link.sessions.destroy(b.session);
          throw new CoordinatorError('OPERATION_FAILED', `XA START failed on ${this.name}: ${err.message}`, {
            cause: err,
            details: { participant: this.name, errno: err.errno, sqlState: err.sqlState },
          });
        }
        this.#link.giveUp(branch.gid, b.session);
        throw new CoordinatorError('PARTICIPANT_UNREACHABLE', `lost the connection to ${this.name}: ${errorMessage(err)}`, { cause: err });
      }
    }
    const results: OperationResult[] = [];
    const budget = answerBudget();
    for (const [operation, op] of operations.entries()) {
      if (b.failure !== undefined) throw new CoordinatorError('OPERATION_FAILED', b.failure, { details: { participant: this.name, operation } });
      let answer: StatementAnswer;
      try {
        answer = await this.#link.run(b.session, op.sql, op.params, budget);
      } catch (err) {
        throw this.#operationFailed(branch.gid, b, operation, err);
      }
      // Defence in depth: the statement left the transaction (see the module comment).
      if (b.statusShowsTransaction && answer.inTransaction === false) {
        b.failure = `operation ${operation} left the branch's XA transaction (the session is in no transaction any more): the branch can no longer commit`;
        throw new CoordinatorError('OPERATION_FAILED', `${b.failure} on ${this.name}`, { details: { participant: this.name, operation } });
      }
      results.push(answer.result);
    }
    if (!prepares) return { results };
    return { results, vote: await this.#prepareOpen(branch, b, { decisionFollows: true }) };
  }

  /** What an operation's failure answers; the branch can no longer prepare. */
  #operationFailed(gid: string, b: OpenBranch, operation: number, err: unknown): CoordinatorError {
    b.failure ??= `operation ${operation} failed: ${errorMessage(err)}`;
    const details = { participant: this.name, operation };
    if (err instanceof ParamCountError) return new CoordinatorError('VALIDATION_FAILED', `operation ${operation}: ${err.message}`, { details });
    if (err instanceof ResultTooLargeError) {
      // Its connection is closed already; the branch stays open (failed) so that its prepare says why.
      this.#link.giveUp(gid, b.session);
      return new CoordinatorError('OPERATION_FAILED', `operation ${operation} on ${this.name}: ${err.message}`, { details });
    }
    if (!isServerError(err)) {
      // The exchange failed on our side: the server may still run the statement. The
      // branch's abort first ends that connection, then rolls back whatever is left.
      this.#open.delete(gid);
      this.#link.giveUp(gid, b.session);
      return new CoordinatorError('PARTICIPANT_UNREACHABLE', `lost the connection to ${this.name} during operation ${operation}: ${errorMessage(err)}`, {
        cause: err,
      });
    }
    return new CoordinatorError('OPERATION_FAILED', `operation ${operation} failed on ${this.name}: ${err.message}`, {
      cause: err,
      details: { ...details, errno: err.errno, sqlState: err.sqlState },
    });
  }

  /** A branch connection; when all are in use, a kept one (a prepared branch waiting for phase 2) gives its slot up first. */
  async #checkout(): Promise<Session> {
    while (this.#link.sessions.full && this.#kept.expireOldest()) {
      // expired: its slot is free
    }
    return this.#link.sessions.acquire();
  }

  async prepare(branch: BranchRef, options: PrepareOptions = {}): Promise<PrepareResult> {
    this.#xid(branch.gid); // a malformed gid is a bug of the caller's: refused like the postgres adapter does
    const b = this.#open.get(branch.gid);
    if (b === undefined) return this.#preparedAlready(branch);
    if (b.busy !== undefined) return { vote: 'no', reason: `branch ${branch.branchId} is still running work` };
    return this.#prepareOpen(branch, b, options);
  }

  async #prepareOpen(branch: BranchRef, b: OpenBranch, options: PrepareOptions): Promise<PrepareResult> {
    this.#open.delete(branch.gid);
    // Until it has answered, an abort of this branch waits: it could not tell which rollback it needs.
    const preparing = this.#prepareSession(branch.gid, b, options);
    this.#preparing.set(branch.gid, preparing);
    try {
      return await preparing;
    } finally {
      if (this.#preparing.get(branch.gid) === preparing) this.#preparing.delete(branch.gid);
    }
  }

  async #prepareSession(gid: string, b: OpenBranch, options: PrepareOptions): Promise<PrepareResult> {
    if (b.failure !== undefined) {
      await this.#link.rollbackOpen(gid, b);
      return { vote: 'no', reason: b.failure };
    }
    const xid = xidSql(b.xid);
    try {
      if (!b.ended) {
        await this.#link.send(b.session, `XA END ${xid}`);
        b.ended = true;
      }
      await this.#link.send(b.session, `XA PREPARE ${xid}`);
    } catch (err) {
      // Refused (the server rolled the branch back), or the answer was lost and it may be
      // prepared: either way the connection goes, and the abort that follows the no settles it.
      this.#link.giveUp(gid, b.session);
      return { vote: 'no', reason: `prepare failed on ${this.name}: ${errorMessage(err)}` };
    }
    if (options.decisionFollows === true) this.#kept.keep(gid, b);
    else if (this.#link.detachesOnPrepare) await this.#link.releaseBranch(b);
    // The connection can do nothing else while it holds the prepared transaction: closing it detaches the transaction.
    else this.#link.giveUp(gid, b.session);
    return { vote: 'yes' };
  }

  /**
   * A prepare with no open branch: one under way or done already answers as it did (prepare is
   * idempotent: a repeat after a lost answer must not turn a prepared branch into a "no").
   */
  async #preparedAlready(branch: BranchRef): Promise<PrepareResult> {
    const preparing = this.#preparing.get(branch.gid);
    if (preparing !== undefined) return preparing;
    if (this.#kept.has(branch.gid)) return { vote: 'yes' };
    try {
      const listed = await this.#link.withControl((s) => this.#link.isListed(s, branch.gid));
      return listed ? { vote: 'yes' } : { vote: 'no', reason: `no open session for branch ${branch.branchId}` };
    } catch (err) {
      return { vote: 'no', reason: `no open session for branch ${branch.branchId}, and whether it is prepared could not be read: ${errorMessage(err)}` };
    }
  }

  async commit(branch: BranchRef): Promise<void> {
    const xid = this.#xid(branch.gid);
    const kept = this.#kept.take(branch.gid);
    if (kept !== undefined) {
      let committed = false;
      try {
        await this.#link.send(kept.session, `XA COMMIT ${xidSql(xid)}`);
        committed = true;
      } catch (err) {
        this.#link.giveUp(branch.gid, kept.session);
        if (!isServerError(err)) throw err;
        // The server answered: what it means is read on a control connection below.
      }
      if (committed) {
        await this.#link.releaseBranch(kept);
        return;
      }
    }
    await this.#link.resolve(branch.gid, xid, 'COMMIT');
  }

  async abort(branch: BranchRef): Promise<void> {
    const xid = this.#xid(branch.gid);
    // Work or a prepare still running on the branch's connection finishes first: it may end
    // prepared, and only then is it clear which rollback it needs.
    await this.#open.get(branch.gid)?.busy?.catch(() => undefined);
    await this.#preparing.get(branch.gid)?.catch(() => undefined);
    const open = this.#open.get(branch.gid);
    if (open !== undefined) {
      this.#open.delete(branch.gid);
      if (await this.#link.rollbackOpen(branch.gid, open)) return;
    }
    const kept = this.#kept.take(branch.gid);
    if (kept !== undefined) {
      let rolledBack = false;
      try {
        await this.#link.send(kept.session, `XA ROLLBACK ${xidSql(xid)}`);
        rolledBack = true;
      } catch {
        this.#link.giveUp(branch.gid, kept.session);
      }
      if (rolledBack) {
        await this.#link.releaseBranch(kept);
        return;
      }
    }
    await this.#link.resolve(branch.gid, xid, 'ROLLBACK');
  }

  async findPrepared(gidPrefix: string): Promise<string[]> {
    try {
      return (await this.#link.withControl((s) => this.#link.recover(s))).filter((gid) => gid.startsWith(gidPrefix));
    } catch (err) {
      throw this.#link.failure('listing prepared XA transactions', err);
    }
  }

  openBranches(): number {
    return this.#open.size;
  }

  async close(): Promise<void> {
    for (const [gid, b] of this.#open) {
      this.#open.delete(gid);
      await b.busy?.catch(() => undefined);
      await this.#link.rollbackOpen(gid, b);
    }
    // Closing a kept connection detaches its prepared transaction: it stays prepared on the server.
    this.#kept.expireAll();
    this.#link.end();
  }

  #xid(gid: string): Xid {
    const xid = isSafeGid(gid) ? xidOf(gid) : undefined;
    if (xid === undefined) throw new CoordinatorError('INTERNAL', `refusing to use malformed gid ${JSON.stringify(gid)}`);
    return xid;
  }
}
