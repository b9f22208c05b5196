/**
 * The work of a postgres branch: `[{ "sql": "...", "params": [...] }]`, run in
 * order inside the branch's own database transaction. Statements that would
 * end or nest that transaction are refused before anything runs: a COMMIT
 * inside a branch would make its work durable outside the protocol.
 */

import { CoordinatorError } from '../errors.js';

export interface SqlOperation {
  readonly sql: string;
  readonly params: readonly unknown[];
}

export const MAX_SQL_LENGTH = 100_000;
export const MAX_OPERATIONS = 100;
export const MAX_PARAMS = 1_000;

/** First keywords that end, nest or escape the branch's transaction, or change the pooled session. */
const TRANSACTION_CONTROL = /^(BEGIN|START|COMMIT|END|ROLLBACK|ABORT|PREPARE|SAVEPOINT|RELEASE|SET|RESET|DISCARD|VACUUM|CHECKPOINT|LISTEN|UNLISTEN)\b/i;

function invalid(message: string, index?: number): CoordinatorError {
  return new CoordinatorError('VALIDATION_FAILED', message, index === undefined ? undefined : { details: { operation: index } });
}

/** Strips leading whitespace and SQL comments so the first keyword can be checked. */
function leadingStatement(sql: string): string {
  let s = sql;
  for (;;) {
    const trimmed = s.replace(/^\s+/, '');
    if (trimmed.startsWith('--')) {
      const nl = trimmed.indexOf('\n');
      s = nl === -1 ? '' : trimmed.slice(nl + 1);
    } else if (trimmed.startsWith('/*')) {
      const end = trimmed.indexOf('*/');
      s = end === -1 ? '' : trimmed.slice(end + 2);
    } else {
      return trimmed;
    }
  }
}

/**
 * The shape every SQL kind's operations share, checked before the dialect looks at the text:
 * a non-empty array (at most MAX_OPERATIONS) of `{sql, params?}` objects with nothing else,
 * each sql a non-empty string of at most MAX_SQL_LENGTH characters. Calls `each` per operation.
 */
export function mapSqlOperations<T>(work: unknown, each: (op: { sql: string; params: unknown }, index: number) => T): T[] {
  if (!Array.isArray(work) || work.length === 0) throw invalid('operations must be a non-empty array of {sql, params}');
  if (work.length > MAX_OPERATIONS) throw invalid(`at most ${MAX_OPERATIONS} operations per request`);
  return work.map((op: unknown, index): T => {
    if (typeof op !== 'object' || op === null || Array.isArray(op)) throw invalid(`operation ${index} must be an object`, index);
    const { sql, params } = op as { sql?: unknown; params?: unknown };
    const unknown = Object.keys(op).find((key) => key !== 'sql' && key !== 'params');
    if (unknown !== undefined) throw invalid(`operation ${index}: unknown field ${JSON.stringify(unknown.slice(0, 40))} (an SQL operation is {sql, params})`, index);
    if (typeof sql !== 'string' || sql.trim() === '') throw invalid(`operation ${index}: sql must be a non-empty string`, index);
    if (sql.length > MAX_SQL_LENGTH) throw invalid(`operation ${index}: sql longer than ${MAX_SQL_LENGTH} characters`, index);
    return each({ sql, params }, index);
  });
}

export function parseSqlOperations(work: unknown): SqlOperation[] {
  return mapSqlOperations(work, ({ sql, params }, index): SqlOperation => {
    const statement = leadingStatement(sql);
    if (statement === '') throw invalid(`operation ${index}: sql holds no statement`, index);
    if (TRANSACTION_CONTROL.test(statement)) {
      throw invalid(`operation ${index}: transaction-control and session statements are not allowed in a branch`, index);
    }
    if (params !== undefined && !Array.isArray(params)) throw invalid(`operation ${index}: params must be an array`, index);
    const list = params ?? [];
    if (list.length > MAX_PARAMS) throw invalid(`operation ${index}: at most ${MAX_PARAMS} params`, index);
    for (let i = 0; i < list.length; i++) {
      const type = typeof list[i];
      const ok = type === 'string' || type === 'number' || type === 'boolean' || type === 'object'; // null is an 'object'
      if (!ok) throw invalid(`operation ${index}: param ${i} has an unsupported type`, index);
    }
    return { sql, params: list };
  });
}
