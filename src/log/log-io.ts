/**
 * The file-system seam of the write-ahead log: the few calls it makes, behind an
 * interface so that tests can inject faults (a failing fdatasync), and the
 * durable-write helpers built on them.
 */
import fs from 'node:fs';
import { mkdir, readdir, readFile, unlink } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';

/** The subset of a node:fs/promises FileHandle the log uses. */
export interface LogFile {
  write(buffer: Uint8Array, offset: number, length: number, position: number): Promise<{ bytesWritten: number }>;
  /**
   * The same, on the calling thread: a small write into the page cache costs less than the
   * thread-pool round trip (one more wake-up of the event loop per forced batch). Durability
   * still comes only from datasync.
   */
  writeSync?(buffer: Uint8Array, offset: number, length: number, position: number): number;
  datasync(): Promise<void>;
  sync(): Promise<void>;
  truncate(length: number): Promise<void>;
  close(): Promise<void>;
}

/** The file-system functions the log uses. Internal: lets tests inject faults (a failing fdatasync). */
export interface LogIo {
  open(path: string, flags: string): Promise<LogFile>;
  readFile(path: string): Promise<Uint8Array>;
  readdir(path: string): Promise<string[]>;
  mkdir(path: string, options: { recursive: true }): Promise<string | undefined>;
  unlink(path: string): Promise<void>;
}

/** A segment file on a raw descriptor: the callback API costs less per call than FileHandle's promises. */
class SegmentFile implements LogFile {
  constructor(private readonly fd: number) {}

  write(buffer: Uint8Array, offset: number, length: number, position: number): Promise<{ bytesWritten: number }> {
    return new Promise((resolve, reject) => {
      fs.write(this.fd, buffer, offset, length, position, (err, bytesWritten) => (err === null ? resolve({ bytesWritten }) : reject(err)));
    });
  }

  writeSync(buffer: Uint8Array, offset: number, length: number, position: number): number {
    return fs.writeSync(this.fd, buffer, offset, length, position);
  }

  datasync(): Promise<void> {
    return new Promise((resolve, reject) => fs.fdatasync(this.fd, (err) => (err === null ? resolve() : reject(err))));
  }

  sync(): Promise<void> {
    return new Promise((resolve, reject) => fs.fsync(this.fd, (err) => (err === null ? resolve() : reject(err))));
  }

  truncate(length: number): Promise<void> {
    return new Promise((resolve, reject) => fs.ftruncate(this.fd, length, (err) => (err === null ? resolve() : reject(err))));
  }

  close(): Promise<void> {
    return new Promise((resolve, reject) => fs.close(this.fd, (err) => (err === null ? resolve() : reject(err))));
  }
}

export const nodeLogIo: LogIo = {
  open: (path, flags) =>
    new Promise((resolve, reject) => {
      fs.open(path, flags, 0o600, (err, fd) => (err === null ? resolve(new SegmentFile(fd)) : reject(err)));
    }),
  readFile: (path) => readFile(path),
  readdir: (path) => readdir(path),
  mkdir: (path, options) => mkdir(path, options),
  unlink: (path) => unlink(path),
};

export async function fsyncDir(io: LogIo, dir: string): Promise<void> {
  const handle = await io.open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** Writes up to this size go through writeSync when the file has it (group-commit batches); larger ones (snapshots) through the thread pool. */
const SYNC_WRITE_MAX_BYTES = 64 * 1024;

export async function writeFully(file: LogFile, buf: Uint8Array, position: number): Promise<void> {
  const writeSync = buf.length <= SYNC_WRITE_MAX_BYTES ? file.writeSync?.bind(file) : undefined;
  let done = 0;
  while (done < buf.length) {
    const { bytesWritten } =
      writeSync !== undefined ? { bytesWritten: writeSync(buf, done, buf.length - done, position + done) } : await file.write(buf, done, buf.length - done, position + done);
    if (bytesWritten <= 0) throw new Error('write made no progress');
    done += bytesWritten;
  }
}

/** mkdir -p, then fsync the parent of every directory it created. */
export async function ensureDir(io: LogIo, dir: string): Promise<void> {
  const first = await io.mkdir(dir, { recursive: true });
  if (first === undefined) return;
  for (let p = dir; ; p = dirname(p)) {
    await fsyncDir(io, dirname(p));
    if (p === resolve(first) || dirname(p) === p) return;
  }
}
