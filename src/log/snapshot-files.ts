/**
 * Files a snapshot includes by reference. Some state is large and never
 * changes once written — sealed buckets of finished transactions — so instead
 * of rewriting it into every snapshot segment, each piece is written once to a
 * file of its own and the snapshot's header names it with its size and CRC-32:
 *
 *   {"tcxLog":2,"segment":7,"nonce":"…","snapshot":true,"snapshotRecords":n,
 *    "files":[{"name":"finished-0000000003.tcxf","bytes":812345,"crc32":123456789}]}
 *
 * A file is written (create, write, fdatasync, directory fsync) before the
 * snapshot segment that names it, so a snapshot never names a file that is not
 * durable. A file no complete snapshot names is garbage — left by a crash
 * before its snapshot, or by a newer snapshot that dropped it — and is deleted
 * once the snapshot that does not name it is durable. A named file that is
 * missing or does not match its size and CRC is corruption.
 */
import { join } from 'node:path';
import { crc32 } from 'node:zlib';
import { fsyncDir, writeFully, type LogIo } from './log-io.js';

export interface FileRef {
  readonly name: string;
  readonly bytes: number;
  readonly crc32: number;
}

/** A file the snapshot callback hands over with the snapshot's records. */
export interface SnapshotFile {
  readonly name: string;
  readonly data: Uint8Array;
}

/** Names snapshot files may have: they live next to the segments and must never be mistaken for one. */
export const SNAPSHOT_FILE_NAME = /^[a-z][a-z0-9-]{0,40}\.tcxf$/;

export function fileRef(file: SnapshotFile): FileRef {
  return { name: file.name, bytes: file.data.length, crc32: crc32(file.data) };
}

export function parseFileRefs(v: unknown): FileRef[] | undefined {
  if (!Array.isArray(v)) return undefined;
  const out: FileRef[] = [];
  for (const item of v) {
    if (typeof item !== 'object' || item === null) return undefined;
    const { name, bytes, crc32: crc } = item as Record<string, unknown>;
    if (typeof name !== 'string' || !SNAPSHOT_FILE_NAME.test(name)) return undefined;
    if (!Number.isSafeInteger(bytes) || (bytes as number) < 0 || !Number.isSafeInteger(crc)) return undefined;
    out.push({ name, bytes: bytes as number, crc32: crc as number });
  }
  return out;
}

/** Writes a file durably under its final name (a partial one left by a crash is unreferenced garbage). */
export async function writeSnapshotFile(io: LogIo, dir: string, file: SnapshotFile): Promise<void> {
  const path = join(dir, file.name);
  await io.unlink(path).catch((err: NodeJS.ErrnoException) => {
    if (err.code !== 'ENOENT') throw err;
  });
  const handle = await io.open(path, 'wx');
  try {
    await writeFully(handle, file.data, 0);
    await handle.datasync();
  } finally {
    await handle.close();
  }
  await fsyncDir(io, dir);
}

/** Reads a referenced file back; undefined when it is missing or does not match its reference. */
export async function readSnapshotFile(io: LogIo, dir: string, ref: FileRef): Promise<Uint8Array | string> {
  let data: Uint8Array;
  try {
    data = await io.readFile(join(dir, ref.name));
  } catch (err) {
    return `cannot read ${ref.name}: ${(err as Error).message}`;
  }
  if (data.length !== ref.bytes) return `${ref.name} has ${data.length} bytes, the snapshot names ${ref.bytes}`;
  if (crc32(data) !== ref.crc32) return `${ref.name} does not match its CRC-32`;
  return data;
}

/** Deletes every snapshot file in the directory that `keep` does not name. Best effort. */
export async function deleteUnreferencedFiles(io: LogIo, dir: string, keep: ReadonlySet<string>): Promise<string[]> {
  const deleted: string[] = [];
  for (const name of await io.readdir(dir)) {
    if (!SNAPSHOT_FILE_NAME.test(name) || keep.has(name)) continue;
    await io.unlink(join(dir, name)).catch(() => undefined);
    deleted.push(name);
  }
  if (deleted.length > 0) await fsyncDir(io, dir);
  return deleted;
}
