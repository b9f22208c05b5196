/**
 * The bench's "wire floor": the least a coordinator of the transfer scenario must do on the
 * wire and the disk, and nothing else — to say what the coordinator's own layers cost on top.
 * It is a reference row, not a product: it checks nothing, keeps nothing in memory, cannot
 * recover, logs no lines and exports no metrics.
 *
 * Per `POST /v1/transactions` (the transfer's body: branches on participants `a` and `b`):
 * BEGIN + the operations + PREPARE TRANSACTION in one round trip on each database at once
 * (the coordinator's pipeline), a decision record appended to a file and fdatasynced with
 * whatever else is waiting (group commit), COMMIT PREPARED on both at once, an end record
 * written without a sync, and the answer `{"id":…,"state":"committed"}`. Any failure: 500.
 *
 *   node dist-bench/bench/perf/wire-floor-process.js <urlA> <urlB> <logFile>
 *
 * Prints `{"port":N}` on stdout once it listens on 127.0.0.1. For the bench only.
 */
import fs from 'node:fs';
import http from 'node:http';
import pg from 'pg';
import { runPipeline, runSimple, type PipelineStatement } from '../../src/participants/pg-pipeline.js';

interface Operation {
  readonly sql: string;
  readonly params?: readonly unknown[];
}

interface TransferBody {
  readonly branches: readonly { readonly participant: 'a' | 'b'; readonly operations: readonly Operation[] }[];
}

const [urlA, urlB, logFile] = process.argv.slice(2);
if (urlA === undefined || urlB === undefined || logFile === undefined) throw new Error('usage: wire-floor-process <urlA> <urlB> <logFile>');
const pools = { a: new pg.Pool({ connectionString: urlA, max: 40 }), b: new pg.Pool({ connectionString: urlB, max: 40 }) };
for (const pool of Object.values(pools)) pool.on('error', () => undefined); // servers stopping at the end
const fd = fs.openSync(logFile, 'a');

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
    fs.writev(fd, buffers, (err) => {
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

async function transfer(body: TransferBody): Promise<string> {
  const id = `floor-${process.pid}-${transactionNo++}`;
  const gids = body.branches.map((_, i) => `tcx:${id}:${i}`);
  await Promise.all(
    body.branches.map(async (branch, i) => {
      const client = await pools[branch.participant].connect();
      try {
        const statements: PipelineStatement[] = [
          { text: 'BEGIN' },
          ...branch.operations.map((op) => ({ text: op.sql, values: op.params ?? [] })),
          { text: `PREPARE TRANSACTION '${gids[i]!}'` },
        ];
        await runPipeline(client, statements, { readTimeoutMs: 30_000 });
      } finally {
        client.release();
      }
    }),
  );
  await log.append({ t: 'decision', id, decision: 'commit', branches: body.branches.map((b, i) => ({ participant: b.participant, gid: gids[i] })) }, true);
  await Promise.all(
    body.branches.map(async (branch, i) => {
      const client = await pools[branch.participant].connect();
      try {
        await runSimple(client, `COMMIT PREPARED '${gids[i]!}'`);
      } finally {
        client.release();
      }
    }),
  );
  void log.append({ t: 'ended', id }, false);
  return JSON.stringify({ id, state: 'committed' });
}

const server = http.createServer({ keepAliveTimeout: 30_000 }, (req, res) => {
  let text = '';
  req.setEncoding('utf8');
  req.on('data', (chunk: string) => (text += chunk));
  req.on('end', () => {
    Promise.resolve()
      .then(() => transfer(JSON.parse(text) as TransferBody))
      .then(
      (answer) => {
        res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(answer) });
        res.end(answer);
      },
      (err: unknown) => {
        const answer = JSON.stringify({ error: { code: 'INTERNAL', message: err instanceof Error ? err.message : String(err) } });
        res.writeHead(500, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(answer) });
        res.end(answer);
      },
    );
  });
});
server.listen(0, '127.0.0.1', () => {
  const address = server.address();
  process.stdout.write(`${JSON.stringify({ port: typeof address === 'object' && address !== null ? address.port : 0 })}\n`);
});
process.on('SIGTERM', () => process.exit(0));
