/**
 * One statement of a mysql branch's work on its connection, and the answer it gives, bounded.
 *
 * The statement runs as a server-side prepared statement: COM_STMT_PREPARE (cached per
 * connection by mysql2), then COM_STMT_EXECUTE with the params bound. Between the two the
 * number of params must equal the number of placeholders the server counted: mysql2 sends the
 * values it is given, and the server reads as many as it expects from the packet — one param too
 * many bound garbage that was committed (`'hello', 123` for one `?` stored "\u0000\u0005hel"),
 * one too few failed with errno 1210. Either is refused before it executes (ParamCountError).
 *
 * Rows are taken one at a time as they arrive (mysql2 buffers none of them) and kept within the
 * Postgres adapter's bounds (pg-pipeline.ts): at most MAX_ROWS_RETURNED (10,000) rows per
 * operation; past it rows are counted, not kept, and the answer says `truncated: true` with the
 * count of all rows. Postgres has no bound on bytes; here the rows of all operations of one
 * enlist are kept up to MAX_BYTES_RETURNED (8 MiB, counted on the values: characters of a
 * string, base64 characters of bytes) — past that, rows are dropped the same way. Dropped rows
 * are still read (the statement ran to its end, its row count is exact), but only up to
 * MAX_ROWS_READ rows or MAX_BYTES_READ bytes in all: a result that goes on is not read to its
 * end. Its connection is closed at once (so the client stops reading and the server stops
 * sending) and the operation fails with ResultTooLargeError; the branch then votes no.
 *
 * Values come as JSON can carry them: text as strings, BIGINT and DECIMAL as strings, dates as
 * the server wrote them (mysql-connections.ts), and bytes — BLOB, BINARY, VARBINARY, BIT
 * columns, `BINARY 'x'` — as **base64 strings** (mysql2 hands them over as Buffers, which JSON
 * would turn into `{"type":"Buffer","data":[…]}`).
 *
 * The status flags of the statement's last packet (its OK, or the EOF after its rows) say
 * whether the session is still inside a transaction; the participant checks them after every
 * operation (StatementAnswer.inTransaction).
 */
import type mysql from 'mysql2/promise';

/** Rows answered per operation (the Postgres adapter's bound); more are counted, not kept. */
export const MAX_ROWS_RETURNED = 10_000;
/** Bytes of rows answered by one enlist, all its operations together; more rows are counted, not kept. */
export const MAX_BYTES_RETURNED = 8 * 1024 * 1024;
/** Rows one statement may send in all, kept or dropped; past them its connection is closed. */
export const MAX_ROWS_READ = 1_000_000;
/** Bytes one statement may send in all, kept or dropped (reading 64 MiB takes well under a second). */
export const MAX_BYTES_READ = 64 * 1024 * 1024;

export interface OperationResult {
  readonly rows: unknown[];
  readonly rowCount: number | null;
  readonly insertId?: number | string;
  readonly truncated?: boolean;
}

export interface StatementAnswer {
  readonly result: OperationResult;
  /** SERVER_STATUS_IN_TRANS of the statement's last packet; undefined when the server sent no status. */
  readonly inTransaction: boolean | undefined;
}

/** What the operations of one enlist may still answer, in bytes (shared by them, in order). */
export interface AnswerBudget {
  bytesLeft: number;
}

export const answerBudget = (): AnswerBudget => ({ bytesLeft: MAX_BYTES_RETURNED });

/** The statement's params do not match its placeholders: nothing was executed. */
export class ParamCountError extends Error {
  readonly expected: number;
  readonly given: number;
  constructor(expected: number, given: number) {
    super(`the statement has ${expected} placeholder${expected === 1 ? '' : 's'} (?) but ${given} param${given === 1 ? ' was' : 's were'} given`);
    this.name = 'ParamCountError';
    this.expected = expected;
    this.given = given;
  }
}

/** The statement's result went past MAX_ROWS_READ / MAX_BYTES_READ: its connection was closed. */
export class ResultTooLargeError extends Error {
  constructor(rows: number, bytes: number) {
    super(
      `its result went on past ${rows > MAX_ROWS_READ ? `${MAX_ROWS_READ} rows` : `${MAX_BYTES_READ} bytes`} and was not read to its end ` +
        `(at most ${MAX_ROWS_RETURNED} rows and ${MAX_BYTES_RETURNED} bytes are answered; ${rows} rows and ${bytes} bytes were read): ` +
        'the connection was closed and the branch rolls back',
    );
    this.name = 'ResultTooLargeError';
  }
}

/** The statement did not answer within its deadline: its connection was closed. */
export class StatementTimeoutError extends Error {
  constructor(ms: number) {
    super(`the statement did not answer within ${ms} ms`);
    this.name = 'StatementTimeoutError';
  }
}

const SERVER_STATUS_IN_TRANS = 0x0001;

/** The parts of mysql2's callback connection and its Execute command used here (mysql2/lib/base/connection.js, lib/commands). */
interface WirePacket {
  isEOF(): boolean;
  eofStatusFlags(): number;
}
interface ExecuteCommand {
  on(event: 'fields', listener: (fields: readonly { readonly name: string }[] | undefined) => void): unknown;
  on(event: 'result', listener: (row: unknown) => void): unknown;
  on(event: 'error', listener: (err: unknown) => void): unknown;
  on(event: 'end', listener: () => void): unknown;
  execute(packet: WirePacket | undefined, connection: unknown): boolean;
}
interface CoreConnection {
  prepare(sql: string, callback: (err: unknown, statement?: { readonly parameters?: readonly unknown[] }) => void): unknown;
  execute(options: { sql: string; values: unknown[] }): ExecuteCommand;
  readonly stream?: { destroy(): void };
}

const coreOf = (conn: mysql.Connection): CoreConnection => (conn as unknown as { connection: CoreConnection }).connection;

/** Closes a connection's socket at once: unlike end(), no more of a result is read from it. */
export function destroySocket(conn: mysql.Connection): void {
  conn.destroy();
  coreOf(conn)?.stream?.destroy();
}

/** Answer bytes of a value as it is answered (see the module comment). */
function valueBytes(value: unknown): number {
  if (value === null || value === undefined) return 4;
  if (typeof value === 'string') return value.length + 2;
  if (Buffer.isBuffer(value)) return Math.ceil(value.length / 3) * 4 + 2;
  if (typeof value !== 'object') return 24;
  try {
    return JSON.stringify(value)?.length ?? 4;
  } catch {
    return 24;
  }
}

/** A row as it is answered: bytes as base64 strings. */
function answeredRow(row: Record<string, unknown>): Record<string, unknown> {
  let copy: Record<string, unknown> | undefined;
  for (const [key, value] of Object.entries(row)) {
    if (!Buffer.isBuffer(value)) continue;
    copy ??= { ...row };
    copy[key] = value.toString('base64');
  }
  return copy ?? row;
}

interface ResultHeader {
  readonly affectedRows?: unknown;
  readonly insertId?: unknown;
}

function headerResult(header: ResultHeader): OperationResult {
  const affected = typeof header.affectedRows === 'number' ? header.affectedRows : null;
  const insertId = header.insertId;
  const hasId = (typeof insertId === 'number' && insertId !== 0) || (typeof insertId === 'string' && insertId !== '0');
  return { rows: [], rowCount: affected, ...(hasId ? { insertId: insertId as number | string } : {}) };
}

/**
 * Runs one statement with its params, within `timeoutMs` for prepare and execute together.
 * Rejects with the server's error, ParamCountError (nothing executed), ResultTooLargeError or
 * StatementTimeoutError (both: the connection is closed), or mysql2's error for a lost connection.
 */
export function runStatement(conn: mysql.Connection, sql: string, values: readonly unknown[], timeoutMs: number, budget: AnswerBudget): Promise<StatementAnswer> {
  const core = coreOf(conn);
  return new Promise<StatementAnswer>((resolve, reject) => {
    let settled = false;
    const finish = (outcome: () => void): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      outcome();
    };
    const abandon = (err: Error): void => {
      finish(() => reject(err));
      destroySocket(conn);
    };
    const timer = setTimeout(() => abandon(new StatementTimeoutError(timeoutMs)), timeoutMs);
    core.prepare(sql, (err, statement) => {
      if (settled) return;
      if (err !== null && err !== undefined) {
        finish(() => reject(err));
        return;
      }
      const expected = statement?.parameters?.length ?? 0;
      if (expected !== values.length) {
        finish(() => reject(new ParamCountError(expected, values.length)));
        return;
      }
      try {
        execute();
      } catch (thrown) {
        finish(() => reject(thrown));
      }
    });

    function execute(): void {
      const rows: unknown[] = [];
      let header: ResultHeader | undefined;
      let sets = 0;
      /** The packets now are the rows of a result set (else an OK packet's header comes next). */
      let inSet = false;
      let columnBytes = 0;
      let read = 0;
      let readBytes = 0;
      let truncated = false;
      let status: number | undefined;
      const command = core.execute({ sql, values: [...values] });
      // The status flags of a result's last EOF packet, which mysql2 reads but does not hand on.
      const step = command.execute.bind(command);
      command.execute = (packet, connection) => {
        if (packet !== undefined && packet !== null && packet.isEOF()) status = packet.eofStatusFlags();
        return step(packet, connection);
      };
      command.on('fields', (fields) => {
        inSet = fields !== undefined;
        if (inSet) sets++;
        columnBytes = (fields ?? []).reduce((sum, f) => sum + f.name.length + 4, 2);
      });
      command.on('result', (row) => {
        if (settled) return;
        if (!inSet) {
          if (sets === 0) header ??= row as ResultHeader;
          const s = (row as { serverStatus?: unknown } | null)?.serverStatus;
          if (typeof s === 'number') status = s;
          return;
        }
        // Only the first result set is answered (a statement has one).
        if (sets > 1) return;
        const columns = row as Record<string, unknown>;
        let bytes = columnBytes;
        for (const key in columns) bytes += valueBytes(columns[key]);
        read++;
        readBytes += bytes;
        if (!truncated && rows.length < MAX_ROWS_RETURNED && bytes <= budget.bytesLeft) {
          rows.push(answeredRow(columns));
          budget.bytesLeft -= bytes;
        } else {
          truncated = true;
          if (read > MAX_ROWS_READ || readBytes > MAX_BYTES_READ) abandon(new ResultTooLargeError(read, readBytes));
        }
      });
      command.on('error', (err) => finish(() => reject(err)));
      command.on('end', () =>
        finish(() => {
          const inTransaction = status === undefined ? undefined : (status & SERVER_STATUS_IN_TRANS) !== 0;
          const result: OperationResult =
            sets > 0 || header === undefined ? { rows, rowCount: read, ...(truncated ? { truncated: true } : {}) } : headerResult(header);
          resolve({ result, inTransaction });
        }),
      );
    }
  });
}
