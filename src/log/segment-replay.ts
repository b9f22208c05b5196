/**
 * Which segments of a file log are live, at start-up (the format and its rules: file-log.ts).
 *
 * 1. A newest segment without a durable header or end marker is an interrupted creation: it
 *    held nothing acknowledged, so it is removed (and the one before it is the newest).
 * 2. Replay starts at the newest segment with a complete snapshot, or at segment 1; the chain
 *    from there must be contiguous, and every segment of it but the last must end exactly at
 *    its last good frame (anything else is corruption, not a crash).
 * 3. Segments older than the base are superseded by its snapshot and deleted.
 * 4. The files the base snapshot names are read and checked; any other is garbage of an older
 *    or unfinished snapshot and is deleted.
 */
import { join } from 'node:path';
import type { Logger } from 'pino';
import { fsyncDir, type LogIo } from './log-io.js';
import { LogCorruptedError, scanSegment, SEGMENT_NAME, segmentFileName, type SegmentScan } from './segment-scan.js';
import { deleteUnreferencedFiles, readSnapshotFile, type FileRef } from './snapshot-files.js';

/** Snapshot files read at once at start-up (the thread pool has four threads). */
const SNAPSHOT_READS_AT_ONCE = 8;

export interface LiveSegments {
  /** The scans of the live segments, oldest (the base) first; empty for a new log. */
  readonly chain: readonly SegmentScan[];
  /** The base snapshot's files, by name: their references and their bytes. */
  readonly refs: Map<string, FileRef>;
  readonly files: Map<string, Uint8Array>;
}

export async function liveSegments(io: LogIo, dir: string, logger: Logger | undefined): Promise<LiveSegments> {
  const seqs = (await io.readdir(dir))
    .map((name) => SEGMENT_NAME.exec(name)?.[1])
    .filter((s): s is string => s !== undefined)
    .map(Number)
    .sort((a, b) => a - b);
  const scans = new Map<number, SegmentScan>();
  const scan = async (seq: number): Promise<SegmentScan> => {
    const known = scans.get(seq) ?? (await scanSegment(io, dir, seq));
    scans.set(seq, known);
    return known;
  };

  // 1. A newest segment without a durable header or end marker is an interrupted creation.
  for (let last = seqs.at(-1); last !== undefined; last = seqs.at(-1)) {
    const s = await scan(last);
    if (s.header !== undefined && (!s.header.snapshot || s.snapshot !== undefined)) break;
    const fallback = seqs.at(-2) === last - 1 || (last === 1 && s.header === undefined);
    if (!fallback) throw new LogCorruptedError(s.path, s.goodEnd, 'incomplete segment and no older one to fall back on');
    logger?.warn({ segment: s.path, offset: s.goodEnd }, 'removing a segment whose creation was interrupted');
    await io.unlink(s.path);
    await fsyncDir(io, dir);
    seqs.pop();
  }

  // 2. Replay starts at the newest complete snapshot, or at segment 1.
  let base = 0;
  for (let i = seqs.length - 1; i >= 0; i--) {
    const s = await scan(seqs[i]!);
    if (i < seqs.length - 1 && (s.bad !== undefined || s.goodEnd < s.size)) {
      throw new LogCorruptedError(s.path, s.goodEnd, `${s.bad?.reason ?? 'zero-filled tail'} in a segment that is not the last`);
    }
    if (s.header?.snapshot === true) {
      if (s.snapshot === undefined) throw new LogCorruptedError(s.path, s.goodEnd, 'incomplete snapshot in a segment that is not the last');
      base = i;
      break;
    }
    if (i === 0 && s.seq !== 1) throw new LogCorruptedError(s.path, 0, 'no snapshot and the segments before it are missing');
  }
  for (let i = base + 1; i < seqs.length; i++) {
    if (seqs[i] !== seqs[i - 1]! + 1) throw new LogCorruptedError(join(dir, segmentFileName(seqs[i]!)), 0, `segment ${seqs[i - 1]! + 1} is missing`);
  }

  // 3. Segments older than the base are superseded by its snapshot.
  const chain = seqs.slice(base).map((seq) => scans.get(seq)!);
  const superseded = seqs.slice(0, base);
  for (const seq of superseded) await io.unlink(join(dir, segmentFileName(seq)));
  if (superseded.length > 0) await fsyncDir(io, dir);

  // 4. The files the base snapshot names; any other is garbage of an older or unfinished one.
  const baseHeader = chain[0]?.header;
  const listed = baseHeader?.snapshot === true ? baseHeader.files : [];
  const refs = new Map<string, FileRef>();
  const files = new Map<string, Uint8Array>();
  // Read a few at a time (the thread pool overlaps them), checked in order.
  for (let from = 0; from < listed.length; from += SNAPSHOT_READS_AT_ONCE) {
    const group = listed.slice(from, from + SNAPSHOT_READS_AT_ONCE);
    const reads = await Promise.all(group.map((ref) => readSnapshotFile(io, dir, ref)));
    for (const [i, ref] of group.entries()) {
      const data = reads[i]!;
      if (typeof data === 'string') throw new LogCorruptedError(join(dir, ref.name), 0, data);
      files.set(ref.name, data);
      refs.set(ref.name, ref);
    }
  }
  await deleteUnreferencedFiles(io, dir, new Set(refs.keys()));
  return { chain, refs, files };
}
