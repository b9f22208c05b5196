/**
 * Connections of the mysql participant: the connection string, the session settings every
 * connection gets (statement, lock-wait and idle bounds), a small pool that answers "busy" at
 * once instead of queueing branch work, and how to tell a server's answer from a lost
 * connection.
 *
 * A connection that may hold XA state the server still runs is never handed on: the pool
 * only takes back connections whose last statement completed cleanly outside any XA
 * transaction; everything else is destroyed. Nor does a connection carry session state from
 * one branch to the next: the pool resets (COM_RESET_CONNECTION) every connection handed back
 * and applies the session settings again before anyone gets it (PoolOptions.recycle).
 */
import mysql from 'mysql2/promise';
import { CoordinatorError, errorMessage } from '../errors.js';
import { destroySocket } from './mysql-results.js';

export interface ConnectionTarget {
  readonly host: string;
  readonly port: number;
  readonly user: string;
  readonly password: string;
  readonly database: string;
  readonly ssl: boolean;
}

/** `mysql://user:password@host:port/database[?ssl=true]`. Errors never repeat the string (it holds the password). */
export function parseConnectionString(name: string, connectionString: string): ConnectionTarget {
  let url: URL;
  try {
    url = new URL(connectionString);
  } catch {
    throw new CoordinatorError('VALIDATION_FAILED', `mysql participant ${name}: the connection string is not a URL (mysql://user:password@host:port/database)`);
  }
  if (url.protocol !== 'mysql:') {
    throw new CoordinatorError('VALIDATION_FAILED', `mysql participant ${name}: the connection string must start with mysql://`);
  }
  const database = decodeURIComponent(url.pathname.replace(/^\//, ''));
  if (url.hostname === '' || database === '' || database.includes('/')) {
    throw new CoordinatorError('VALIDATION_FAILED', `mysql participant ${name}: the connection string needs a host and a database (mysql://user:password@host:port/database)`);
  }
  const port = url.port === '' ? 3306 : Number(url.port);
  for (const key of url.searchParams.keys()) {
    if (key !== 'ssl') throw new CoordinatorError('VALIDATION_FAILED', `mysql participant ${name}: unsupported connection string parameter ${JSON.stringify(key)} (only ssl)`);
  }
  const ssl = url.searchParams.get('ssl');
  if (ssl !== null && !['true', 'false', '1', '0'].includes(ssl)) {
    throw new CoordinatorError('VALIDATION_FAILED', `mysql participant ${name}: ssl must be true or false`);
  }
  return {
    host: url.hostname.replace(/^\[(.*)\]$/, '$1'),
    port,
    user: decodeURIComponent(url.username),
    password: decodeURIComponent(url.password),
    database,
    ssl: ssl === 'true' || ssl === '1',
  };
}

export type Flavour = 'mariadb' | 'mysql';

/** What the session settings depend on. */
export interface SessionBounds {
  readonly statementTimeoutMs: number;
  readonly lockWaitTimeoutMs: number;
  readonly idleInTransactionTimeoutMs: number;
}

const seconds = (ms: number): number => Math.max(1, Math.ceil(ms / 1000));

/**
 * SET SESSION for a new connection. MariaDB bounds every statement (max_statement_time, in
 * seconds) and kills a connection idle inside a transaction (idle_transaction_timeout); MySQL
 * bounds SELECTs (max_execution_time, in ms) and idle connections (wait_timeout). Row and
 * metadata lock waits are bounded on both. Only numbers computed here go into the text.
 */
export function sessionSettings(flavour: Flavour, version: readonly number[], bounds: SessionBounds): string {
  const lockWait = seconds(bounds.lockWaitTimeoutMs);
  const idle = seconds(bounds.idleInTransactionTimeoutMs);
  const common = `innodb_lock_wait_timeout = ${lockWait}, lock_wait_timeout = ${seconds(bounds.statementTimeoutMs)}`;
  if (flavour === 'mariadb') {
    const statement = Math.max(0.001, bounds.statementTimeoutMs / 1000).toFixed(3);
    return `SET SESSION max_statement_time = ${statement}, idle_transaction_timeout = ${idle}, ${common}`;
  }
  // MySQL 5.7.7 still called it max_statement_time.
  const before578 = (version[0] ?? 0) === 5 && (version[1] ?? 0) === 7 && (version[2] ?? 0) < 8;
  const statement = `${before578 ? 'max_statement_time' : 'max_execution_time'} = ${Math.max(1, Math.round(bounds.statementTimeoutMs))}`;
  return `SET SESSION ${statement}, wait_timeout = ${idle}, ${common}`;
}

export function connectionOptions(target: ConnectionTarget, connectTimeoutMs: number): mysql.ConnectionOptions {
  return {
    host: target.host,
    port: target.port,
    user: target.user,
    password: target.password,
    database: target.database,
    connectTimeout: connectTimeoutMs,
    charset: 'utf8mb4',
    multipleStatements: false,
    flags: ['-LOCAL_FILES'],
    // Numbers as the Postgres adapter answers them: exact (BIGINT, DECIMAL as strings), dates as the server wrote them.
    supportBigNumbers: true,
    bigNumberStrings: true,
    dateStrings: true,
    maxPreparedStatements: 256,
    ...(target.ssl ? { ssl: {} } : {}),
  };
}

/** A MySQL/MariaDB error the server answered with (the connection itself is fine). */
export interface ServerError {
  readonly errno: number;
  readonly sqlState: string;
  readonly code?: string;
  readonly message: string;
}

export function isServerError(err: unknown): err is ServerError {
  const e = err as { errno?: unknown; sqlState?: unknown; fatal?: unknown } | null;
  return typeof e === 'object' && e !== null && typeof e.errno === 'number' && e.errno > 0 && typeof e.sqlState === 'string' && e.fatal !== true;
}

export function serverErrno(err: unknown): number | undefined {
  return isServerError(err) ? err.errno : undefined;
}

/** Server error numbers the adapter acts on. */
export const ER = {
  DBACCESS_DENIED: 1044,
  ACCESS_DENIED: 1045,
  BAD_DB: 1049,
  UNKNOWN_SYSTEM_VARIABLE: 1193,
  SPECIFIC_ACCESS_DENIED: 1227,
  XAER_NOTA: 1397,
  XAER_RMFAIL: 1399,
  XAER_OUTSIDE: 1400,
  XA_RBROLLBACK: 1402,
  XAER_DUPID: 1440,
  XA_RBTIMEOUT: 1613,
  XA_RBDEADLOCK: 1614,
  ACCESS_DENIED_NO_PASSWORD: 1698,
  MUST_CHANGE_PASSWORD_LOGIN: 1862,
  ACCOUNT_LOCKED_MYSQL: 3118,
  ACCOUNT_LOCKED_MARIADB: 4151,
} as const;

/** Errors at login that mean the credentials (or the account) were refused. */
export const AUTH_ERRORS: ReadonlySet<number> = new Set([
  ER.DBACCESS_DENIED, ER.ACCESS_DENIED, ER.ACCESS_DENIED_NO_PASSWORD, ER.MUST_CHANGE_PASSWORD_LOGIN, ER.ACCOUNT_LOCKED_MYSQL, ER.ACCOUNT_LOCKED_MARIADB,
]);

/** The XA rollback-only answers: the branch was rolled back (by the server, or already). */
export const XA_ROLLED_BACK: ReadonlySet<number> = new Set([ER.XA_RBROLLBACK, ER.XA_RBTIMEOUT, ER.XA_RBDEADLOCK]);

/** One connection of a pool, with what the adapter knows about it. */
export interface Session {
  readonly conn: mysql.Connection;
  /** The server's id of this connection (KILL, PROCESSLIST). */
  readonly threadId: number;
  /** Set once the connection failed (an 'error' event, a lost or timed-out exchange). */
  broken: string | undefined;
  idleSince: number;
}

export interface PoolOptions {
  readonly name: string;
  readonly max: number;
  /** Opens a connection with its session settings applied. */
  readonly open: () => Promise<Session>;
  /** How long acquire() waits for a free connection when all are in use (0: answer busy at once). */
  readonly waitMs: number;
  /** Idle connections older than this are closed. */
  readonly idleMs: number;
  /**
   * Makes a connection handed back with release() fit for other work (resets its session);
   * false closes it instead. Runs while the connection waits in the pool; acquire() hands out
   * a connection only once it has answered.
   */
  readonly recycle?: (session: Session) => Promise<boolean>;
}

/**
 * At most `max` connections. acquire() reuses an idle one or opens one; when all are in use it
 * waits up to waitMs (control calls) or answers PARTICIPANT_BUSY at once (branch work). Every
 * acquired connection goes back exactly once: release() (clean) or destroy().
 */
export class SessionPool {
  readonly #options: PoolOptions;
  readonly #idle: Session[] = [];
  /** Connections counted against max (handed out or idle). */
  readonly #live = new Set<Session>();
  #opening = 0;
  readonly #waiters: (() => void)[] = [];
  /** Idle connections whose recycle() has not answered yet. */
  readonly #recycling = new Map<Session, Promise<boolean>>();
  #closed = false;
  #sweep: NodeJS.Timeout | undefined;

  constructor(options: PoolOptions) {
    this.#options = options;
  }

  get full(): boolean {
    return this.#live.size + this.#opening >= this.#options.max && this.#idle.length === 0;
  }

  async acquire(): Promise<Session> {
    const deadline = Date.now() + this.#options.waitMs;
    for (;;) {
      if (this.#closed) throw new CoordinatorError('SHUTTING_DOWN', `mysql participant ${this.#options.name} is closed`);
      const idle = this.#takeIdle();
      if (idle !== undefined) {
        if (await this.#ready(idle)) return idle;
        continue;
      }
      if (this.#live.size + this.#opening < this.#options.max) {
        this.#opening++;
        let session: Session;
        try {
          session = await this.#options.open();
        } catch (err) {
          this.#opening--;
          this.#waiters.shift()?.(); // the slot is free again
          throw err;
        }
        this.#opening--;
        this.#live.add(session);
        if (this.#closed) {
          this.destroy(session);
          throw new CoordinatorError('SHUTTING_DOWN', `mysql participant ${this.#options.name} is closed`);
        }
        return session;
      }
      const left = deadline - Date.now();
      if (left <= 0) {
        throw new CoordinatorError('PARTICIPANT_BUSY', `all ${this.#options.max} sessions to ${this.#options.name} are in use; retry shortly`, {
          details: { participant: this.#options.name },
          retryAfterSeconds: 1,
        });
      }
      await new Promise<void>((resolve) => {
        const wake = (): void => {
          clearTimeout(timer);
          resolve();
        };
        const timer = setTimeout(() => {
          const i = this.#waiters.indexOf(wake);
          if (i >= 0) this.#waiters.splice(i, 1);
          resolve();
        }, left);
        this.#waiters.push(wake);
      });
    }
  }

  /** Back to the pool, to be recycled before its next use; a broken connection (or any after close) is destroyed instead. */
  release(session: Session): void {
    if (!this.#live.has(session)) return;
    if (this.#closed || session.broken !== undefined) {
      this.destroy(session);
      return;
    }
    session.idleSince = Date.now();
    const recycle = this.#options.recycle;
    if (recycle !== undefined) this.#recycling.set(session, recycle(session).catch(() => false));
    this.#idle.push(session);
    this.#sweep ??= setInterval(() => this.#closeStale(), Math.max(1_000, this.#options.idleMs / 2)).unref();
    this.#waiters.shift()?.();
  }

  /**
   * Closes the socket at once (not only our side of it: no more of a result still arriving is
   * read); whatever the server still runs on it ends when the server notices.
   */
  destroy(session: Session): void {
    session.broken ??= 'closed';
    destroySocket(session.conn);
    this.#recycling.delete(session);
    if (!this.#live.delete(session)) return;
    const i = this.#idle.indexOf(session);
    if (i >= 0) this.#idle.splice(i, 1);
    this.#waiters.shift()?.();
  }

  end(): void {
    this.#closed = true;
    clearInterval(this.#sweep);
    this.#sweep = undefined;
    for (const wake of this.#waiters.splice(0)) wake();
    for (const s of [...this.#idle]) this.destroy(s);
  }

  /** An idle connection, one already recycled first (the last released is the likeliest to be still resetting). */
  #takeIdle(): Session | undefined {
    for (let i = this.#idle.length - 1; i >= 0; i--) {
      const s = this.#idle[i];
      if (s !== undefined && !this.#recycling.has(s)) return this.#idle.splice(i, 1)[0];
    }
    return this.#idle.pop();
  }

  /** Waits for an idle connection's recycle(); true when it may be handed out, else it is destroyed. */
  async #ready(session: Session): Promise<boolean> {
    const recycled = this.#recycling.get(session);
    if (recycled !== undefined) {
      const ok = await recycled;
      this.#recycling.delete(session);
      if (!ok) session.broken ??= 'could not be reset for reuse';
    }
    if (session.broken === undefined && !this.#closed) return true;
    this.destroy(session);
    return false;
  }

  #closeStale(): void {
    const stale = Date.now() - this.#options.idleMs;
    for (const s of [...this.#idle]) {
      if (s.idleSince <= stale || s.broken !== undefined) this.destroy(s);
    }
    if (this.#idle.length === 0) {
      clearInterval(this.#sweep);
      this.#sweep = undefined;
    }
  }
}

/** Opens a connection, listening for its failure from the first moment (unheard, 'error' ends the process). */
export async function openSession(options: mysql.ConnectionOptions, onIdleError: (err: unknown) => void): Promise<Session> {
  const conn = await mysql.createConnection(options);
  const session: Session = { conn, threadId: conn.threadId, broken: undefined, idleSince: Date.now() };
  conn.on('error', (err: unknown) => {
    session.broken ??= `connection lost: ${errorMessage(err)}`;
    onIdleError(err);
  });
  conn.on('end', () => {
    session.broken ??= 'connection closed';
  });
  return session;
}
