/**
 * Record framing for the write-ahead log:
 *
 *   u32le length | u32le crc32c(payload) | payload (length bytes)
 *
 * or, chained (segments of format 2, see segment-scan.ts), the checksum continues
 * the previous frame's: crc32c(payload, previous frame's crc) — the CRC of every
 * payload of the segment up to this one. A frame then validates only right after
 * the frame it was written after: a valid frame left over from another segment
 * (blocks reused after a crash on a file system that can show stale data, a
 * misdirected write) or from an unacknowledged write that a torn tail cut off
 * cannot pass for a record of this one.
 *
 * The decoder walks a buffer and stops at the first frame that is incomplete
 * (a torn write at the end of the file) or bad (impossible length, checksum
 * mismatch), reporting where the last good frame ended. A length of zero is
 * rejected too: a zero-filled tail (a segment's preallocated space, or what a
 * crash leaves on some file systems) would otherwise decode as an endless run
 * of valid empty frames, since crc32c of nothing is 0. Whether only zeros
 * follow is for the reader to tell (segment-scan.ts).
 */
import { crc32c } from './crc32c.js';

export const FRAME_HEADER_BYTES = 8;
/** Upper bound on one payload, so a corrupted length never makes us allocate wildly. */
export const MAX_RECORD_BYTES = 64 * 1024 * 1024;

export type FrameErrorReason =
  | 'short-header' // fewer than 8 bytes left: torn header
  | 'short-payload' // the length points past the end of the buffer: torn payload
  | 'bad-length' // zero or above the maximum record size
  | 'bad-crc'; // checksum mismatch

export interface DecodedFrame {
  /** Offset of the frame's first header byte. */
  offset: number;
  /** Offset just past the frame. */
  end: number;
  /** A view into the decoded buffer (not a copy). */
  payload: Uint8Array;
  /** The checksum the frame carries (what the next chained frame continues). */
  crc: number;
}

export interface DecodeResult {
  frames: DecodedFrame[];
  /** Offset just past the last good frame (the start offset if none): where to truncate. */
  goodEnd: number;
  /** Why decoding stopped before the end of the buffer; undefined if it consumed it all. */
  error?: { offset: number; reason: FrameErrorReason };
}

export interface DecodeOptions {
  /** Chained frames: the crc of the frame before `start`. */
  readonly chain?: number;
  /** Stop after this many frames. */
  readonly maxFrames?: number;
}

/**
 * Encodes one payload into a frame; `chain`: the previous frame's crc, for a chained frame.
 * Throws RangeError for empty or oversized payloads.
 */
export function encodeFrame(payload: Uint8Array, maxRecordBytes = MAX_RECORD_BYTES, chain?: number): Buffer {
  if (payload.length === 0) throw new RangeError('a log record cannot be empty');
  if (payload.length > maxRecordBytes) {
    throw new RangeError(`a log record is ${payload.length} bytes, above the ${maxRecordBytes}-byte limit`);
  }
  const frame = Buffer.allocUnsafe(FRAME_HEADER_BYTES + payload.length);
  frame.writeUInt32LE(payload.length, 0);
  frame.writeUInt32LE(chain === undefined ? crc32c(payload) : crc32c(payload, chain), 4);
  frame.set(payload, FRAME_HEADER_BYTES);
  return frame;
}

/** The crc a frame carries. */
export const frameCrc = (frame: Uint8Array): number => (frame[4]! | (frame[5]! << 8) | (frame[6]! << 16) | (frame[7]! << 24)) >>> 0;

/** Decodes consecutive frames from `buf`, starting at `start`. */
export function decodeFrames(buf: Uint8Array, start = 0, maxRecordBytes = MAX_RECORD_BYTES, options: DecodeOptions = {}): DecodeResult {
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const frames: DecodedFrame[] = [];
  const maxFrames = options.maxFrames ?? Infinity;
  let chain = options.chain;
  let offset = start;
  while (offset < buf.length && frames.length < maxFrames) {
    const stop = (reason: FrameErrorReason): DecodeResult => ({ frames, goodEnd: offset, error: { offset, reason } });
    if (buf.length - offset < FRAME_HEADER_BYTES) return stop('short-header');
    const length = view.getUint32(offset, true);
    if (length === 0 || length > maxRecordBytes) return stop('bad-length');
    const end = offset + FRAME_HEADER_BYTES + length;
    if (end > buf.length) return stop('short-payload');
    const payload = buf.subarray(offset + FRAME_HEADER_BYTES, end);
    const crc = view.getUint32(offset + 4, true);
    if ((chain === undefined ? crc32c(payload) : crc32c(payload, chain)) !== crc) return stop('bad-crc');
    frames.push({ offset, end, payload, crc });
    if (chain !== undefined) chain = crc;
    offset = end;
  }
  return { frames, goodEnd: offset };
}
