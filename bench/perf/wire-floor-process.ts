/**
 * The bench's "wire floor": the least a coordinator must do on the wire and the disk for one
 * of the bench's scenarios, and nothing else — to say what the coordinator's own layers cost
 * on top. It is a reference row, not a product: it checks nothing, keeps nothing in memory,
 * cannot recover, logs no lines and exports no metrics.
 *
 * Per `POST /v1/transactions`, with the scenario's body:
 *
 *   postgres  (the transfer: branches on participants `a` and `b`) BEGIN + the operations +
 *             PREPARE TRANSACTION in one round trip on each database at once (the
 *             coordinator's pipeline), a decision record appended to a file and fdatasynced
 *             with whatever else is waiting (group commit), COMMIT PREPARED on both at once,
 *             an end record appended without a sync (written with the next batch).
 *   http      (empty-http: branches on `h1` and `h2`) a forced record of the branches (the
 *             coordinator's prepare-intent: an HTTP participant cannot list what it
 *             prepared), prepare on both at once, the forced decision, commit on both at
 *             once, the unforced end record.
 *
 * The answer is `{"id":…,"state":"committed"}`; any failure, 500.
 *
 *   node dist-bench/bench/perf/wire-floor-process.js postgres <urlA> <urlB> <logFile>
 *   node dist-bench/bench/perf/wire-floor-process.js http <portA> <portB> <logFile>
 *
 * Prints `{"port":N}` on stdout once it listens on 127.0.0.1. For the bench only.
 */
import fs from 'node:fs';
import http from 'node:http';
import pg from 'pg';
import { Pool } from 'undici';
import { runPipeline, runSimple, type PipelineStatement } from '../../src/participants/pg-pipeline.js';
import { callHttpParticipant } from './scenarios.js';

interface Operation {
  readonly sql: string;
  readonly params?: readonly unknown[];
}

interface TransactionBody {
  readonly branches: readonly { readonly participant: string; readonly operations?: readonly Operation[] }[];
}

const [mode, targetA, targetB, logFile] = process.argv.slice(2);
if ((mode !== 'postgres' && mode !== 'http') || targetA === undefined || targetB === undefined || logFile === undefined) {
  throw new Error('usage: wire-floor-process postgres <urlA> <urlB> <logFile> | http <portA> <portB> <logFile>');
}
const fd = fs.openSync(logFile, 'w');
/** Like the coordinator's file log: the file kept extended (sparse) 1 MiB past what was written, so an fdatasync need not journal a new size. */
const PREALLOCATION_WINDOW_BYTES = 1024 * 1024;
let position = 0;
let fileSize = 0;

/** Group commit: one writev and one fdatasync for every record appended while the last ones were written. */
class GroupLog {
  #pending: Buffer[] = [];
  #waiters: (() => void)[] = [];
  #syncRequested = false;
  #flushing = false;

  append(record: object, sync: boolean): Promise<void> | undefined {
    this.#pending.push(Buffer.from(`${JSON.stringify(record)}\n`));
    if (!sync) return undefined;
    this.#syncRequested = true;
    const durable = new Promise<void>((resolve) => this.#waiters.push(resolve));
    if (!this.#flushing) this.#flush();
    return durable;
  }

  #flush(): void {
    this.#flushing = true;
    const buffers = this.#pending;
    const waiters = this.#waiters;
    this.#pending = [];
    this.#waiters = [];
    this.#syncRequested = false;
    const at = position;
    for (const b of buffers) position += b.length;
    if (position > fileSize) fs.ftruncateSync(fd, (fileSize = position + PREALLOCATION_WINDOW_BYTES));
    // A failed write or sync ends the process (uncaught): a reference with a broken log has nothing left to measure.
    fs.writev(fd, buffers, at, (err) => {
      if (err !== null) throw err;
      fs.fdatasync(fd, (syncErr) => {
        if (syncErr !== null) throw syncErr;
        for (const resolve of waiters) resolve();
        if (this.#syncRequested) this.#flush();
        else this.#flushing = false;
      });
    });
  }
}

const log = new GroupLog();
let transactionNo = 0;

/** The transfer's wire work: one pipelined round trip per database to prepare, one to commit. */
function postgresTransfer(urlA: string, urlB: string): (body: TransactionBody) => Promise<string> {
  const pools: Record<string, pg.Pool> = { a: new pg.Pool({ connectionString: urlA, max: 40 }), b: new pg.Pool({ connectionString: urlB, max: 40 }) };
  for (const pool of Object.values(pools)) pool.on('error', () => undefined); // servers stopping at the end
  const poolOf = (participant: string): pg.Pool => {
    const pool = pools[participant];
    if (pool === undefined) throw new Error(`no participant ${participant}`);
    return pool;
  };
  /** A pooled session for `work`; a session whose work failed is closed, not reused (it may sit in a failed block). */
  const onSession = async <T>(participant: string, work: (client: pg.PoolClient) => Promise<T>): Promise<T> => {
    const client = await poolOf(participant).connect();
    try {
      const result = await work(client);
      client.release();
      return result;
    } catch (err) {
      client.release(err instanceof Error ? err : true);
      throw err;
    }
  };
  return async (body) => {
    const id = `floor-${process.pid}-${transactionNo++}`;
    const gids = body.branches.map((_, i) => `tcx:${id}:${i}`);
    const prepared = await Promise.allSettled(
      body.branches.map((branch, i) =>
        onSession(branch.participant, (client) => {
          const statements: PipelineStatement[] = [
            { text: 'BEGIN' },
            ...(branch.operations ?? []).map((op) => ({ text: op.sql, values: op.params ?? [] })),
            { text: `PREPARE TRANSACTION '${gids[i]!}'` },
          ];
          return runPipeline(client, statements, { readTimeoutMs: 30_000 });
        }),
      ),
    );
    const failed = prepared.find((p) => p.status === 'rejected');
    if (failed !== undefined) {
      // What did prepare must not keep its locks: rolled back (best effort), then the 500.
      await Promise.all(
        body.branches.map((branch, i) =>
          prepared[i]!.status === 'fulfilled' ? onSession(branch.participant, (client) => runSimple(client, `ROLLBACK PREPARED '${gids[i]!}'`)).catch(() => undefined) : undefined,
        ),
      );
      throw failed.reason;
    }
    await log.append({ t: 'decision', id, decision: 'commit', branches: body.branches.map((b, i) => ({ participant: b.participant, gid: gids[i] })) }, true);
    await Promise.all(body.branches.map((branch, i) => onSession(branch.participant, (client) => runSimple(client, `COMMIT PREPARED '${gids[i]!}'`))));
    void log.append({ t: 'ended', id }, false);
    return JSON.stringify({ id, state: 'committed' });
  };
}

/** empty-http's wire work: the participants' prepare and commit calls around two forced records. */
function httpTransaction(portA: string, portB: string): (body: TransactionBody) => Promise<string> {
  const pools: Record<string, Pool> = Object.fromEntries(
    [
      ['h1', portA],
      ['h2', portB],
    ].map(([name, port]) => [name, new Pool(`http://127.0.0.1:${port!}`, { connections: 64, pipelining: 1 })]),
  );
  const call = (participant: string, verb: 'prepare' | 'commit', transactionId: string, branchNo: number): Promise<void> => {
    const pool = pools[participant];
    if (pool === undefined) return Promise.reject(new Error(`no participant ${participant}`));
    return callHttpParticipant(pool, verb, transactionId, branchNo);
  };
  return async (body) => {
    const id = `floor-${process.pid}-${transactionNo++}`;
    const participants = body.branches.map((b) => b.participant);
    await log.append({ t: 'prepare-intent', id, branches: participants }, true);
    await Promise.all(participants.map((p, i) => call(p, 'prepare', id, i + 1)));
    await log.append({ t: 'decision', id, decision: 'commit' }, true);
    await Promise.all(participants.map((p, i) => call(p, 'commit', id, i + 1)));
    void log.append({ t: 'ended', id }, false);
    return JSON.stringify({ id, state: 'committed' });
  };
}

const transaction = mode === 'postgres' ? postgresTransfer(targetA, targetB) : httpTransaction(targetA, targetB);

const server = http.createServer({ keepAliveTimeout: 30_000 }, (req, res) => {
  let text = '';
  req.setEncoding('utf8');
  req.on('data', (chunk: string) => (text += chunk));
  req.on('end', () => {
    const answered = (status: number, answer: string): void => {
      res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(answer) });
      res.end(answer);
    };
    Promise.resolve()
      .then(() => transaction(JSON.parse(text) as TransactionBody))
      .then(
        (answer) => answered(200, answer),
        (err: unknown) => answered(500, JSON.stringify({ error: { code: 'INTERNAL', message: err instanceof Error ? err.message : String(err) } })),
      );
  });
});
server.listen(0, '127.0.0.1', () => {
  const address = server.address();
  process.stdout.write(`${JSON.stringify({ port: typeof address === 'object' && address !== null ? address.port : 0 })}\n`);
});
process.on('SIGTERM', () => process.exit(0));
