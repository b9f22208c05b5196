/**
 * Reading segment files back: the frames of one segment, its header, its
 * snapshot (when complete) and its records, and where a torn or corrupt tail
 * begins. See file-log.ts for the format.
 */
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { decodeFrames, MAX_RECORD_BYTES, type DecodeResult } from './frame-codec.js';
import type { LogIo } from './log-io.js';
import { parseFileRefs, type FileRef } from './snapshot-files.js';

/** A bad frame where a crash cannot explain it (not the tail of the last segment). */
export class LogCorruptedError extends Error {
  readonly file: string;
  readonly offset: number;
  constructor(file: string, offset: number, detail: string) {
    super(`write-ahead log corrupted in ${file} at offset ${offset}: ${detail}`);
    this.name = 'LogCorruptedError';
    this.file = file;
    this.offset = offset;
  }
}

export const SEGMENT_NAME = /^segment-(\d{16})\.log$/;
export const segmentFileName = (seq: number): string => `segment-${String(seq).padStart(16, '0')}.log`;

export interface Header {
  seq: number;
  /** Format 2: the frames after the header are chained to it (frame-codec.ts); format 1: each checked by itself. */
  chained: boolean;
  snapshot: boolean;
  snapshotRecords: number;
  /** Snapshot segments: the files the snapshot includes by reference (see snapshot-files.ts). */
  files: FileRef[];
}

export interface SegmentScan {
  seq: number;
  path: string;
  size: number;
  header: Header | undefined;
  snapshot: unknown[] | undefined; // set when the snapshot is complete
  records: unknown[];
  baseBytes: number; // header (+ snapshot + marker) bytes
  goodEnd: number;
  /** A torn or corrupt tail. Undefined when the file ends at goodEnd or only zeros follow it. */
  bad: { offset: number; reason: string } | undefined;
  /** A chained segment: the crc of its last good frame, which the next frame written continues. */
  chain: number | undefined;
}

const ZEROS = new Uint8Array(64 * 1024);

/** Whether buf holds nothing but zero bytes from `from` on: space preallocated and never written. */
export function zeroFrom(buf: Uint8Array, from: number): boolean {
  for (let at = from; at < buf.length; at += ZEROS.length) {
    const chunk = buf.subarray(at, Math.min(at + ZEROS.length, buf.length));
    if (Buffer.compare(chunk, ZEROS.subarray(0, chunk.length)) !== 0) return false;
  }
  return true;
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

export function encodeJson(value: unknown): Buffer {
  const text = JSON.stringify(value);
  if (text === undefined) throw new TypeError('log payload is not JSON-serialisable');
  return Buffer.from(text, 'utf8');
}

export function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/**
 * A segment's header record. Format 2 (written since December 2026): its own key, so that a
 * build that knows only format 1 refuses the segment (a bad header) instead of taking its
 * chained frames for a torn tail and cutting them off; a random nonce, so that two segments
 * never chain from the same header, not even two creations of the same sequence number.
 * Format 1 (`tcxSegment`: unchained frames) is still read; the log rotates such a segment at
 * its first flush after the open (file-log.ts).
 */
export function segmentHeader(seq: number, snapshot: { snapshotRecords: number; files?: readonly unknown[] } | undefined): Record<string, unknown> {
  const nonce = randomBytes(8).toString('hex');
  if (snapshot === undefined) return { tcxLog: 2, segment: seq, nonce, snapshot: false };
  return { tcxLog: 2, segment: seq, nonce, snapshot: true, snapshotRecords: snapshot.snapshotRecords, ...(snapshot.files === undefined ? {} : { files: snapshot.files }) };
}

export function parseHeader(v: unknown): Header | undefined {
  if (!isObject(v) || typeof v.snapshot !== 'boolean') return undefined;
  const chained = v.tcxLog === 2 && typeof v.nonce === 'string' && v.nonce.length >= 8;
  const seq = chained ? v.segment : v.tcxSegment;
  if (!Number.isSafeInteger(seq) || (!chained && v.tcxLog !== undefined)) return undefined;
  const n = v.snapshot ? v.snapshotRecords : 0;
  if (!Number.isSafeInteger(n) || (n as number) < 0) return undefined;
  const files = v.files === undefined ? [] : parseFileRefs(v.files);
  if (files === undefined) return undefined;
  return { seq: seq as number, chained, snapshot: v.snapshot, snapshotRecords: n as number, files };
}

const parseJson = (payload: Uint8Array): unknown => JSON.parse(utf8.decode(payload));

/**
 * A segment's frames: the header frame checked by itself, then the rest chained to it when the
 * header says so (format 2), else each by itself (format 1).
 */
export function decodeSegment(buf: Uint8Array): DecodeResult {
  const first = decodeFrames(buf, 0, MAX_RECORD_BYTES, { maxFrames: 1 });
  const header = first.frames[0];
  if (header === undefined || first.error !== undefined) return first;
  let chained = false;
  try {
    chained = parseHeader(parseJson(header.payload))?.chained === true;
  } catch {
    // an unparsable header: for the reader to report
  }
  const rest = decodeFrames(buf, header.end, MAX_RECORD_BYTES, chained ? { chain: header.crc } : {});
  return { ...rest, frames: [header, ...rest.frames] };
}

export async function scanSegment(io: LogIo, dir: string, seq: number): Promise<SegmentScan> {
  const path = join(dir, segmentFileName(seq));
  const buf = await io.readFile(path);
  const decoded = decodeSegment(buf);
  const scan: SegmentScan = {
    seq, path, size: buf.length, header: undefined, snapshot: undefined, records: [], baseBytes: 0,
    goodEnd: decoded.goodEnd, bad: decoded.error !== undefined && zeroFrom(buf, decoded.goodEnd) ? undefined : decoded.error, chain: undefined,
  };
  const payloads: unknown[] = [];
  let lastCrc: number | undefined;
  for (const frame of decoded.frames) {
    try {
      payloads.push(parseJson(frame.payload));
    } catch {
      scan.bad = { offset: frame.offset, reason: 'unparsable-json' };
      scan.goodEnd = frame.offset;
      break;
    }
    lastCrc = frame.crc;
  }
  if (payloads.length === 0) {
    scan.bad ??= { offset: 0, reason: 'missing-header' };
    return scan;
  }
  const header = parseHeader(payloads[0]);
  if (header === undefined || header.seq !== seq) {
    throw new LogCorruptedError(path, 0, `bad segment header ${JSON.stringify(payloads[0])}`);
  }
  scan.header = header;
  if (header.chained) scan.chain = lastCrc;
  if (!header.snapshot) {
    scan.records = payloads.slice(1);
    scan.baseBytes = decoded.frames[0]!.end;
    return scan;
  }
  const n = header.snapshotRecords;
  if (payloads.length < n + 2) return scan; // snapshot incomplete
  const marker = payloads[n + 1];
  if (!isObject(marker) || marker.tcxSnapshotEnd !== seq || marker.records !== n) {
    throw new LogCorruptedError(path, decoded.frames[n + 1]!.offset, 'expected the end-of-snapshot marker');
  }
  scan.snapshot = payloads.slice(1, n + 1);
  scan.records = payloads.slice(n + 2);
  scan.baseBytes = decoded.frames[n + 1]!.end;
  return scan;
}
