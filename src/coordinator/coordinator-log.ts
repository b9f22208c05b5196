/**
 * The coordinator's view of its write-ahead log: every record is applied to
 * the DurableState when it is appended (so a compaction snapshot, taken
 * synchronously between batches, always covers exactly the records written
 * before it), then handed to the file log. Forced records resolve only once
 * fsynced; unforced ones are fire-and-forget, and a failure of either puts the
 * log — and with it the coordinator — into fail-stop.
 */

import type { Logger } from 'pino';
import { chmod, mkdir, readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { lockDataDir, type DirLock } from '../log/dir-lock.js';
import { FileLog, type LogIo, type LogStats, type SnapshotContent } from '../log/file-log.js';
import { PostgresLog } from '../log/postgres-log.js';
import { DurableState } from '../log/durable-state.js';
import { FinishedBucket } from '../log/finished-bucket.js';
import { stateReads, type LogReads, type ManualResolution } from '../log/log-reads.js';
import { isLogRecord, type DurableTransaction, type ForgottenBranch, type LogRecord, type ParticipantConfig } from '../log/log-records.js';

export interface CoordinatorLogOptions {
  readonly dir: string;
  /** A postgres:// URL: the log lives in that database (TCX_LOG_URL) instead of `dir`. */
  readonly url?: string;
  /** With `url`: whose records these are (several coordinators may share one database), and the epoch of the lease held on that id. */
  readonly coordinatorId?: string;
  readonly leaseEpoch?: string;
  readonly leaseMs?: number;
  readonly segmentMaxBytes: number;
  readonly retentionMs: number;
  readonly maxRetainedTransactions: number;
  readonly logger: Logger;
  /** Internal, for tests: the file system the log uses (to inject a failing fsync). */
  readonly io?: LogIo;
}

/** Where the records go: the embedded file log, or a Postgres database. Both keep FileLog's contract. */
export interface LogBackend {
  append(payload: unknown, options: { force: boolean }): Promise<void>;
  flush(): Promise<void>;
  compact(): Promise<void>;
  close(): Promise<void>;
  readonly failed: Error | undefined;
  stats(): LogStats;
}

type Opened = { log: LogBackend; records: unknown[]; files: Map<string, Uint8Array> };

export class CoordinatorLog implements LogReads {
  /**
   * The owner's replica of what its log says, kept as records are written (forced ones included
   * before they are durable). Read through the LogReads methods below; the listing pages
   * through its finished buckets directly.
   */
  readonly state: DurableState;
  readonly #reads: LogReads;
  readonly #file: LogBackend;
  readonly #logger: Logger;
  readonly #lock: DirLock | undefined;
  readonly #pending = new Map<string, number>();
  /** Drops finished transactions past retention (or over the cap) from the state. */
  readonly #prune: () => void;

  private constructor(file: LogBackend, state: DurableState, logger: Logger, lock: DirLock | undefined, prune: () => void) {
    this.#prune = prune;
    this.#file = file;
    this.state = state;
    this.#reads = stateReads(state);
    this.#logger = logger;
    this.#lock = lock;
  }

  static async open(options: CoordinatorLogOptions): Promise<{ log: CoordinatorLog; replayed: number }> {
    const state = new DurableState();
    const prune = (): void => void state.prune(Date.now(), options.retentionMs, options.maxRetainedTransactions);
    const snapshot = (): SnapshotContent => {
      prune();
      const { records, buckets } = state.snapshot();
      return { records, files: buckets.map((b) => ({ name: bucketFileName(b.seq), data: b.bucket.buffer })) };
    };
    const prepareSnapshot = async (): Promise<void> => {
      prune();
      await state.prepareSnapshot();
    };
    let lock: DirLock | undefined;
    let opened: Opened;
    if (options.url !== undefined) {
      if (options.coordinatorId === undefined || options.leaseEpoch === undefined) throw new Error('a Postgres log needs the coordinator id and its lease');
      // One writer per coordinator id: every write checks the lease it was opened under.
      opened = await PostgresLog.open({
        url: options.url,
        coordinatorId: options.coordinatorId,
        epoch: options.leaseEpoch,
        ...(options.leaseMs === undefined ? {} : { idleInTransactionMs: options.leaseMs }),
        snapshot,
        prepareSnapshot,
        // Compaction by record count (a record is ~200 bytes): about as often as the file log's.
        maxRecordsBeforeCompaction: Math.max(1_000, Math.floor(options.segmentMaxBytes / 200)),
        logger: options.logger,
      });
    } else {
      await mkdir(options.dir, { recursive: true, mode: 0o700 });
      await restrictPermissions(options.dir, options.logger);
      lock = await lockDataDir(options.dir);
      try {
        opened = await FileLog.open({
          dir: options.dir,
          segmentMaxBytes: options.segmentMaxBytes,
          logger: options.logger,
          ...(options.io === undefined ? {} : { io: options.io }),
          snapshot,
          prepareSnapshot,
        });
      } catch (err) {
        await lock.release();
        throw err;
      }
    }
    const { log: file, records, files } = opened;
    const replayed = replayInto(state, records, files, options.logger);
    prune();
    return { log: new CoordinatorLog(file, state, options.logger, lock, prune), replayed };
  }

  // ---- reads (LogReads): from the owner's state as of the call ----

  coordinatorId(): Promise<string | undefined> {
    return this.#reads.coordinatorId();
  }

  transaction(id: string): Promise<DurableTransaction | undefined> {
    return this.#reads.transaction(id);
  }

  forgottenBranches(id: string): Promise<readonly ForgottenBranch[]> {
    return this.#reads.forgottenBranches(id);
  }

  unfinished(): Promise<readonly DurableTransaction[]> {
    return this.#reads.unfinished();
  }

  participants(): Promise<readonly ParticipantConfig[]> {
    return this.#reads.participants();
  }

  manualResolution(coordinatorId: string, transactionId: string): Promise<ManualResolution | undefined> {
    return this.#reads.manualResolution(coordinatorId, transactionId);
  }

  /**
   * Appends and waits until the record is durable (fsync done). Until then the
   * transaction it names is "pending": the state already shows the record, so whoever
   * acts on the state for others (the sweep, manual resolution) must skip it.
   */
  async force(record: LogRecord): Promise<void> {
    const id = transactionOf(record);
    if (id !== undefined) this.#pending.set(id, (this.#pending.get(id) ?? 0) + 1);
    this.state.apply(record);
    try {
      await this.#file.append(record, { force: true });
    } finally {
      if (id !== undefined) {
        const left = (this.#pending.get(id) ?? 1) - 1;
        if (left <= 0) this.#pending.delete(id);
        else this.#pending.set(id, left);
      }
    }
  }

  /** Finished transactions kept for queries (a statistic, for health and metrics). */
  finishedCount(): number {
    return this.state.finished.size;
  }

  /** Transactions the log still holds (unfinished, or finished within retention), after dropping the rest from memory. */
  retained(): number {
    this.#prune();
    return this.state.size;
  }

  /** A forced record about this transaction is written but not yet durable. */
  hasPendingForce(transactionId: string): boolean {
    return this.#pending.has(transactionId);
  }

  /** Appends without waiting; the record becomes durable with the next flush. */
  record(record: LogRecord): void {
    this.state.apply(record);
    this.#file.append(record, { force: false }).catch((err: unknown) => {
      this.#logger.error({ err, record: record.t }, 'log append failed');
    });
  }

  flush(): Promise<void> {
    return this.#file.flush();
  }

  compact(): Promise<void> {
    return this.#file.compact();
  }

  get failed(): Error | undefined {
    return this.#file.failed;
  }

  stats(): LogStats {
    return this.#file.stats();
  }

  async close(): Promise<void> {
    try {
      await this.#file.close();
    } finally {
      await this.#lock?.release();
    }
  }
}

/**
 * The log holds participants' connection details, passwords included (recovery needs them):
 * its directory must be the coordinator's alone (0700) and its files 0600. Wider permissions
 * found at start are narrowed, with a warning.
 */
async function restrictPermissions(dir: string, logger: Logger): Promise<void> {
  const narrowed: string[] = [];
  const dirMode = (await stat(dir)).mode & 0o777;
  if ((dirMode & 0o077) !== 0) {
    await chmod(dir, 0o700);
    narrowed.push(`${dir} (was ${dirMode.toString(8)})`);
  }
  for (const name of await readdir(dir)) {
    const path = join(dir, name);
    const st = await stat(path);
    if (st.isFile() && (st.mode & 0o077) !== 0) {
      await chmod(path, 0o600);
      narrowed.push(`${name} (was ${(st.mode & 0o777).toString(8)})`);
    }
  }
  if (narrowed.length > 0) {
    logger.warn({ dir, narrowed }, 'the write-ahead log was readable by others (it holds participant passwords); permissions narrowed to 0700/0600');
  }
}

/** Sealed buckets of finished transactions, one file each, named by sequence number. */
const bucketFileName = (seq: number): string => `finished-${String(seq).padStart(10, '0')}.tcxf`;

function bucketSeq(name: string): number | undefined {
  const m = /^finished-(\d{10})\.tcxf$/.exec(name);
  return m === null ? undefined : Number(m[1]);
}

function transactionOf(record: LogRecord): string | undefined {
  switch (record.t) {
    case 'decision':
    case 'prepare-intent':
    case 'branch-enlisted':
    case 'tx-begun':
    case 'branch-acked':
    case 'branch-forgotten':
    case 'one-phase-in-doubt':
    case 'ended':
      return record.id;
    case 'manual-resolution':
      return record.transactionId;
    default:
      return undefined;
  }
}

/** Replays a log's content into `state`; returns how many records it applied (unknown ones are skipped). */
export function replayInto(state: DurableState, records: readonly unknown[], files: ReadonlyMap<string, Uint8Array>, logger: Logger): number {
  // Finished transactions first: records about a transaction that already ended change nothing.
  for (const [name, data] of files) {
    const seq = bucketSeq(name);
    if (seq === undefined) continue;
    state.finished.load(seq, new FinishedBucket(Buffer.from(data.buffer, data.byteOffset, data.byteLength)));
  }
  let replayed = 0;
  for (const record of records) {
    if (!isLogRecord(record)) {
      logger.warn({ record }, 'skipping unknown log record');
      continue;
    }
    state.apply(record);
    replayed++;
  }
  return replayed;
}
