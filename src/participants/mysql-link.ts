/**
 * The mysql participant's access to its server: the two pools (branch connections, and a
 * small one for phase 2, recovery and cancellation so that open branches never starve commit
 * delivery), one statement at a time with a client-side deadline (a branch's operations with
 * their answers bounded: mysql-results.ts), the server's flavour, the connections given up
 * while they may still hold a branch's XA transaction, and phase 2 away from them (resolve).
 *
 * Given-up connections matter because XA COMMIT / XA ROLLBACK of an xid that a live connection
 * holds answers XAER_NOTA, exactly as for an unknown xid — also for a moment after we closed
 * that connection ourselves. settle(gid) makes sure such a connection is gone (KILL, then wait)
 * before anyone reads NOTA as "already resolved".
 *
 * A branch connection goes back to the pool only through a reset (COM_RESET_CONNECTION: user
 * variables, named locks, session variables, temporary tables and prepared statements of the
 * branch are gone), after which its session settings and its character set — which MySQL,
 * unlike MariaDB, resets to the server's default — are applied again. One whose reset fails is
 * closed.
 */
import type { Logger } from 'pino';
import { CoordinatorError, errorMessage } from '../errors.js';
import { withTimeout } from '../lib/with-timeout.js';
import {
  AUTH_ERRORS, ER, SessionPool, XA_ROLLED_BACK, connectionOptions, isServerError, openSession, parseConnectionString, serverErrno, sessionSettings,
  type ConnectionTarget, type Session,
} from './mysql-connections.js';
import { runStatement, type AnswerBudget, type StatementAnswer } from './mysql-results.js';
import { detectServer, type ServerInfo } from './mysql-server.js';
import type { BranchConnection, OpenBranch, Unsettled } from './mysql-session.js';
import { gidOfRecoverRow, xidSql, type Xid, type XaRecoverRow } from './mysql-xid.js';

export interface LinkOptions {
  readonly name: string;
  readonly connectionString: string;
  readonly maxSessions: number;
  readonly connectTimeoutMs: number;
  readonly statementTimeoutMs: number;
  readonly lockWaitTimeoutMs?: number;
  readonly idleInTransactionTimeoutMs: number;
  readonly logger: Logger;
}

/** How long settle() waits for a given-up connection to end on the server before it fails (and is retried). */
const STOP_CONNECTION_WAIT_MS = 10_000;
const CONTROL_SESSIONS = 4;
const IDLE_CLOSE_MS = 30_000;
const MAX_UNSETTLED = 10_000;
const NO_SUCH_THREAD = 1094;

type ExecuteValues = Parameters<Session['conn']['execute']>[1];

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** The character set a connection's login chose (a reset on MySQL falls back to the server's default). */
const CHARSET_QUERY = 'SELECT @@character_set_client AS client, @@character_set_results AS results, @@collation_connection AS collation';

export class MySqlLink {
  readonly name: string;
  readonly target: ConnectionTarget;
  /** Branch connections: PARTICIPANT_BUSY at once when all are in use. */
  readonly sessions: SessionPool;
  readonly #control: SessionPool;
  readonly #options: LinkOptions;
  readonly #log: Logger;
  readonly #unsettled = new Map<string, Unsettled>();
  readonly #callTimeoutMs: number;
  /** A reset runs no statement: it answers as fast as a login would, else the connection is closed. */
  readonly #resetTimeoutMs: number;
  /** Per connection: what SET SESSION restores its character set after a reset (as the login set it). */
  readonly #charsets = new WeakMap<Session, string>();
  #server: Promise<ServerInfo> | undefined;
  #serverKnown: ServerInfo | undefined;

  constructor(options: LinkOptions, log: Logger) {
    this.name = options.name;
    this.#options = options;
    this.#log = log;
    this.target = parseConnectionString(options.name, options.connectionString);
    // The server's own bounds (statement, lock wait) end a statement first; the client's deadline
    // is for a server or network that stopped answering.
    const serverBoundMs = Math.max(options.statementTimeoutMs, options.lockWaitTimeoutMs ?? 0);
    this.#callTimeoutMs = serverBoundMs + Math.min(5_000, Math.max(1_000, serverBoundMs));
    this.#resetTimeoutMs = Math.min(this.#callTimeoutMs, Math.max(1_000, options.connectTimeoutMs));
    const open = (): Promise<Session> => this.#openSession();
    const recycle = (session: Session): Promise<boolean> => this.#reset(session);
    this.sessions = new SessionPool({ name: options.name, max: options.maxSessions, open, waitMs: 0, idleMs: IDLE_CLOSE_MS, recycle });
    this.#control = new SessionPool({ name: options.name, max: CONTROL_SESSIONS, open, waitMs: options.connectTimeoutMs, idleMs: IDLE_CLOSE_MS });
  }

  /** XA PREPARE leaves the connection free for other work (MySQL 8.0.29+ with xa_detach_on_prepare). */
  get detachesOnPrepare(): boolean {
    return this.#serverKnown?.detachesOnPrepare === true;
  }

  /** One statement with a client-side deadline; a failure that is not the server's answer marks the connection broken. */
  async send(session: Session, sql: string, values?: readonly unknown[]): Promise<unknown> {
    try {
      const [result] =
        values === undefined
          ? await session.conn.query({ sql, timeout: this.#callTimeoutMs })
          : await session.conn.execute({ sql, timeout: this.#callTimeoutMs }, values as ExecuteValues);
      return result;
    } catch (err) {
      if (!isServerError(err)) session.broken ??= `lost: ${errorMessage(err)}`;
      throw err;
    }
  }

  /** One operation of a branch's work, its rows streamed and bounded (mysql-results.ts); a failure that is not the server's answer marks the connection broken. */
  async run(session: Session, sql: string, values: readonly unknown[], budget: AnswerBudget): Promise<StatementAnswer> {
    try {
      return await runStatement(session.conn, sql, values, this.#callTimeoutMs, budget);
    } catch (err) {
      if (!isServerError(err)) session.broken ??= `lost: ${errorMessage(err)}`;
      throw err;
    }
  }

  async rows(session: Session, sql: string): Promise<Record<string, unknown>[]> {
    const result = await this.send(session, sql);
    return Array.isArray(result) ? (result as Record<string, unknown>[]) : [];
  }

  /** Runs on a control connection; a connection found dead is replaced once (every control call is idempotent). */
  async withControl<T>(fn: (s: Session) => Promise<T>): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      const session = await this.#control.acquire();
      try {
        const result = await fn(session);
        this.#control.release(session);
        return result;
      } catch (err) {
        const lost = session.broken !== undefined;
        this.#control.release(session);
        if (!lost || attempt >= 2) throw err;
      }
    }
  }

  /** Flavour and version, read once on the first connection. */
  server(session: Session): Promise<ServerInfo> {
    if (this.#server === undefined) {
      const detecting = detectServer((sql) => this.rows(session, sql));
      this.#server = detecting;
      detecting.then(
        (info) => {
          this.#serverKnown = info;
        },
        () => {
          if (this.#server === detecting) this.#server = undefined;
        },
      );
    }
    return this.#server;
  }

  /** XA RECOVER's transactions of our format id, as gids. */
  async recover(session: Session): Promise<string[]> {
    const rows = (await this.rows(session, 'XA RECOVER')) as unknown as XaRecoverRow[];
    return rows.map((row) => gidOfRecoverRow(row)).filter((gid): gid is string => gid !== undefined);
  }

  async isListed(session: Session, gid: string): Promise<boolean> {
    return (await this.recover(session)).includes(gid);
  }

  /**
   * XA COMMIT / XA ROLLBACK on a control connection, once no connection we gave up can still
   * hold the transaction. XAER_NOTA then means resolved already — unless XA RECOVER still lists
   * the xid (a connection of someone else's holds it): then it fails and is retried.
   */
  async resolve(gid: string, xid: Xid, verb: 'COMMIT' | 'ROLLBACK'): Promise<void> {
    await this.settle(gid);
    await this.withControl(async (s) => {
      try {
        await this.send(s, `XA ${verb} ${xidSql(xid)}`);
      } catch (err) {
        const errno = serverErrno(err);
        if (errno !== undefined && XA_ROLLED_BACK.has(errno)) {
          // The server had rolled the prepared branch back (one that wrote nothing, when its connection closed).
          if (verb === 'COMMIT' && errno !== ER.XA_RBROLLBACK) this.#log.warn({ gid, errno }, 'prepared branch was rolled back by the server');
          return;
        }
        if (errno === ER.XAER_NOTA) {
          if (await this.isListed(s, gid)) throw new Error(`branch ${gid} is prepared on ${this.name} but held by another connection; retried`);
          return;
        }
        throw err;
      }
    });
  }

  /**
   * A connection whose branch transaction has ended on it (no XA state left): back to the pool,
   * which resets it before its next use; closed at once when a KILL QUERY may still reach it;
   * reset and closed when its work looked like it leaves state on the session.
   */
  async releaseBranch(b: BranchConnection): Promise<void> {
    if (b.cancelled) this.sessions.destroy(b.session);
    else if (b.mustNotBeReused) await this.retire(b.session);
    else this.sessions.release(b.session);
  }

  /** Rolls an open branch back on its own connection; false when that connection had to be given up instead. */
  async rollbackOpen(gid: string, b: OpenBranch): Promise<boolean> {
    if (!b.started) {
      await this.releaseBranch(b);
      return true;
    }
    if (b.cancelled || b.session.broken !== undefined) {
      this.giveUp(gid, b.session);
      return false;
    }
    const xid = xidSql(b.xid);
    try {
      if (!b.ended) {
        await this.send(b.session, `XA END ${xid}`);
        b.ended = true;
      }
      await this.send(b.session, `XA ROLLBACK ${xid}`);
    } catch {
      this.giveUp(gid, b.session);
      return false;
    }
    await this.releaseBranch(b);
    return true;
  }

  /** Interrupts the statement a connection runs (KILL QUERY); failures are logged, not thrown. */
  cancelQuery(session: Session, gid: string): void {
    this.withControl((s) => this.send(s, `KILL QUERY ${threadIdSql(session.threadId)}`)).catch((err: unknown) => {
      this.#log.warn({ err: errorMessage(err), gid }, 'could not cancel a running statement');
    });
  }

  /** Closes a branch connection that holds, or may hold, the branch's transaction, and remembers it until settle(gid). */
  giveUp(gid: string, session: Session): void {
    this.#unsettled.delete(gid);
    this.#unsettled.set(gid, { threadId: session.threadId, since: Date.now() });
    if (this.#unsettled.size > MAX_UNSETTLED) {
      const oldest = this.#unsettled.keys().next();
      if (oldest.done !== true) this.#unsettled.delete(oldest.value);
    }
    this.sessions.destroy(session);
  }

  /**
   * Makes sure a connection given up for this gid is gone from the server: KILL it, and wait
   * (bounded) until it has ended — its open transaction rolled back, its prepared one detached.
   */
  async settle(gid: string): Promise<void> {
    const unsettled = this.#unsettled.get(gid);
    if (unsettled === undefined) return;
    await this.withControl(async (s) => {
      if (!(await this.#stillRuns(s, unsettled))) return;
      await this.send(s, `KILL CONNECTION ${threadIdSql(unsettled.threadId)}`).catch((err: unknown) => {
        if (!(isServerError(err) && err.errno === NO_SUCH_THREAD)) throw err;
      });
      const deadline = Date.now() + STOP_CONNECTION_WAIT_MS;
      while (await this.#stillRuns(s, unsettled)) {
        if (Date.now() > deadline) throw new Error(`connection ${unsettled.threadId} on ${this.name} still holds a branch; retried`);
        await sleep(20);
      }
    });
    if (this.#unsettled.get(gid) === unsettled) this.#unsettled.delete(gid);
  }

  /** Connection ids start again with the server: one that started after we gave the connection up cannot still run it. */
  async #stillRuns(s: Session, unsettled: Unsettled): Promise<boolean> {
    const rows = await this.rows(s, `SELECT ID FROM information_schema.PROCESSLIST WHERE ID = ${threadIdSql(unsettled.threadId)}`);
    if (rows.length === 0) return false;
    const uptime = Number((await this.rows(s, "SHOW GLOBAL STATUS LIKE 'Uptime'"))[0]?.Value);
    return !(Number.isFinite(uptime) && Date.now() - uptime * 1000 > unsettled.since + 1_000);
  }

  /**
   * Closes a branch connection that ran work leaving state beyond its transaction, once a reset
   * (bounded) has dropped that state: named locks are free when this answers, not only when the
   * server notices the closed socket.
   */
  async retire(session: Session): Promise<void> {
    if (session.broken === undefined) {
      await withTimeout(session.conn.reset(), this.#resetTimeoutMs, 'the connection reset').catch((err: unknown) => {
        session.broken ??= `reset failed: ${errorMessage(err)}`;
      });
    }
    this.sessions.destroy(session);
  }

  end(): void {
    this.sessions.end();
    this.#control.end();
  }

  async #openSession(): Promise<Session> {
    let session: Session;
    try {
      session = await openSession(connectionOptions(this.target, this.#options.connectTimeoutMs), (err) => {
        this.#log.warn({ err: errorMessage(err) }, 'mysql connection failed');
      });
    } catch (err) {
      throw this.#connectFailure(err);
    }
    try {
      const row = (await this.rows(session, CHARSET_QUERY))[0] ?? {};
      const names = [row.client, row.results, row.collation];
      // Only names of the server's that look like names go into SQL text; else the connection is never reset for reuse.
      if (names.every((n): n is string => typeof n === 'string' && /^[A-Za-z0-9_]+$/.test(n))) {
        const [client, results, collation] = names;
        this.#charsets.set(session, `character_set_client = ${client}, character_set_results = ${results}, collation_connection = ${collation}`);
      }
      await this.send(session, await this.#settings(session));
      return session;
    } catch (err) {
      session.conn.destroy();
      throw this.failure('the session settings', err);
    }
  }

  /** SET SESSION of the adapter's bounds (mysql-connections.ts). */
  async #settings(session: Session): Promise<string> {
    const server = await this.server(session);
    const { statementTimeoutMs, idleInTransactionTimeoutMs } = this.#options;
    const lockWaitTimeoutMs = this.#options.lockWaitTimeoutMs ?? statementTimeoutMs;
    return sessionSettings(server.flavour, server.version, { statementTimeoutMs, lockWaitTimeoutMs, idleInTransactionTimeoutMs });
  }

  /**
   * A branch connection handed back to the pool, made as fresh as a new one: COM_RESET_CONNECTION
   * (bounded), then the session settings and the login's character set again. False (the pool
   * closes it) when any of it fails.
   */
  async #reset(session: Session): Promise<boolean> {
    const charset = this.#charsets.get(session);
    if (charset === undefined) return false;
    try {
      await withTimeout(session.conn.reset(), this.#resetTimeoutMs, 'the connection reset');
      await this.send(session, `${await this.#settings(session)}, ${charset}`);
      return true;
    } catch (err) {
      // Not when the pool closed it meanwhile (or it was lost: that is logged already).
      if (session.broken === undefined) this.#log.warn({ err: errorMessage(err) }, 'could not reset a mysql connection for reuse; closed instead');
      session.broken ??= `reset failed: ${errorMessage(err)}`;
      return false;
    }
  }

  /** A failed login: refused credentials, a missing database, or no server at all. Never repeats the connection string. */
  #connectFailure(err: unknown): CoordinatorError {
    // Login errors are the server's answer even though the client marks them fatal.
    const e = err as { errno?: unknown; sqlState?: unknown } | null;
    const errno = typeof e?.errno === 'number' && e.errno > 0 && typeof e.sqlState === 'string' ? e.errno : undefined;
    const where = `${this.target.host}:${this.target.port}`;
    if (errno !== undefined && AUTH_ERRORS.has(errno)) {
      return new CoordinatorError('PARTICIPANT_AUTH_FAILED', `mysql participant ${this.name} at ${where} refused user ${this.target.user}: ${errorMessage(err)}`, {
        details: { participant: this.name, errno },
      });
    }
    if (errno === ER.BAD_DB) {
      return new CoordinatorError('PARTICIPANT_MISCONFIGURED', `mysql participant ${this.name} at ${where} has no database ${this.target.database}`, {
        details: { participant: this.name, errno },
      });
    }
    return new CoordinatorError('PARTICIPANT_UNREACHABLE', `cannot reach mysql participant ${this.name} at ${where}: ${errorMessage(err)}`, {
      details: { participant: this.name, ...(errno === undefined ? {} : { errno }) },
    });
  }

  /** A call failed: refused by the server (its answer), or the server could not be reached. */
  failure(what: string, err: unknown): CoordinatorError {
    if (err instanceof CoordinatorError) return err;
    if (isServerError(err)) {
      return new CoordinatorError('OPERATION_FAILED', `mysql participant ${this.name} refused ${what}: ${err.message}`, {
        cause: err,
        details: { participant: this.name, errno: err.errno, sqlState: err.sqlState },
      });
    }
    return new CoordinatorError('PARTICIPANT_UNREACHABLE', `cannot reach mysql participant ${this.name}: ${errorMessage(err)}`, { cause: err });
  }
}

/** A connection id as SQL: only a positive integer the server gave us ever goes into the text. */
function threadIdSql(threadId: number): string {
  if (!Number.isSafeInteger(threadId) || threadId <= 0) throw new Error(`invalid connection id ${threadId}`);
  return String(threadId);
}
