/**
 * The segment file the log is writing (the format and its rules, preallocation among them:
 * file-log.ts): where the next frame goes, the zeros kept after it, the cut to its frames when
 * it is rotated, and its syncs. Only the log's flusher calls it, one call at a time.
 */
import { join } from 'node:path';
import type { Logger } from 'pino';
import { fsyncDir, writeFully, type LogFile, type LogIo } from './log-io.js';
import { segmentFileName, type SegmentScan } from './segment-scan.js';

/** Zeros kept ahead of the last frame of the segment being written. */
export const PREALLOCATION_WINDOW_BYTES = 1024 * 1024;

/** Counted across segments: fdatasync/fsync calls on segment files (directory fsyncs not counted). */
export interface SyncCounters {
  fsyncs: number;
  lastFsyncMicros: number;
}

export class SegmentWriter {
  /** Bytes written since the last sync (or a size change not yet synced). */
  #dirty = false;

  private constructor(
    private readonly file: LogFile,
    readonly seq: number,
    /** Backs `position`. */
    private at: number,
    /** The file's size: position plus the zeros preallocated after it. */
    private size: number,
    private readonly counters: SyncCounters,
  ) {}

  /** Where the next frame goes: just past the last one. */
  get position(): number {
    return this.at;
  }

  /** Creates segment `seq` durably with its first frames: write, preallocate, fdatasync, fsync the directory. */
  static create(io: LogIo, dir: string, seq: number, frames: readonly Buffer[], counters: SyncCounters): Promise<SegmentWriter> {
    return SegmentWriter.#durable(io, dir, join(dir, segmentFileName(seq)), 'wx', 'datasync', counters, async (file) => {
      const base = Buffer.concat(frames);
      await writeFully(file, base, 0);
      const size = base.length + PREALLOCATION_WINDOW_BYTES;
      await file.truncate(size);
      return { seq, at: base.length, size };
    });
  }

  /**
   * Goes on writing the last segment replay read: a torn tail cut off first, the window
   * preallocated again, all of it made durable — what replay read may still be only in the page
   * cache (a crash between write and fdatasync), and a power cut must not take back a decision
   * that recovery is about to deliver.
   */
  static resume(io: LogIo, dir: string, s: SegmentScan, counters: SyncCounters, logger: Logger | undefined): Promise<SegmentWriter> {
    return SegmentWriter.#durable(io, dir, s.path, 'r+', 'sync', counters, async (file) => {
      if (s.bad !== undefined) {
        logger?.warn(
          { segment: s.path, offset: s.goodEnd, reason: s.bad.reason, droppedBytes: s.size - s.goodEnd },
          'truncating a torn tail of the write-ahead log',
        );
        await file.truncate(s.goodEnd); // before extending again (file-log.ts, Preallocation)
      }
      const onDisk = s.bad !== undefined ? s.goodEnd : s.size;
      const size = Math.max(onDisk, s.goodEnd + PREALLOCATION_WINDOW_BYTES);
      if (size > onDisk) await file.truncate(size);
      return { seq: s.seq, at: s.goodEnd, size };
    });
  }

  /** Opens `path`, lets `layOut` write and size it, then syncs the file and its directory; closes the file on any failure. */
  static async #durable(
    io: LogIo,
    dir: string,
    path: string,
    flags: string,
    kind: 'datasync' | 'sync',
    counters: SyncCounters,
    layOut: (file: LogFile) => Promise<{ seq: number; at: number; size: number }>,
  ): Promise<SegmentWriter> {
    const file = await io.open(path, flags);
    try {
      const { seq, at, size } = await layOut(file);
      const segment = new SegmentWriter(file, seq, at, size, counters);
      await segment.#timedSync(kind);
      await fsyncDir(io, dir);
      return segment;
    } catch (err) {
      await file.close().catch(() => undefined);
      throw err;
    }
  }

  /** Writes `buf` at the end, extending the preallocated window first when it would not hold it. */
  async append(buf: Buffer): Promise<void> {
    this.#dirty = true;
    if (this.at + buf.length > this.size) {
      this.size = this.at + buf.length + PREALLOCATION_WINDOW_BYTES;
      await this.file.truncate(this.size);
    }
    await writeFully(this.file, buf, this.at);
    this.at += buf.length;
  }

  /** Rotation: the segment is cut to its frames (made durable by the next sync), so one that is not the last ends at its last frame. */
  async cut(): Promise<void> {
    if (this.size <= this.at) return;
    this.size = this.at;
    await this.file.truncate(this.size);
    this.#dirty = true;
  }

  /** fdatasyncs what was written since the last sync; returns how long it took in µs, or undefined when nothing was. */
  async sync(): Promise<number | undefined> {
    if (!this.#dirty) return undefined;
    const micros = await this.#timedSync('datasync');
    this.#dirty = false;
    return micros;
  }

  close(): Promise<void> {
    return this.file.close();
  }

  async #timedSync(kind: 'datasync' | 'sync'): Promise<number> {
    const start = process.hrtime.bigint();
    await (kind === 'datasync' ? this.file.datasync() : this.file.sync());
    this.counters.fsyncs++;
    this.counters.lastFsyncMicros = Number((process.hrtime.bigint() - start) / 1000n);
    return this.counters.lastFsyncMicros;
  }
}
