/**
 * The work of a mysql branch: `[{ "sql": "...", "params": [...] }]`, one statement each with
 * `?` placeholders, run in order inside the branch's XA transaction as server-side prepared
 * statements (the params are bound, never spliced into the text).
 *
 * Only statements that read or change rows are accepted. Everything else is refused before
 * anything runs: transaction control (a COMMIT or XA statement would end the branch outside
 * the protocol), statements that commit implicitly (DDL, LOCK TABLES, GRANT, ANALYZE TABLE,
 * …: MySQL commits the open transaction before running them, which would break the XA
 * branch), and statements that change the pooled session (SET, USE, PREPARE, HANDLER).
 * The server refuses most of these inside an active XA transaction as well (XAER_RMFAIL);
 * this check is the first line and gives the client a clear answer.
 */

import { CoordinatorError } from '../errors.js';

export interface MySqlOperation {
  readonly sql: string;
  readonly params: readonly unknown[];
}

export const MAX_SQL_LENGTH = 100_000;
export const MAX_OPERATIONS = 100;
export const MAX_PARAMS = 1_000;

/** First keywords of the statements a branch may run. */
const ALLOWED = new Set(['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'REPLACE', 'WITH', 'VALUES', 'TABLE', 'DO', 'CALL', 'SHOW', 'EXPLAIN', 'DESCRIBE', 'DESC']);

/** First keywords that end, nest or escape the branch's transaction. */
const TRANSACTION_CONTROL = new Set(['BEGIN', 'START', 'COMMIT', 'ROLLBACK', 'SAVEPOINT', 'RELEASE', 'XA', 'SET', 'LOCK', 'UNLOCK', 'END']);

/** First keywords of statements that commit the open transaction implicitly. */
const IMPLICIT_COMMIT = new Set([
  'CREATE', 'ALTER', 'DROP', 'RENAME', 'TRUNCATE', 'GRANT', 'REVOKE', 'ANALYZE', 'OPTIMIZE', 'REPAIR', 'CHECK',
  'CACHE', 'FLUSH', 'RESET', 'PURGE', 'CHANGE', 'STOP', 'INSTALL', 'UNINSTALL', 'LOAD', 'BACKUP', 'SHUTDOWN',
]);

function invalid(message: string, index?: number): CoordinatorError {
  return new CoordinatorError('VALIDATION_FAILED', message, index === undefined ? undefined : { details: { operation: index } });
}

/**
 * Strips leading whitespace and comments so that the first keyword can be checked. An
 * executable comment (`/*! … *\/`, `/*M! … *\/`) is code to the server: it is refused rather
 * than skipped.
 */
function leadingStatement(sql: string, index: number): string {
  let s = sql;
  for (;;) {
    const trimmed = s.replace(/^[\s(]+/, '');
    if (/^(--\s|--$|#)/.test(trimmed)) {
      const nl = trimmed.indexOf('\n');
      s = nl === -1 ? '' : trimmed.slice(nl + 1);
    } else if (trimmed.startsWith('/*')) {
      if (/^\/\*M?!/.test(trimmed)) throw invalid(`operation ${index}: executable comments (/*! … */) are not allowed before the statement`, index);
      const end = trimmed.indexOf('*/', 2);
      s = end === -1 ? '' : trimmed.slice(end + 2);
    } else {
      return trimmed;
    }
  }
}

function firstKeyword(statement: string): string {
  return (/^[A-Za-z_]+/.exec(statement)?.[0] ?? '').toUpperCase();
}

export function parseMySqlOperations(work: unknown): MySqlOperation[] {
  if (!Array.isArray(work) || work.length === 0) throw invalid('operations must be a non-empty array of {sql, params}');
  if (work.length > MAX_OPERATIONS) throw invalid(`at most ${MAX_OPERATIONS} operations per request`);
  return work.map((op: unknown, index): MySqlOperation => {
    if (typeof op !== 'object' || op === null || Array.isArray(op)) throw invalid(`operation ${index} must be an object`, index);
    const { sql, params } = op as { sql?: unknown; params?: unknown };
    if (typeof sql !== 'string' || sql.trim() === '') throw invalid(`operation ${index}: sql must be a non-empty string`, index);
    if (sql.length > MAX_SQL_LENGTH) throw invalid(`operation ${index}: sql longer than ${MAX_SQL_LENGTH} characters`, index);
    const statement = leadingStatement(sql, index);
    if (statement === '') throw invalid(`operation ${index}: sql holds no statement`, index);
    const keyword = firstKeyword(statement);
    if (TRANSACTION_CONTROL.has(keyword)) {
      throw invalid(`operation ${index}: transaction-control and session statements (${keyword}) are not allowed in a branch`, index);
    }
    if (IMPLICIT_COMMIT.has(keyword)) {
      throw invalid(`operation ${index}: ${keyword} commits the open transaction implicitly in MySQL and would break the XA branch`, index);
    }
    if (!ALLOWED.has(keyword)) {
      throw invalid(`operation ${index}: only SELECT, INSERT, UPDATE, DELETE, REPLACE, WITH, VALUES, TABLE, DO, CALL, SHOW and EXPLAIN statements may run in a branch`, index);
    }
    if (params !== undefined && !Array.isArray(params)) throw invalid(`operation ${index}: params must be an array`, index);
    const list = params ?? [];
    if (list.length > MAX_PARAMS) throw invalid(`operation ${index}: at most ${MAX_PARAMS} params`, index);
    for (const [i, p] of list.entries()) {
      const ok = p === null || typeof p === 'string' || typeof p === 'boolean' || (typeof p === 'number' && Number.isFinite(p)) || typeof p === 'object';
      if (!ok) throw invalid(`operation ${index}: param ${i} has an unsupported type`, index);
    }
    return { sql, params: list };
  });
}

/**
 * Work that leaves state on the connection beyond its transaction (named locks, user
 * variables, whatever a procedure sets): the connection is closed afterwards instead of
 * going back to the pool.
 */
export const LEAKS_SESSION_STATE = /\b(GET_LOCK|RELEASE_LOCK|RELEASE_ALL_LOCKS)\s*\(|:=|\bINTO\s+@|^\s*CALL\b/i;

/** Rows answered per operation; more are dropped from the answer (the statement still ran). */
export const MAX_ROWS_RETURNED = 10_000;

export interface OperationResult {
  readonly rows: unknown[];
  readonly rowCount: number | null;
  readonly insertId?: number | string;
  readonly truncated?: boolean;
}

interface ResultHeader {
  readonly affectedRows?: unknown;
  readonly insertId?: unknown;
}

/**
 * What an operation answers, in the Postgres adapter's shape: the rows a query returned (at
 * most MAX_ROWS_RETURNED) and their count, or for a statement that changes rows the number of
 * rows it matched (and the generated AUTO_INCREMENT id, when there is one).
 */
export function resultOf(answer: unknown): OperationResult {
  if (Array.isArray(answer)) {
    // A query answers its rows; a CALL that selected answers its result sets and a final header.
    const sets = answer.filter((a): a is unknown[] => Array.isArray(a));
    const rows = sets.length > 0 ? (sets[0] as unknown[]) : answer;
    return rows.length > MAX_ROWS_RETURNED
      ? { rows: rows.slice(0, MAX_ROWS_RETURNED), rowCount: rows.length, truncated: true }
      : { rows, rowCount: rows.length };
  }
  const header = (answer ?? {}) as ResultHeader;
  const affected = typeof header.affectedRows === 'number' ? header.affectedRows : null;
  const insertId = header.insertId;
  const hasId = (typeof insertId === 'number' && insertId !== 0) || (typeof insertId === 'string' && insertId !== '0');
  return { rows: [], rowCount: affected, ...(hasId ? { insertId: insertId as number | string } : {}) };
}
