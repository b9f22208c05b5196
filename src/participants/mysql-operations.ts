/**
 * The work of a mysql branch: `[{ "sql": "...", "params": [...] }]`, one statement each with
 * `?` placeholders, run in order inside the branch's XA transaction as server-side prepared
 * statements (the params are bound, never spliced into the text).
 *
 * Only statements that read or change rows are accepted (first keyword SELECT, INSERT, UPDATE,
 * DELETE, REPLACE, WITH, VALUES, DO, SHOW, EXPLAIN, DESCRIBE; MySQL 8's TABLE statement is not
 * accepted, MariaDB has none). Everything else is refused before anything runs: transaction
 * control (a COMMIT or XA statement would end the branch outside the protocol), statements that
 * commit implicitly (DDL, LOCK TABLES, GRANT, ANALYZE TABLE, …: MySQL commits the open
 * transaction before running them, which would break the XA branch), statements that change
 * the pooled session (SET, USE, PREPARE, HANDLER), and CALL: no look at the text can see what a
 * procedure does, and one can leave the branch's XA transaction — MariaDB ships
 * `sys.execute_prepared_stmt` (SQL SECURITY INVOKER), which runs any statement as dynamic SQL:
 * `XA END` + `XA ROLLBACK` of the branch's own (guessable) xid, after which the branch's next
 * statements autocommit, or `XA ROLLBACK` of another branch's prepared xid, whose commit then
 * finds nothing to commit. A stored function cannot run dynamic SQL ("Dynamic SQL is not
 * allowed in stored function or trigger"), so SELECT and DO stay allowed. One may hold static
 * XA statements (someone with CREATE ROUTINE wrote them for a known xid): an XA END leaves the
 * branch IDLE, where every statement and the prepare fail; one that ends the transaction is
 * caught by the participant's check of the session's transaction status after every statement
 * (mysql-participant.ts), before a next statement could autocommit.
 * The server refuses most of the others inside an active XA transaction as well
 * (XAER_RMFAIL); this check is the first line and gives the client a clear answer.
 *
 * Refused anywhere in a statement: file access on the server's host (`INTO OUTFILE`, `INTO
 * DUMPFILE`, `LOAD_FILE(`) — a file written stays when the branch aborts, outside the atomic
 * commit, and one read hands the server's files to the client — and code hidden in comments
 * (executable comments `/*! … *\/`, `/*M! … *\/`; optimizer hints holding quotes, which MySQL
 * reads with a lexer of its own). The keywords are looked for in the text the server parses as
 * code: comments blanked, string literals emptied, quoted identifiers unquoted — so
 * `LOAD_FILE/**\/(` and `` `LOAD_FILE`( `` are refused and `'see into outfile'` is not. How a
 * literal ends depends on the session's sql_mode (NO_BACKSLASH_ESCAPES, ANSI_QUOTES), which a
 * procedure the branch calls may change, so the text is read each way the server could read it
 * and a statement is refused when any reading finds a keyword. The price: a literal with a
 * backslash-escaped quote (`'it\'s'`) followed by one holding such words is refused too — text
 * passed as a param never is.
 */

import { CoordinatorError } from '../errors.js';
import { mapSqlOperations } from './sql-operations.js';

export interface MySqlOperation {
  readonly sql: string;
  readonly params: readonly unknown[];
  /** The statement may leave state on its connection beyond the transaction (see leaksSessionState). */
  readonly leaksSessionState: boolean;
}

export const MAX_PARAMS = 1_000;

/** First keywords of the statements a branch may run. */
const ALLOWED = new Set(['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'REPLACE', 'WITH', 'VALUES', 'DO', 'SHOW', 'EXPLAIN', 'DESCRIBE', 'DESC']);

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
 * than skipped. Whitespace and comments are the server's: `--` starts a comment only before a
 * space or control character, and a non-ASCII space is no whitespace to it.
 */
function leadingStatement(sql: string, index: number): string {
  let s = sql;
  for (;;) {
    const trimmed = s.replace(/^[\t\n\v\f\r (]+/, '');
    if (trimmed.startsWith('#') || startsDashComment(trimmed, 0)) {
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

/** `--` at `i` starts a comment: the server wants a space or control character (or the end) after it. */
function startsDashComment(sql: string, i: number): boolean {
  if (!sql.startsWith('--', i)) return false;
  const after = sql.charCodeAt(i + 2);
  return Number.isNaN(after) || after <= 0x20 || after === 0x7f;
}

function firstKeyword(statement: string): string {
  return (/^[A-Za-z_]+/.exec(statement)?.[0] ?? '').toUpperCase();
}

export function parseMySqlOperations(work: unknown): MySqlOperation[] {
  return mapSqlOperations(work, ({ sql, params }, index): MySqlOperation => {
    if (sql.includes('\0')) throw invalid(`operation ${index}: sql must not contain NUL characters`, index);
    const statement = leadingStatement(sql, index);
    if (statement === '') throw invalid(`operation ${index}: sql holds no statement`, index);
    const keyword = firstKeyword(statement);
    if (TRANSACTION_CONTROL.has(keyword)) {
      throw invalid(`operation ${index}: transaction-control and session statements (${keyword}) are not allowed in a branch`, index);
    }
    if (IMPLICIT_COMMIT.has(keyword)) {
      throw invalid(`operation ${index}: ${keyword} commits the open transaction implicitly in MySQL and would break the XA branch`, index);
    }
    if (keyword === 'CALL') {
      throw invalid(
        `operation ${index}: CALL is not allowed in a branch: a stored procedure can run statements that leave the branch's XA transaction ` +
          '(XA END, XA ROLLBACK, XA COMMIT … ONE PHASE through dynamic SQL, as sys.execute_prepared_stmt does), and the work after them would commit outside the atomic decision',
        index,
      );
    }
    if (!ALLOWED.has(keyword)) {
      throw invalid(`operation ${index}: only SELECT, INSERT, UPDATE, DELETE, REPLACE, WITH, VALUES, DO, SHOW and EXPLAIN statements may run in a branch`, index);
    }
    const readings = codeReadings(sql, index);
    for (const code of readings) {
      const file = FILE_ACCESS.exec(code);
      if (file !== null) {
        const what = file[1] !== undefined ? `INTO ${file[1].toUpperCase()}` : 'LOAD_FILE()';
        throw invalid(
          `operation ${index}: ${what} is not allowed in a branch: it reads or writes files on the database server's host, ` +
            'outside the transaction (a file written stays when the branch aborts)',
          index,
        );
      }
    }
    if (params !== undefined && !Array.isArray(params)) throw invalid(`operation ${index}: params must be an array`, index);
    const list = params ?? [];
    if (list.length > MAX_PARAMS) throw invalid(`operation ${index}: at most ${MAX_PARAMS} params`, index);
    for (const [i, p] of list.entries()) {
      const ok = p === null || typeof p === 'string' || typeof p === 'boolean' || (typeof p === 'number' && Number.isFinite(p)) || typeof p === 'object';
      if (!ok) throw invalid(`operation ${index}: param ${i} has an unsupported type`, index);
    }
    return { sql, params: list, leaksSessionState: readings.some((code) => LEAKS_SESSION_STATE.test(code)) };
  });
}

/** File access on the server's host, in the code of a statement (see codeOf). */
const FILE_ACCESS = /\bINTO\s+(OUTFILE|DUMPFILE)\b|\bLOAD_FILE\s*\(/i;

/**
 * Work that leaves state on the connection beyond its transaction (named locks, user
 * variables; a CALL, refused anyway), in the code of a statement. Every connection is reset
 * before it is pooled again (mysql-link.ts) — which also drops what a stored function set, which
 * no look at the text can see; one whose branch ran such work is closed instead.
 */
const LEAKS_SESSION_STATE = /\b(GET_LOCK|RELEASE_LOCK|RELEASE_ALL_LOCKS)\s*\(|:=|\bINTO\s+@|\bCALL\b/i;

/**
 * Whether a statement may leave state on its connection beyond its transaction, read on its
 * code (comments and literals aside); true for one that parseMySqlOperations refuses anyway.
 */
export function leaksSessionState(sql: string): boolean {
  try {
    return codeReadings(sql, 0).some((code) => LEAKS_SESSION_STATE.test(code));
  } catch {
    return true;
  }
}

/** How the session's sql_mode makes the server read quotes. */
interface Lexing {
  /** Not NO_BACKSLASH_ESCAPES: a backslash in a literal escapes the next character. */
  readonly backslashEscapes: boolean;
  /** ANSI_QUOTES: "…" is an identifier, not a string literal. */
  readonly ansiQuotes: boolean;
}

/**
 * Every way the server may read a statement's quotes. The session starts in the server's
 * sql_mode, and a procedure the branch calls may change it; a backslash that a multi-byte
 * character set swallows (should a procedure change the connection's character set) reads as
 * under NO_BACKSLASH_ESCAPES.
 */
const LEXINGS: readonly Lexing[] = [
  { backslashEscapes: true, ansiQuotes: false },
  { backslashEscapes: true, ansiQuotes: true },
  { backslashEscapes: false, ansiQuotes: false },
  { backslashEscapes: false, ansiQuotes: true },
];

/** A statement's code as each reading of it sees it. */
function codeReadings(sql: string, index: number): string[] {
  return LEXINGS.map((lexing) => codeOf(sql, lexing, index));
}

/** Index just past the literal or quoted identifier that starts at `start` (the end of the text when it is unterminated). */
function endOfQuoted(sql: string, start: number, quote: string, backslashEscapes: boolean): number {
  for (let i = start + 1; i < sql.length; i++) {
    const c = sql[i];
    if (backslashEscapes && c === '\\') i++;
    else if (c === quote) {
      if (sql[i + 1] !== quote) return i + 1;
      i++; // a doubled quote stands for itself
    }
  }
  return sql.length;
}

/**
 * The text the server parses as code, as the MySQL/MariaDB lexer reads it under one sql_mode:
 * comments become a space, a string literal becomes '' and a quoted identifier its name
 * (`` `LOAD_FILE`( `` calls the function). A "…" identifier (ANSI_QUOTES) keeps only a
 * function name, so that a double-quoted literal holding the words passes in the other
 * readings. Comment rules are the server's: `#` and `-- ` (a dash pair before a space or
 * control character) run to the end of the line, C comments do not nest. Executable comments
 * anywhere, and optimizer hints holding quotes, are refused: the server may read them as code.
 */
function codeOf(sql: string, lexing: Lexing, index: number): string {
  const parts: string[] = [];
  const special = /['"`#/-]/g;
  let i = 0;
  while (i < sql.length) {
    special.lastIndex = i;
    const found = special.exec(sql);
    const at = found === null ? sql.length : found.index;
    if (at > i) parts.push(sql.slice(i, at));
    if (found === null) break;
    const c = found[0];
    const next = sql[at + 1] ?? '';
    if (c === "'" || (c === '"' && !lexing.ansiQuotes)) {
      i = endOfQuoted(sql, at, c, lexing.backslashEscapes);
      parts.push(" '' ");
    } else if (c === '`' || c === '"') {
      i = endOfQuoted(sql, at, c, false);
      const name = sql.slice(at + 1, i - 1).split(c + c).join(c);
      parts.push(c === '`' || name.trim().toUpperCase() === 'LOAD_FILE' ? ` ${name} ` : ' _ ');
    } else if (c === '#' || startsDashComment(sql, at)) {
      const nl = sql.indexOf('\n', at);
      i = nl === -1 ? sql.length : nl;
      parts.push(' ');
    } else if (c === '/' && next === '*') {
      const opener = sql.slice(at + 2, at + 4).toUpperCase();
      if (opener.startsWith('!') || opener === 'M!') {
        throw invalid(`operation ${index}: executable comments (/*! … */) are not allowed: the server runs them as code`, index);
      }
      const close = sql.indexOf('*/', at + 2);
      if (opener.startsWith('+') && /[`'"]/.test(sql.slice(at + 3, close === -1 ? sql.length : close))) {
        throw invalid(`operation ${index}: optimizer hints (/*+ … */) holding quotes are not allowed`, index);
      }
      i = close === -1 ? sql.length : close + 2;
      parts.push(' ');
    } else {
      parts.push(c);
      i = at + 1;
    }
  }
  return parts.join('');
}
