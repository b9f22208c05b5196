import { describe, it, expect } from 'vitest';
import { crc32c } from '../../src/log/crc32c.js';
import { FRAME_HEADER_BYTES, MAX_RECORD_BYTES, decodeFrames, encodeFrame, frameCrc } from '../../src/log/frame-codec.js';
import { parseHeader, segmentHeader } from '../../src/log/segment-scan.js';

const enc = (s: string): Buffer => encodeFrame(Buffer.from(s));
const text = (b: Uint8Array): string => Buffer.from(b).toString();

describe('frame codec', () => {
  it('encodes length | crc32c | payload, little-endian', () => {
    const f = enc('hello');
    expect(f.length).toBe(FRAME_HEADER_BYTES + 5);
    expect(f.readUInt32LE(0)).toBe(5);
    expect(f.readUInt32LE(4)).toBe(crc32c(Buffer.from('hello')));
    expect(f.subarray(8).toString()).toBe('hello');
  });

  it('round-trips a run of frames', () => {
    const words = ['a', 'bb', '{"x":1}', 'x'.repeat(10_000)];
    const buf = Buffer.concat(words.map(enc));
    const r = decodeFrames(buf);
    expect(r.error).toBeUndefined();
    expect(r.goodEnd).toBe(buf.length);
    expect(r.frames.map((f) => text(f.payload))).toEqual(words);
    expect(r.frames[1]!.offset).toBe(9);
    expect(r.frames[1]!.end).toBe(19);
  });

  it('decodes from a start offset and inside an unaligned view', () => {
    const buf = Buffer.concat([Buffer.from('xyz'), enc('one'), enc('two')]);
    expect(decodeFrames(buf, 3).frames.map((f) => text(f.payload))).toEqual(['one', 'two']);
    const view = new Uint8Array(buf.buffer, buf.byteOffset + 3, buf.length - 3);
    expect(decodeFrames(view).frames.map((f) => text(f.payload))).toEqual(['one', 'two']);
  });

  it('stops at every possible torn tail with the end of the last good frame', () => {
    const frames = [enc('first'), enc('second'), enc('third!')];
    const buf = Buffer.concat(frames);
    const ends = [0, frames[0]!.length, frames[0]!.length + frames[1]!.length];
    for (let cut = 0; cut < buf.length; cut++) {
      const r = decodeFrames(buf.subarray(0, cut));
      const expectedEnd = Math.max(...ends.filter((e) => e <= cut));
      expect(r.goodEnd).toBe(expectedEnd);
      expect(r.frames.length).toBe(ends.indexOf(expectedEnd));
      if (cut === expectedEnd) expect(r.error).toBeUndefined();
      else expect(r.error?.reason).toBe(cut - expectedEnd < FRAME_HEADER_BYTES ? 'short-header' : 'short-payload');
    }
  });

  it('rejects a checksum mismatch', () => {
    const buf = Buffer.concat([enc('good'), enc('flipped')]);
    buf[buf.length - 2]! ^= 0x01;
    const r = decodeFrames(buf);
    expect(r.frames.length).toBe(1);
    expect(r.error).toEqual({ offset: 12, reason: 'bad-crc' });
    expect(r.goodEnd).toBe(12);
  });

  it('rejects zero and oversized lengths without allocating', () => {
    const garbage = Buffer.alloc(16, 0xff);
    expect(decodeFrames(Buffer.concat([enc('ok'), garbage])).error).toEqual({ offset: 10, reason: 'bad-length' });
    // A zero-filled tail must not decode as endless empty frames (crc32c of nothing is 0).
    expect(decodeFrames(Buffer.concat([enc('ok'), Buffer.alloc(64)])).error).toEqual({ offset: 10, reason: 'bad-length' });
    const tooLong = Buffer.alloc(8);
    tooLong.writeUInt32LE(MAX_RECORD_BYTES + 1, 0);
    expect(decodeFrames(tooLong).error?.reason).toBe('bad-length');
    expect(decodeFrames(Buffer.concat([enc('abc'), enc('abcd')]), 0, 3).error).toEqual({ offset: 11, reason: 'bad-length' });
  });

  it('refuses to encode empty or oversized payloads', () => {
    expect(() => encodeFrame(new Uint8Array(0))).toThrow(RangeError);
    expect(() => encodeFrame(new Uint8Array(5), 4)).toThrow(RangeError);
  });

  it('chains frames: each checksum continues the one before it, so a frame validates only right after its own predecessor', () => {
    const chain = (words: string[], seed: number): Buffer[] => {
      const frames: Buffer[] = [];
      for (const w of words) {
        const f = encodeFrame(Buffer.from(w), MAX_RECORD_BYTES, frames.length === 0 ? seed : frameCrc(frames.at(-1)!));
        frames.push(f);
      }
      return frames;
    };
    const head = enc('header');
    const frames = chain(['one', 'two', 'three'], frameCrc(head));
    expect(frameCrc(frames[2]!)).toBe(crc32c(Buffer.from('headeronetwothree'))); // the CRC of every payload so far
    const r = decodeFrames(Buffer.concat([head, ...frames]), head.length, MAX_RECORD_BYTES, { chain: frameCrc(head) });
    expect(r.frames.map((f) => text(f.payload))).toEqual(['one', 'two', 'three']);
    expect(r.error).toBeUndefined();
    // Out of order, after another header, or a frame good by itself: the chain stops there.
    const swapped = Buffer.concat([head, frames[0]!, frames[2]!, frames[1]!]);
    expect(decodeFrames(swapped, head.length, MAX_RECORD_BYTES, { chain: frameCrc(head) })).toMatchObject({ goodEnd: head.length + frames[0]!.length, error: { reason: 'bad-crc' } });
    const other = chain(['one', 'two'], frameCrc(enc('another header')));
    expect(decodeFrames(Buffer.concat([head, frames[0]!, other[1]!]), head.length, MAX_RECORD_BYTES, { chain: frameCrc(head) }).error?.reason).toBe('bad-crc');
    expect(decodeFrames(Buffer.concat([head, enc('one')]), head.length, MAX_RECORD_BYTES, { chain: frameCrc(head) }).error?.reason).toBe('bad-crc');
    expect(decodeFrames(Buffer.concat([head, ...frames]), 0, MAX_RECORD_BYTES, { maxFrames: 1 })).toEqual({ frames: [expect.objectContaining({ offset: 0, end: head.length })], goodEnd: head.length });
  });
});

describe('segment headers', () => {
  it('writes format 2 with a fresh nonce, reads formats 1 and 2, and refuses any other', () => {
    const a = segmentHeader(7, undefined);
    const b = segmentHeader(7, undefined);
    expect(a).toMatchObject({ tcxLog: 2, segment: 7, snapshot: false });
    expect(a.nonce).not.toBe(b.nonce);
    expect(parseHeader(a)).toEqual({ seq: 7, chained: true, snapshot: false, snapshotRecords: 0, files: [] });
    expect(parseHeader(segmentHeader(8, { snapshotRecords: 3 }))).toEqual({ seq: 8, chained: true, snapshot: true, snapshotRecords: 3, files: [] });
    expect(parseHeader({ tcxSegment: 7, snapshot: false })).toEqual({ seq: 7, chained: false, snapshot: false, snapshotRecords: 0, files: [] });
    // A build that knows only format 1 finds no tcxSegment in a format-2 header and refuses the segment.
    expect(a.tcxSegment).toBeUndefined();
    expect(parseHeader({ ...a, tcxLog: 3 })).toBeUndefined();
    expect(parseHeader({ tcxSegment: 7, tcxLog: 3, snapshot: false })).toBeUndefined();
    expect(parseHeader({ tcxLog: 2, segment: 7, snapshot: false })).toBeUndefined(); // no nonce
  });
});
