/**
 * Several statements in one round trip on one node-postgres client.
 *
 * Each statement goes out as Parse / Bind / (Describe) / Execute, and one Sync
 * follows the last, all in a single write. The server runs them in order; the
 * first error makes it skip everything up to the Sync, so a statement runs only
 * if every statement before it succeeded — a PREPARE TRANSACTION at the end of
 * the pipeline prepares only work that fully ran.
 *
 * Built on node-postgres's extension point for custom queries (a "submittable",
 * as pg-cursor and pg-query-stream are): the client's queue, its read timeout
 * and its error handling apply unchanged; messages are encoded by pg's own
 * protocol package and values by pg's `prepareValue`. The messages go out as one
 * buffer — one write() instead of a writev() of a dozen pieces, which on a busy
 * loopback costs several times more. Rows are collected up to a bound; past it
 * they are counted.
 */

import pg from 'pg';
import { DatabaseError, serialize } from 'pg-protocol';

export interface PipelineStatement {
  readonly text: string;
  readonly values?: readonly unknown[];
  /** Describe the statement and collect its rows (the branch's own operations). */
  readonly rows?: boolean;
}

export interface StatementResult {
  /** The command tag's verb: UPDATE, PREPARE, ROLLBACK (a PREPARE in a failed block), ... */
  readonly command: string | null;
  readonly rowCount: number | null;
  readonly rows: unknown[];
  /** More rows came back than were kept. */
  readonly truncated: boolean;
}

/**
 * The statement at `statementIndex` failed (the server said so); the ones before it ran, the
 * ones after it were skipped. -1: the exchange failed on the client's side (a read timeout, a
 * lost connection) — how far the server got is unknown — or, with `sent` false, nothing was
 * sent at all (a value that cannot be encoded).
 */
export class PipelineError extends Error {
  readonly statementIndex: number;
  readonly code: string | undefined;
  readonly results: readonly StatementResult[];
  readonly sent: boolean;
  constructor(cause: unknown, statementIndex: number, results: readonly StatementResult[], options: { sent?: boolean } = {}) {
    super(cause instanceof Error ? cause.message : String(cause), { cause });
    this.name = 'PipelineError';
    this.statementIndex = statementIndex;
    this.sent = options.sent ?? true;
    const code = (cause as { code?: unknown } | null)?.code;
    this.code = typeof code === 'string' ? code : undefined;
    this.results = results;
  }
}

/** The parts of pg's Connection a submittable writes to (pg/lib/connection.js). */
interface WireConnection {
  readonly stream: { readonly writable: boolean; write(buffer: Buffer): boolean };
  query(text: string): void;
}

const SYNC = serialize.sync();

/** pg's row parser (pg/lib/result.js), exported as pg.Result at run time. */
interface PgResult {
  command: string | null;
  rowCount: number | null;
  addFields(fields: unknown[]): void;
  parseRow(fields: unknown[]): unknown;
  addCommandComplete(msg: unknown): void;
}

const runtime = pg as unknown as {
  Result: new (rowMode: string | undefined, types: unknown) => PgResult;
  utils: { prepareValue: (value: unknown) => unknown };
  types: unknown;
};

/** The verb and row count of a CommandComplete message, read by pg's own parser. */
function commandTag(msg: unknown): { command: string | null; rowCount: number | null } {
  const tag = new runtime.Result(undefined, runtime.types);
  tag.addCommandComplete(msg);
  return { command: tag.command, rowCount: tag.rowCount };
}

/** Row bytes one exchange answers at most (all statements together); the rest is counted, not kept. */
export const MAX_ANSWER_BYTES = 8 * 1024 * 1024;

class Pipeline {
  /** node-postgres's read timeout for this exchange (it reads it from the submittable). */
  readonly query_timeout: number | undefined;
  readonly #statements: readonly PipelineStatement[];
  readonly #maxRows: number;
  /** Row bytes still answered in this exchange (all statements together); past it rows are counted, not kept. */
  #bytesLeft: number;
  readonly #results: StatementResult[] = [];
  #index = 0;
  #parser: PgResult | undefined;
  #rows: unknown[] = [];
  #extraRows = 0;
  #settled = false;
  /** node-postgres calls this (wrapped in its read timeout) exactly like a Query's callback. */
  callback: ((err: Error | null, results?: StatementResult[]) => void) | undefined;

  constructor(statements: readonly PipelineStatement[], maxRows: number, maxBytes: number, readTimeoutMs: number | undefined) {
    this.#statements = statements;
    this.#maxRows = maxRows;
    this.#bytesLeft = maxBytes;
    this.query_timeout = readTimeoutMs;
  }

  submit(connection: WireConnection): Error | null {
    const messages: Buffer[] = [];
    try {
      for (const s of this.#statements) {
        messages.push(serialize.parse({ text: s.text }));
        messages.push(serialize.bind({ values: [...(s.values ?? [])], valueMapper: runtime.utils.prepareValue }));
        if (s.rows === true) messages.push(serialize.describe({ type: 'P', name: '' }));
        messages.push(serialize.execute({ portal: '', rows: 0 }));
      }
    } catch (err) {
      // A value pg cannot encode: nothing was sent; the client reports the error and moves on.
      return new PipelineError(err, -1, [], { sent: false });
    }
    messages.push(SYNC);
    if (!connection.stream.writable) return new Error('the connection is closed');
    connection.stream.write(Buffer.concat(messages));
    return null;
  }

  handleRowDescription(msg: { fields: unknown[] }): void {
    this.#parser = new runtime.Result(undefined, runtime.types);
    this.#parser.addFields(msg.fields);
  }

  /** `length`: the DataRow message's size as the server sent it (pg-protocol sets it). */
  handleDataRow(msg: { fields: unknown[]; length: number }): void {
    const size = msg.length;
    if (this.#extraRows > 0 || this.#rows.length >= this.#maxRows || size > this.#bytesLeft) {
      this.#extraRows++;
      return;
    }
    this.#bytesLeft -= size;
    try {
      this.#rows.push(this.#parser?.parseRow(msg.fields));
    } catch (err) {
      this.#fail(err);
    }
  }

  handleCommandComplete(msg: unknown): void {
    const tag = commandTag(msg);
    this.#results.push({ command: tag.command, rowCount: tag.rowCount, rows: this.#rows, truncated: this.#extraRows > 0 });
    this.#next();
  }

  handleEmptyQuery(): void {
    this.#results.push({ command: null, rowCount: null, rows: [], truncated: false });
    this.#next();
  }

  handleError(err: Error): void {
    this.#fail(err);
  }

  handleReadyForQuery(): void {
    if (this.#settled) return;
    if (this.#results.length !== this.#statements.length) {
      this.#fail(new Error(`the server answered ${this.#results.length} of ${this.#statements.length} statements`));
      return;
    }
    this.#settled = true;
    this.callback?.(null, this.#results);
  }

  handlePortalSuspended(): void {
    this.#fail(new Error('unexpected portal suspension'));
  }

  handleCopyInResponse(connection: { sendCopyFail(msg: string): void }): void {
    connection.sendCopyFail('COPY is not supported in a branch');
  }

  handleCopyData(): void {
    // COPY is refused above
  }

  #next(): void {
    this.#index++;
    this.#parser = undefined;
    this.#rows = [];
    this.#extraRows = 0;
  }

  #fail(err: unknown): void {
    if (this.#settled) return;
    this.#settled = true;
    // Only an error the server reported belongs to a statement. Anything else (the client's read
    // timeout, a lost connection) says nothing about how far the server got: it may still be
    // running the statements it has read, PREPARE included.
    const index = err instanceof DatabaseError ? this.#index : -1;
    this.callback?.(err instanceof PipelineError ? err : new PipelineError(err, index, this.#results));
  }
}

/**
 * Runs the statements in one round trip; rejects with PipelineError naming the statement that
 * failed. `readTimeoutMs` bounds the whole exchange (the server bounds each statement by
 * itself, so give it room for all of them).
 */
export function runPipeline(
  client: pg.ClientBase,
  statements: readonly PipelineStatement[],
  options: { maxRows?: number; maxBytes?: number; readTimeoutMs?: number } = {},
): Promise<StatementResult[]> {
  return new Promise((resolve, reject) => {
    const pipeline = new Pipeline(statements, options.maxRows ?? 10_000, options.maxBytes ?? MAX_ANSWER_BYTES, options.readTimeoutMs);
    pipeline.callback = (err, results) => {
      if (err !== null) {
        reject(err instanceof PipelineError ? err : new PipelineError(err, -1, []));
      } else {
        resolve(results ?? []);
      }
    };
    (client as unknown as { query(submittable: Pipeline): void }).query(pipeline);
  });
}

/**
 * One parameterless statement by the simple query protocol (one message, no row parsing):
 * the cheapest call there is, for COMMIT PREPARED and the like. Resolves with its command tag.
 */
class SimpleStatement {
  readonly #text: string;
  #command: string | null = null;
  #settled = false;
  callback: ((err: Error | null, command?: string | null) => void) | undefined;

  constructor(text: string) {
    this.#text = text;
  }

  submit(connection: WireConnection): Error | null {
    connection.query(this.#text);
    return null;
  }

  handleRowDescription(): void {
    // rows are not wanted
  }

  handleDataRow(): void {
    // rows are not wanted
  }

  handleCommandComplete(msg: unknown): void {
    this.#command = commandTag(msg).command;
  }

  handleEmptyQuery(): void {
    // nothing ran
  }

  handleError(err: Error): void {
    if (this.#settled) return;
    this.#settled = true;
    this.callback?.(err);
  }

  handleReadyForQuery(): void {
    if (this.#settled) return;
    this.#settled = true;
    this.callback?.(null, this.#command);
  }

  handlePortalSuspended(): void {
    this.handleError(new Error('unexpected portal suspension'));
  }

  handleCopyInResponse(connection: { sendCopyFail(msg: string): void }): void {
    connection.sendCopyFail('COPY is not supported here');
  }

  handleCopyData(): void {
    // COPY is refused above
  }
}

/** Runs one parameterless statement with the simple query protocol; resolves with its command tag. */
export function runSimple(client: pg.ClientBase, text: string): Promise<string | null> {
  return new Promise((resolve, reject) => {
    const statement = new SimpleStatement(text);
    statement.callback = (err, command) => (err === null ? resolve(command ?? null) : reject(err));
    (client as unknown as { query(submittable: SimpleStatement): void }).query(statement);
  });
}
