/**
 * PostgresLog: the coordinator's write-ahead log kept in a PostgreSQL database
 * (TCX_LOG_URL), for operators who already run Postgres highly available — the
 * coordinator inherits its durability. The same records and the same contract
 * as FileLog (see file-log.ts), in these tables (created and migrated on open
 * under an advisory lock; see postgres-log-schema.ts):
 *
 *   tcx_log_schema    the schema version
 *   tcx_lease         per coordinator id: who holds it, until when, under which
 *                     epoch (src/cluster/lease-store.ts)
 *   tcx_log           (coordinator_id, seq, epoch, record): records in append
 *                     order, each with the epoch that wrote it
 *   tcx_log_snapshot  per coordinator id: the compaction snapshot (records as a
 *                     JSON array) and the seq it covers; tcx_log_file holds the
 *                     immutable files it names (sealed finished-transaction buckets)
 *   tcx_participant   the participant registry the instances share (src/cluster)
 *
 * Records are stored as JSON text, exactly as encoded (jsonb would refuse a
 * \u0000 in a payload, and fail-stop the coordinator on a client's input).
 *
 * Writing: one writer loop takes the whole in-memory batch and inserts it with
 * one multi-row INSERT in one transaction: group commit. The transaction first
 * checks that the lease this log was opened under is still current and has not
 * lapsed (by the database's clock), so a writer that lost its lease — paused,
 * partitioned, or fenced out by a newer holder of the id — can commit nothing. A batch
 * with a forced record commits with synchronous_commit on (the commit is
 * durable when it returns); an unforced-only batch, after lazyFlushDelayMs,
 * with synchronous_commit off. Any failure is fail-stop, as for FileLog.
 *
 * Compaction: once more records were appended since the snapshot than
 * maxRecordsBeforeCompaction (and than the snapshot holds), the writer calls
 * snapshot() synchronously between batches — the rotation point — and commits
 * the batch appended before it, the new snapshot and its new files in one
 * transaction. Records the snapshot covers are then deleted in bounded batches.
 */

import pg from 'pg';
import type { Logger } from 'pino';
import { LogFailedError, asError, errorMessage } from '../errors.js';
import type { LogStats, SnapshotContent } from './file-log.js';
import { migrate } from './postgres-log-schema.js';
import { events } from '../observability/events.js';
import type { SnapshotFile } from './snapshot-files.js';
import { SnapshotPreparation } from './snapshot-preparation.js';

export interface PostgresLogOptions {
  readonly url: string;
  readonly coordinatorId: string;
  /** The epoch of the lease (tcx_lease) this writer holds on coordinatorId. */
  readonly epoch: string;
  readonly snapshot: () => Iterable<unknown> | SnapshotContent;
  /** Work snapshot() would otherwise do at the rotation point, done beforehand (see snapshot-preparation.ts). */
  readonly prepareSnapshot?: () => Promise<void>;
  readonly maxRecordsBeforeCompaction?: number;
  readonly lazyFlushDelayMs?: number;
  /** Deadline of every statement and of the connect (ms). */
  readonly timeoutMs?: number;
  /** How long an open transaction may sit idle before the server ends it: twice this is the lease. */
  readonly idleInTransactionMs?: number;
  readonly logger?: Logger;
}

interface Waiter {
  resolve: () => void;
  reject: (err: Error) => void;
}

interface Batch {
  texts: string[];
  bytes: number;
  sync: boolean;
  due: boolean;
  waiters: Waiter[];
}

const newBatch = (): Batch => ({ texts: [], bytes: 0, sync: false, due: false, waiters: [] });
const DELETE_BATCH = 10_000;

/** What the log holds for one coordinator id: the snapshot's records and files, then the records after it. */
export interface LogContent {
  readonly records: unknown[];
  readonly files: Map<string, Uint8Array>;
  readonly uptoSeq: number;
  readonly lastSeq: number;
  readonly snapshotRecords: number;
  /** Every stored file's name, the snapshot's and leftovers of an interrupted compaction. */
  readonly storedFiles: Set<string>;
}

/**
 * Reads one coordinator id's log. The caller sees one consistent state: either it is the id's
 * only writer, or it reads inside one REPEATABLE READ transaction (a compaction in between
 * could otherwise delete records the snapshot it read does not cover).
 */
export async function readLogContent(client: pg.ClientBase, coordinatorId: string): Promise<LogContent> {
  const snap = await client.query<{ upto_seq: string; records: string; files: string[] }>('SELECT upto_seq, records, files FROM tcx_log_snapshot WHERE coordinator_id = $1', [
    coordinatorId,
  ]);
  const uptoSeq = Number(snap.rows[0]?.upto_seq ?? 0);
  const records: unknown[] = snap.rows[0] === undefined ? [] : (JSON.parse(snap.rows[0].records) as unknown[]);
  const snapshotRecords = records.length;
  const files = new Map<string, Uint8Array>();
  const named = new Set(snap.rows[0]?.files ?? []);
  const stored = await client.query<{ name: string; data: Buffer }>('SELECT name, data FROM tcx_log_file WHERE coordinator_id = $1', [coordinatorId]);
  for (const row of stored.rows) if (named.has(row.name)) files.set(row.name, row.data);
  const rows = await client.query<{ seq: string; record: string }>('SELECT seq, record FROM tcx_log WHERE coordinator_id = $1 AND seq > $2 ORDER BY seq', [coordinatorId, uptoSeq]);
  let lastSeq = uptoSeq;
  for (const row of rows.rows) {
    records.push(JSON.parse(row.record));
    lastSeq = Number(row.seq);
  }
  return { records, files, uptoSeq, lastSeq, snapshotRecords, storedFiles: new Set(stored.rows.map((r) => r.name)) };
}

export class PostgresLog {
  readonly #client: pg.Client;
  readonly #options: PostgresLogOptions;
  readonly #epoch: string;
  readonly #logger: Logger | undefined;
  #nextSeq: number;
  /** Records the snapshot covers that may still be in tcx_log (deleted in bounded batches). */
  #deleteUpTo: number;
  #sinceSnapshot = 0;
  #snapshotRecords = 0;
  #storedFiles: Set<string>;
  #batch = newBatch();
  /** The waiters of the batch being committed: a failure rejects them too. */
  #inflight: Waiter[] = [];
  #compactWaiters: Waiter[] = [];
  #compacting: Waiter[] = [];
  #writer: Promise<void> | undefined;
  #lazyTimer: NodeJS.Timeout | undefined;
  #failure: LogFailedError | undefined;
  #closing: Promise<void> | undefined;
  readonly #counters = { appendedRecords: 0, fsyncs: 0, compactions: 0, lastFsyncMicros: 0 };
  readonly #preparation: SnapshotPreparation;

  private constructor(client: pg.Client, options: PostgresLogOptions, epoch: string, state: { nextSeq: number; uptoSeq: number; snapshotRecords: number; files: Set<string> }) {
    this.#client = client;
    this.#options = options;
    this.#epoch = epoch;
    this.#logger = options.logger?.child({ component: 'wal', backend: 'postgres' });
    this.#preparation = new SnapshotPreparation(options.prepareSnapshot, () => {
      if (this.#closing === undefined) this.#kick();
    }, this.#logger);
    this.#nextSeq = state.nextSeq;
    this.#deleteUpTo = state.uptoSeq;
    this.#snapshotRecords = state.snapshotRecords;
    this.#sinceSnapshot = state.nextSeq - 1 - state.uptoSeq;
    this.#storedFiles = state.files;
  }

  /** Opens the log (creating or migrating the schema) under a lease the caller holds, and returns every live record. */
  static async open(options: PostgresLogOptions): Promise<{ log: PostgresLog; records: unknown[]; files: Map<string, Uint8Array> }> {
    const timeoutMs = options.timeoutMs ?? 10_000;
    const client = new pg.Client({
      connectionString: options.url,
      connectionTimeoutMillis: timeoutMs,
      statement_timeout: timeoutMs,
      query_timeout: timeoutMs + 1_000,
      // A writer that stops mid-transaction (paused, partitioned) must not hold the lease row's
      // lock for long: the server ends its transaction, and keepalives notice a dead peer.
      idle_in_transaction_session_timeout: Math.max(500, Math.floor((options.idleInTransactionMs ?? timeoutMs) / 2)),
      keepAlive: true,
      application_name: `tcx-log:${options.coordinatorId}`,
    });
    client.on('error', () => undefined); // a broken connection fails the next query: fail-stop there
    try {
      await client.connect();
      await migrate(client);
      const { records, files, uptoSeq, lastSeq, snapshotRecords, storedFiles } = await readLogContent(client, options.coordinatorId);
      const log = new PostgresLog(client, options, options.epoch, { nextSeq: lastSeq + 1, uptoSeq, snapshotRecords, files: storedFiles });
      log.#kick(); // leftovers the last snapshot covers are deleted in the background
      return { log, records, files };
    } catch (err) {
      await client.end().catch(() => undefined);
      throw new LogFailedError(`cannot open the Postgres log: ${errorMessage(err)}`, err);
    }
  }

  /** Queues a record; resolves once committed (unforced: committed without waiting for the commit's flush). */
  append(payload: unknown, options: { force: boolean }): Promise<void> {
    if (this.#failure !== undefined) return Promise.reject(this.#failure);
    if (this.#closing !== undefined) return Promise.reject(new LogFailedError('the write-ahead log is closed'));
    let text: string;
    try {
      text = JSON.stringify(payload);
    } catch (err) {
      return Promise.reject(asError(err));
    }
    return new Promise<void>((resolve, reject) => {
      const b = this.#batch;
      b.texts.push(text);
      b.bytes += text.length;
      b.waiters.push({ resolve, reject });
      if (options.force) {
        b.sync = true;
        this.#kick();
      } else {
        this.#lazyTimer ??= setTimeout(() => {
          this.#lazyTimer = undefined;
          this.#batch.due = true;
          this.#kick();
        }, this.#options.lazyFlushDelayMs ?? 10);
        this.#lazyTimer.unref();
      }
    });
  }

  /** Commits (durably) everything appended so far. */
  flush(): Promise<void> {
    if (this.#failure !== undefined) return Promise.reject(this.#failure);
    if (this.#closing !== undefined) return this.#closing;
    return this.#barrier();
  }

  compact(): Promise<void> {
    if (this.#failure !== undefined) return Promise.reject(this.#failure);
    if (this.#closing !== undefined) return Promise.reject(new LogFailedError('the write-ahead log is closed'));
    return new Promise<void>((resolve, reject) => {
      this.#compactWaiters.push({ resolve, reject });
      this.#kick();
    });
  }

  close(): Promise<void> {
    this.#closing ??= this.#shutdown();
    return this.#closing;
  }

  get failed(): Error | undefined {
    return this.#failure;
  }

  stats(): LogStats {
    return { segments: 1, currentSegmentBytes: 0, ...this.#counters };
  }

  async #shutdown(): Promise<void> {
    let error: unknown;
    if (this.#failure === undefined) await this.#barrier().catch((err: unknown) => (error = err));
    await this.#writer;
    clearTimeout(this.#lazyTimer);
    await this.#client.end().catch(() => undefined);
    if (error !== undefined) throw error;
  }

  #barrier(): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.#batch.waiters.push({ resolve, reject });
      this.#batch.sync = true;
      this.#kick();
    });
  }

  #kick(): void {
    if (this.#writer !== undefined || this.#failure !== undefined) return;
    this.#writer = this.#runWriter();
  }

  /** The only writer. Never rejects: failures go to failStop. */
  async #runWriter(): Promise<void> {
    try {
      await Promise.resolve(); // appends made in the same tick join the first batch
      while (this.#failure === undefined) {
        // A compaction asked for runs at once; one the record count calls for waits for its
        // snapshot's preparation, and the batches go on meanwhile.
        if (this.#compactionDue() && (this.#compactWaiters.length > 0 || this.#preparation.ready())) {
          await this.#compactNow();
          continue;
        }
        const b = this.#batch;
        if (b.waiters.length > 0 && (b.sync || b.due)) {
          await this.#commit(this.#takeBatch());
          continue;
        }
        if (this.#deleteUpTo > 0 && this.#closing === undefined) {
          await this.#deleteCovered();
          continue;
        }
        break;
      }
    } catch (err) {
      this.#failStop(err);
    } finally {
      this.#writer = undefined;
    }
  }

  #takeBatch(): Batch {
    const b = this.#batch;
    this.#batch = newBatch();
    this.#inflight = b.waiters;
    clearTimeout(this.#lazyTimer);
    this.#lazyTimer = undefined;
    return b;
  }

  /** One transaction: the fence check, then whatever `work` writes. */
  async #transaction(sync: boolean, work: () => Promise<void>): Promise<void> {
    const c = this.#client;
    const started = process.hrtime.bigint();
    await c.query('BEGIN');
    try {
      // Forced: durable when COMMIT returns, whatever the database's or role's default says.
      await c.query(sync ? 'SET LOCAL synchronous_commit = on' : 'SET LOCAL synchronous_commit = off');
      // FOR SHARE conflicts with every UPDATE of the lease row: a renewal or a new holder's
      // acquisition waits for this commit, and a write after an acquisition sees the new epoch.
      // (Not FOR KEY SHARE: that would let the acquisition pass, and break the fence.)
      const fence = await c.query('SELECT 1 FROM tcx_lease WHERE coordinator_id = $1 AND epoch = $2 AND expires_at > now() FOR SHARE', [
        this.#options.coordinatorId,
        this.#epoch,
      ]);
      if (fence.rowCount !== 1) {
        throw new LogFailedError(`fenced: the lease on ${this.#options.coordinatorId} under epoch ${this.#epoch} lapsed or passed to another instance`);
      }
      await work();
      await c.query('COMMIT');
    } catch (err) {
      await c.query('ROLLBACK').catch(() => undefined);
      throw err;
    }
    if (sync) {
      this.#counters.fsyncs++;
      this.#counters.lastFsyncMicros = Number((process.hrtime.bigint() - started) / 1000n);
    }
  }

  /** Inserts a batch's records; returns the seq of the last. */
  async #insert(b: Batch): Promise<number> {
    const first = this.#nextSeq;
    if (b.texts.length > 0) {
      await this.#client.query(
        'INSERT INTO tcx_log (coordinator_id, seq, epoch, record) SELECT $1, $2::bigint + o - 1, $3, r FROM unnest($4::text[]) WITH ORDINALITY AS t(r, o)',
        [this.#options.coordinatorId, first, this.#epoch, b.texts],
      );
    }
    return first + b.texts.length - 1;
  }

  async #commit(b: Batch): Promise<void> {
    const started = performance.now();
    await this.#transaction(b.sync, async () => {
      await this.#insert(b);
    });
    if (events.logFlushed.active) events.logFlushed.publish({ backend: 'postgres', records: b.texts.length, forced: b.sync, durationMs: performance.now() - started });
    this.#settle(b);
  }

  #settle(b: Batch): void {
    this.#nextSeq += b.texts.length;
    this.#sinceSnapshot += b.texts.length;
    this.#counters.appendedRecords += b.texts.length;
    this.#inflight = [];
    for (const w of b.waiters) w.resolve();
  }

  #compactionDue(): boolean {
    if (this.#compactWaiters.length > 0) return true;
    if (this.#closing !== undefined) return false;
    const max = this.#options.maxRecordsBeforeCompaction ?? 100_000;
    return this.#sinceSnapshot > Math.max(max, this.#snapshotRecords);
  }

  async #compactNow(): Promise<void> {
    this.#preparation.used();
    const waiters = this.#compactWaiters.splice(0);
    this.#compacting = waiters;
    // Synchronous from here to takeBatch(): the snapshot call is the rotation point.
    let texts: string;
    let count: number;
    let files: readonly SnapshotFile[];
    try {
      const content = this.#options.snapshot();
      const records = Symbol.iterator in content ? content : content.records;
      files = Symbol.iterator in content ? [] : content.files;
      const payloads = Array.from(records, (p) => JSON.stringify(p));
      count = payloads.length;
      texts = `[${payloads.join(',')}]`;
    } catch (err) {
      this.#sinceSnapshot = 0; // postponed: try again after as many records
      this.#logger?.error({ err }, 'the snapshot callback failed; compaction postponed');
      this.#compacting = [];
      for (const w of waiters) w.reject(asError(err));
      return;
    }
    const b = this.#takeBatch();
    const names = files.map((f) => f.name);
    let upto = 0;
    await this.#transaction(true, async () => {
      upto = await this.#insert(b);
      for (const f of files) {
        if (this.#storedFiles.has(f.name)) continue;
        await this.#client.query('INSERT INTO tcx_log_file (coordinator_id, name, data) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING', [
          this.#options.coordinatorId,
          f.name,
          Buffer.from(f.data),
        ]);
      }
      await this.#client.query(
        `INSERT INTO tcx_log_snapshot (coordinator_id, upto_seq, records, files, taken_at) VALUES ($1, $2, $3, $4, now())
         ON CONFLICT (coordinator_id) DO UPDATE SET upto_seq = $2, records = $3, files = $4, taken_at = now()`,
        [this.#options.coordinatorId, upto, texts, names],
      );
      await this.#client.query('DELETE FROM tcx_log_file WHERE coordinator_id = $1 AND NOT (name = ANY($2::text[]))', [this.#options.coordinatorId, names]);
    });
    this.#storedFiles = new Set(names);
    this.#settle(b);
    this.#sinceSnapshot = 0;
    this.#snapshotRecords = count;
    this.#deleteUpTo = upto;
    this.#counters.compactions++;
    this.#compacting = [];
    for (const w of waiters) w.resolve();
  }

  /** Deletes up to DELETE_BATCH records the snapshot covers. */
  async #deleteCovered(): Promise<void> {
    const res = await this.#client.query(
      `DELETE FROM tcx_log WHERE coordinator_id = $1 AND seq IN
         (SELECT seq FROM tcx_log WHERE coordinator_id = $1 AND seq <= $2 ORDER BY seq LIMIT ${DELETE_BATCH})`,
      [this.#options.coordinatorId, this.#deleteUpTo],
    );
    if ((res.rowCount ?? 0) < DELETE_BATCH) this.#deleteUpTo = 0;
  }

  #failStop(err: unknown): void {
    if (this.#failure !== undefined) return;
    this.#failure = err instanceof LogFailedError ? err : new LogFailedError(`the Postgres log failed: ${errorMessage(err)}`, err);
    this.#logger?.fatal({ err: errorMessage(err) }, 'write-ahead log failed; no further writes (fail-stop)');
    const pending = [...this.#inflight, ...this.#batch.waiters, ...this.#compacting, ...this.#compactWaiters];
    this.#batch = newBatch();
    this.#inflight = [];
    this.#compacting = [];
    this.#compactWaiters = [];
    clearTimeout(this.#lazyTimer);
    for (const w of pending) w.reject(this.#failure);
    void this.#client.end().catch(() => undefined);
  }
}
