import { describe, it, expect, beforeEach, afterEach } from 'vitest';
import { mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { pino } from 'pino';
import { LogFailedError } from '../../src/errors.js';
import { decodeFrames, encodeFrame, frameCrc, MAX_RECORD_BYTES } from '../../src/log/frame-codec.js';
import { decodeSegment, segmentHeader } from '../../src/log/segment-scan.js';
import {
  FileLog,
  LogCorruptedError,
  nodeLogIo,
  segmentFileName,
  type FileLogOptions,
  type LogFile,
  type LogIo,
} from '../../src/log/file-log.js';

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'tcx-wal-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

const open = (options: Partial<FileLogOptions> = {}): ReturnType<typeof FileLog.open> =>
  FileLog.open({ dir, snapshot: () => [], ...options });
const seg = (n: number): string => join(dir, segmentFileName(n));
const segments = async (): Promise<string[]> => (await readdir(dir)).filter((f) => f.startsWith('segment-')).sort();
/** A frame of format 1 (checked by itself). */
const frame = (value: unknown): Buffer => encodeFrame(Buffer.from(JSON.stringify(value)));
/** A segment of format 2 as the log writes it: the header, then a frame per value, chained to it. */
const chainedSegment = (header: Record<string, unknown>, values: unknown[]): Buffer => {
  const frames = [frame(header)];
  for (const v of values) frames.push(encodeFrame(Buffer.from(JSON.stringify(v)), MAX_RECORD_BYTES, frameCrc(frames.at(-1)!)));
  return Buffer.concat(frames);
};
/** A frame chained to the last frame of `segment` (format 2), as the log would write it next. */
const chainedFrame = (payload: Uint8Array, segment: Buffer): Buffer => encodeFrame(payload, MAX_RECORD_BYTES, decodeSegment(segment).frames.at(-1)!.crc);
const rec = (i: number): { i: number; pad: string } => ({ i, pad: 'x'.repeat((i * 7) % 40) });
/** A segment's frames, without the zeros preallocated after them. */
const framesOf = async (path: string): Promise<Buffer> => {
  const buf = await readFile(path);
  return buf.subarray(0, decodeSegment(buf).goodEnd);
};
/** Where a segment's frames end; throws unless only zeros follow (its preallocated space). */
async function framesEnd(path: string): Promise<number> {
  const buf = await readFile(path);
  const end = decodeSegment(buf).goodEnd;
  if (buf.subarray(end).some((b) => b !== 0)) throw new Error(`${path}: bytes other than zeros after offset ${end}`);
  return end;
}

async function writeRecords(values: unknown[], options: Partial<FileLogOptions> = {}): Promise<void> {
  const { log } = await open(options);
  await Promise.all(values.map((v, i) => log.append(v, { force: i % 2 === 0 })));
  await log.close();
}

describe('FileLog: replay', () => {
  it('round-trips records across reopen and keeps appending', async () => {
    const first = [{ a: 1 }, 'text', 42, [1, [2]], null, { nested: { ü: 'ünïcødé ✓' } }];
    await writeRecords(first);
    let { log, records } = await open();
    expect(records).toEqual(first);
    await log.append({ more: true }, { force: true });
    await log.append({ more: 2 }, { force: false });
    await log.close();
    ({ log, records } = await open());
    expect(records).toEqual([...first, { more: true }, { more: 2 }]);
    expect(await segments()).toEqual([segmentFileName(1)]);
    await log.close();
  });

  it('creates a missing directory tree', async () => {
    const nested = join(dir, 'a', 'b', 'wal');
    const { log, records } = await FileLog.open({ dir: nested, snapshot: () => [] });
    expect(records).toEqual([]);
    await log.append('x', { force: true });
    await log.close();
    expect((await FileLog.open({ dir: nested, snapshot: () => [] })).records).toEqual(['x']);
  });

  it('returns the intact prefix after every kind of torn tail, truncates, and goes on', async () => {
    const values = Array.from({ length: 6 }, (_, i) => rec(i + 1));
    await writeRecords(values);
    const pristine = await framesOf(seg(1));
    const frames = decodeSegment(pristine).frames; // [header, ...records]
    const last = frames.at(-1)!;
    const lastLen = last.end - last.offset;
    const cuts = [1, 3, 8 + 1, lastLen - 8, lastLen - 4, lastLen - 1, lastLen, lastLen + 1, lastLen + 9, lastLen + 20];
    for (const n of cuts) {
      const size = pristine.length - n;
      await writeFile(seg(1), pristine.subarray(0, size));
      const good = frames.filter((f) => f.end <= size);
      const { log, records } = await open();
      expect(records, `cut ${n}`).toEqual(values.slice(0, good.length - 1));
      expect(await framesEnd(seg(1))).toBe(good.at(-1)!.end);
      await log.append({ after: n }, { force: true });
      await log.close();
      expect((await open()).records).toEqual([...values.slice(0, good.length - 1), { after: n }]);
    }
  });

  it('starts afresh when even the first header was torn', async () => {
    await writeRecords([1, 2]);
    await writeFile(seg(1), (await framesOf(seg(1))).subarray(0, 5));
    const { log, records } = await open();
    expect(records).toEqual([]);
    await log.append('new', { force: true });
    await log.close();
    expect((await open()).records).toEqual(['new']);
  });

  it('drops a record whose payload was corrupted, and everything after it', async () => {
    const values = Array.from({ length: 5 }, (_, i) => rec(i));
    await writeRecords(values);
    const buf = await framesOf(seg(1));
    const frames = decodeSegment(buf).frames;
    const lastCopy = Buffer.from(buf);
    lastCopy[frames[5]!.end - 2]! ^= 0x20;
    await writeFile(seg(1), lastCopy);
    expect((await open()).records).toEqual(values.slice(0, 4));
    expect(await framesEnd(seg(1))).toBe(frames[4]!.end);

    const midCopy = Buffer.from(buf);
    midCopy[frames[2]!.offset + 9]! ^= 0x01;
    await writeFile(seg(1), midCopy);
    const { log, records } = await open();
    expect(records).toEqual(values.slice(0, 1));
    await log.append('z', { force: true });
    await log.close();
    expect((await open()).records).toEqual([values[0], 'z']);
  });

  it('treats an unparsable payload with a valid checksum as the end of the log', async () => {
    await writeRecords(['a', 'b']);
    const good = await framesOf(seg(1));
    const unparsable = chainedFrame(Buffer.from('{not json'), good);
    await writeFile(seg(1), Buffer.concat([good, unparsable, encodeFrame(Buffer.from('"c"'), MAX_RECORD_BYTES, frameCrc(unparsable))]));
    expect((await open()).records).toEqual(['a', 'b']);
    expect(await framesEnd(seg(1))).toBe(good.length);
  });

  it('treats a garbage length field as a torn tail, and says so', async () => {
    await writeRecords(['a', 'b']);
    const good = await framesOf(seg(1));
    const garbage = [Buffer.alloc(12, 0xff), Buffer.from([0xff, 0xff, 0xff, 0xff]), Buffer.concat([Buffer.alloc(4096), Buffer.from([1])])];
    for (const tail of garbage) {
      await writeFile(seg(1), Buffer.concat([good, tail]));
      const lines: string[] = [];
      const logger = pino({ level: 'warn' }, { write: (line: string) => void lines.push(line) });
      const { log, records } = await open({ logger });
      expect(records).toEqual(['a', 'b']);
      expect(await framesEnd(seg(1))).toBe(good.length);
      expect(log.stats().currentSegmentBytes).toBe(good.length);
      expect(lines.map((l) => JSON.parse(l) as Record<string, unknown>)).toEqual([
        expect.objectContaining({ level: 40, segment: seg(1), offset: good.length, droppedBytes: tail.length }),
      ]);
      await log.close();
    }
  });

  it('preallocates the segment it writes, and reads the zeros after the last frame as its end, not as a torn tail', async () => {
    const lines: string[] = [];
    const logger = pino({ level: 'warn' }, { write: (line: string) => void lines.push(line) });
    let { log } = await open({ logger });
    await log.append('a', { force: true });
    const size = (await stat(seg(1))).size;
    expect(size).toBeGreaterThan(log.stats().currentSegmentBytes);
    await log.append('b', { force: false });
    await log.close();
    const end = await framesEnd(seg(1));
    for (const tail of [0, 1, 4096]) {
      // However many zeros follow (none, as an older version of the log left it; fewer than a frame header; many).
      await writeFile(seg(1), Buffer.concat([await framesOf(seg(1)), Buffer.alloc(tail)]));
      let records: unknown[];
      ({ log, records } = await open({ logger }));
      expect(records).toEqual(['a', 'b']);
      expect(log.stats().currentSegmentBytes).toBe(end);
      expect((await stat(seg(1))).size).toBeGreaterThanOrEqual(Math.min(size, end + 4096)); // preallocated again
      await log.close();
    }
    expect(lines).toEqual([]);
    ({ log } = await open());
    await log.append('c', { force: true });
    await log.close();
    expect((await open()).records).toEqual(['a', 'b', 'c']);
  });

  it('keeps a bounded run of zeros ahead of the last frame, whatever the segment size, and extends it as the log grows', async () => {
    // A segment size far past what a file read at start-up can hold: only the window is preallocated.
    const options = { segmentMaxBytes: 2 ** 40, lazyFlushDelayMs: 1 };
    const { log } = await open(options);
    const first = (await stat(seg(1))).size;
    expect(first).toBeLessThan(4 * 1024 * 1024);
    const values = Array.from({ length: 3000 }, (_, i) => ({ i, pad: 'p'.repeat(1000) })); // ~3 MB
    for (let from = 0; from < values.length; from += 100) {
      await Promise.all(values.slice(from, from + 100).map((v, j) => log.append(v, { force: j === 99 })));
      const size = (await stat(seg(1))).size;
      expect(size).toBeGreaterThanOrEqual(log.stats().currentSegmentBytes);
      expect(size - log.stats().currentSegmentBytes).toBeLessThanOrEqual(first);
    }
    expect((await stat(seg(1))).size).toBeGreaterThan(first);
    await log.close();
    const reopened = await open(options);
    expect(reopened.records).toEqual(values);
    await reopened.log.close();
  });

  it('never brings back a frame that lay past a torn one, once writing goes on over the tear', async () => {
    // Frames 1..6 were written; frame 3 is torn (its payload damaged), so 4..6 are past the tear:
    // written but never acknowledged, as after a crash that lost part of a batch. The file keeps
    // its preallocated zeros after them.
    const values = Array.from({ length: 6 }, (_, i) => ({ v: i + 1 }));
    await writeRecords(values);
    const buf = await readFile(seg(1));
    const frames = decodeSegment(buf).frames; // [header, v1, ..., v6]
    expect(buf.length).toBeGreaterThan(frames.at(-1)!.end);
    buf[frames[3]!.end - 2]! ^= 0x01;
    await writeFile(seg(1), buf);
    let { log, records } = await open();
    expect(records).toEqual(values.slice(0, 2));
    // A new record exactly as long as the torn frame: were the bytes past the tear still there,
    // frames 4..6 would line up behind it and decode as good ones.
    const replacement = { w: 3 };
    expect(frame(replacement).length).toBe(frames[3]!.end - frames[3]!.offset);
    await log.append(replacement, { force: true });
    await log.close();
    ({ log, records } = await open());
    expect(records).toEqual([...values.slice(0, 2), replacement]);
    await log.close();
  });

  it('never replays a valid frame that was not written right after the last one: a stale frame past the end, or one of another creation of the same segment', async () => {
    // What a file system that can show stale blocks after a crash (ext4 data=writeback), or a
    // misdirected write, may leave after the last frame: a frame good by its own checksum —
    // one of format 1, or one of the same records in another log's segment 1 (another
    // creation of the segment: the same sequence number, the same records before it).
    const other = join(dir, 'other');
    const first = await FileLog.open({ dir: other, snapshot: () => [] });
    for (const v of ['a', 'b', 'stale']) await first.log.append(v, { force: true });
    await first.log.close();
    const otherSegment = await readFile(join(other, segmentFileName(1)));
    const otherFrames = decodeSegment(otherSegment).frames;
    expect(otherFrames).toHaveLength(4);
    const staleOfOtherCreation = Buffer.from(otherSegment.subarray(otherFrames[3]!.offset, otherFrames[3]!.end));
    await writeRecords(['a', 'b']);
    const good = await framesOf(seg(1));
    for (const stale of [frame('stale'), staleOfOtherCreation]) {
      const lines: string[] = [];
      const logger = pino({ level: 'warn' }, { write: (line: string) => void lines.push(line) });
      await writeFile(seg(1), Buffer.concat([good, stale, Buffer.alloc(4096)]));
      const { log, records } = await open({ logger });
      expect(records).toEqual(['a', 'b']);
      expect(await framesEnd(seg(1))).toBe(good.length); // cut there, like a torn tail
      expect(lines.map((l) => JSON.parse(l) as Record<string, unknown>)).toEqual([expect.objectContaining({ reason: 'bad-crc', offset: good.length })]);
      await log.close();
    }
  });

  it('reads a log of format 1 (frames not chained) and rotates it at the first flush after the open, so that it is chained from then on', async () => {
    await writeFile(seg(1), Buffer.concat([frame({ tcxSegment: 1, snapshot: false }), frame('a'), Buffer.alloc(1024)]));
    const state: unknown[] = [];
    const { log, records } = await open({ snapshot: () => [...state] });
    expect(records).toEqual(['a']);
    state.push('a', 'b'); // the snapshot holds everything appended before the rotation point
    await log.append('b', { force: true });
    await log.append('c', { force: true });
    await log.close();
    expect(await segments()).toEqual([segmentFileName(2)]);
    const formatTwo = await framesOf(seg(2));
    const header = JSON.parse(Buffer.from(decodeSegment(formatTwo).frames[0]!.payload).toString()) as Record<string, unknown>;
    expect(header).toMatchObject({ tcxLog: 2, segment: 2, snapshot: true, snapshotRecords: 2 });
    expect(decodeFrames(formatTwo).frames).toHaveLength(1); // the frames after the header are chained to it
    expect(decodeSegment(formatTwo).frames).toHaveLength(5); // header, the 2 snapshot records, marker, 'c'
    const reopened = await open({ snapshot: () => [...state] });
    expect(reopened.records).toEqual(['a', 'b', 'c']);
    expect(reopened.log.stats().compactions).toBe(0); // format 2 now: no further rotation at the open
    await reopened.log.append('d', { force: true });
    await reopened.log.close();
    expect(await segments()).toEqual([segmentFileName(2)]);
  });

  it('starts over a segment whose creation a crash interrupted, however much of it is zeros', async () => {
    // The first segment, preallocated but its header never written.
    await writeFile(seg(1), Buffer.alloc(1024 * 1024));
    let { log, records } = await open();
    expect(records).toEqual([]);
    await log.append('a', { force: true });
    await log.close();
    // A snapshot segment after it whose header made it and nothing else: the one before it stands.
    await writeFile(seg(1), await framesOf(seg(1))); // as rotation leaves it
    await writeFile(seg(2), Buffer.concat([frame({ tcxSegment: 2, snapshot: true, snapshotRecords: 1 }), Buffer.alloc(64 * 1024)]));
    ({ log, records } = await open());
    expect(records).toEqual(['a']);
    expect(await segments()).toEqual([segmentFileName(1)]);
    await log.append('b', { force: true });
    await log.close();
    expect((await open()).records).toEqual(['a', 'b']);
  });

  it('cuts a segment to its frames when it is rotated, and takes zeros after the frames of a segment that is not the last for corruption', async () => {
    const { log } = await open({ snapshot: () => ['s'] });
    await log.append('a', { force: true });
    const segmentOne = await readFile(seg(1)); // still preallocated
    await log.compact();
    await log.close();
    expect(segmentOne.length).toBeGreaterThan(decodeSegment(segmentOne).goodEnd);
    // The rotated segment was cut before it was superseded: put it back as a chain without the snapshot.
    await rm(seg(2));
    await writeFile(seg(1), segmentOne.subarray(0, decodeSegment(segmentOne).goodEnd));
    await writeFile(seg(2), Buffer.concat([frame({ tcxSegment: 2, snapshot: false }), frame('d')]));
    expect((await open()).records).toEqual(['a', 'd']);
    await writeFile(seg(1), segmentOne);
    const err = await open().then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(LogCorruptedError);
    expect((err as LogCorruptedError).message).toMatch(/zero-filled tail in a segment that is not the last/);
  });

  it('replays several segments in order and refuses to guess past corruption in a non-last one', async () => {
    await writeRecords(['a', 'b', 'c']);
    await writeFile(seg(1), await framesOf(seg(1))); // as rotation leaves it
    await writeFile(seg(2), chainedSegment(segmentHeader(2, undefined), ['d']));
    const { log, records } = await open();
    expect(records).toEqual(['a', 'b', 'c', 'd']);
    await log.append('e', { force: true });
    await log.close();
    expect((await open()).records).toEqual(['a', 'b', 'c', 'd', 'e']);

    const buf = await framesOf(seg(1));
    const target = decodeSegment(buf).frames[2]!;
    buf[target.end - 1]! ^= 0x40;
    await writeFile(seg(1), buf);
    const err = await open().then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(LogCorruptedError);
    expect((err as LogCorruptedError).file).toBe(seg(1));
    expect((err as LogCorruptedError).offset).toBe(target.offset);
    expect((await readFile(seg(1))).equals(buf)).toBe(true); // nothing truncated
  });

  it('refuses a gap in the segment chain', async () => {
    await writeRecords(['a']);
    await writeFile(seg(3), Buffer.concat([frame({ tcxSegment: 3, snapshot: false }), frame('x')]));
    await expect(open()).rejects.toBeInstanceOf(LogCorruptedError);
  });
});

describe('FileLog: group commit', () => {
  it('shares fdatasyncs among 200 concurrent forced appends', async () => {
    const { log } = await open();
    const before = log.stats().fsyncs;
    await Promise.all(Array.from({ length: 200 }, (_, i) => log.append({ i }, { force: true })));
    const { fsyncs, appendedRecords } = log.stats();
    expect(fsyncs - before).toBeLessThan(200);
    expect(fsyncs - before).toBeLessThanOrEqual(5);
    expect(appendedRecords).toBe(200);
    await log.close();
    expect((await open()).records).toEqual(Array.from({ length: 200 }, (_, i) => ({ i })));
  });

  it('keeps append order while later appends pile up behind a flush in progress', async () => {
    const { log } = await open();
    const all: Promise<void>[] = [];
    for (let wave = 0; wave < 20; wave++) {
      for (let j = 0; j < 10; j++) all.push(log.append({ n: wave * 10 + j }, { force: j === 9 }));
      await new Promise((r) => setImmediate(r));
    }
    await Promise.all(all);
    await log.close();
    expect((await open()).records).toEqual(Array.from({ length: 200 }, (_, n) => ({ n })));
  });

  it('writes unforced records after the lazy delay without syncing, or with the next forced batch', async () => {
    const { log } = await open({ lazyFlushDelayMs: 20 });
    const syncs = log.stats().fsyncs;
    const t0 = Date.now();
    await log.append('lazy', { force: false });
    expect(Date.now() - t0).toBeGreaterThanOrEqual(15);
    expect(log.stats().fsyncs).toBe(syncs);
    expect(decodeSegment(await readFile(seg(1))).frames).toHaveLength(2);

    const { log: slow } = await FileLog.open({ dir: join(dir, 'slow'), snapshot: () => [], lazyFlushDelayMs: 60_000 });
    const rider = slow.append('rider', { force: false });
    await slow.append('forced', { force: true });
    await rider;
    const pending = slow.append('pending', { force: false });
    const s0 = slow.stats().fsyncs;
    await slow.flush();
    await pending;
    expect(slow.stats().fsyncs).toBe(s0 + 1);
    await slow.flush(); // nothing dirty: no extra fdatasync
    expect(slow.stats().fsyncs).toBe(s0 + 1);
    await slow.close();
    await log.close();
    expect((await FileLog.open({ dir: join(dir, 'slow'), snapshot: () => [] })).records).toEqual(['rider', 'forced', 'pending']);
  });

  it('rejects appends after close and payloads that are not JSON, without failing the log', async () => {
    const { log } = await open();
    await expect(log.append(undefined, { force: true })).rejects.toBeInstanceOf(TypeError);
    await expect(log.append({ n: 1n }, { force: true })).rejects.toBeInstanceOf(TypeError);
    await log.append('ok', { force: true });
    await log.close();
    await log.close();
    await expect(log.append('late', { force: true })).rejects.toBeInstanceOf(LogFailedError);
    expect(log.failed).toBeUndefined();
    expect((await open()).records).toEqual(['ok']);
  });
});

/** A key-value reducer whose state is updated at append time, as the snapshot contract requires. */
type Op = { op: 'set'; key: string; value: unknown } | { op: 'del'; key: string };
class Store {
  readonly map = new Map<string, unknown>();
  apply(r: Op): void {
    if (r.op === 'set') this.map.set(r.key, r.value);
    else this.map.delete(r.key);
  }
  snapshot(): Op[] {
    return [...this.map].map(([key, value]) => ({ op: 'set', key, value }));
  }
  static replay(records: unknown[]): Store {
    const s = new Store();
    for (const r of records) s.apply(r as Op);
    return s;
  }
}

async function runTransactions(log: FileLog, store: Store, from: number, count: number): Promise<void> {
  const put = (r: Op, force: boolean): Promise<void> => {
    store.apply(r);
    return log.append(r, { force });
  };
  let next = from;
  const worker = async (): Promise<void> => {
    while (next < from + count) {
      const n = next++;
      const tx = `tx${n}`;
      void put({ op: 'set', key: tx, value: { state: 'active' } }, false);
      await put({ op: 'set', key: tx, value: { state: 'committed', at: Date.now() } }, true);
      if (n % 250 !== 0) void put({ op: 'del', key: tx }, false); // a few stay in doubt
    }
  };
  await Promise.all(Array.from({ length: 32 }, worker));
  await log.flush();
}

describe('FileLog: compaction', () => {
  it('makes every new segment durable (data, then directory) before deleting older ones', async () => {
    const events: string[] = [];
    const io: LogIo = {
      ...nodeLogIo,
      unlink: async (path) => (events.push(`unlink ${basename(path)}`), nodeLogIo.unlink(path)),
      open: async (path, flags) => {
        const h = await nodeLogIo.open(path, flags);
        const name = path === dir ? 'dir' : basename(path);
        if (flags === 'wx') events.push(`create ${name}`);
        return {
          write: (b, o, l, p) => (events.push(`write ${name}`), h.write(b, o, l, p)),
          datasync: () => (events.push(`datasync ${name}`), h.datasync()),
          sync: () => (events.push(`sync ${name}`), h.sync()),
          truncate: (n) => (n < 4096 && events.push(`truncate ${name}`), h.truncate(n)),
          close: () => h.close(),
        };
      },
    };
    const { log } = await open({ io, snapshot: () => ['s'] });
    await log.append('a', { force: true });
    await log.compact();
    await log.close();
    const [s1, s2] = [segmentFileName(1), segmentFileName(2)];
    expect(events).toEqual([
      `create ${s1}`, `write ${s1}`, `datasync ${s1}`, 'sync dir',
      `write ${s1}`, `datasync ${s1}`, `truncate ${s1}`, `datasync ${s1}`,
      `create ${s2}`, `write ${s2}`, `datasync ${s2}`, 'sync dir',
      `unlink ${s1}`, 'sync dir',
    ]);
  });

  it('keeps replay bounded however long the history, and replays the live state exactly', async () => {
    const store = new Store();
    let live = store; // the state the snapshot callback reflects
    const options = { segmentMaxBytes: 16 * 1024, lazyFlushDelayMs: 1, snapshot: () => live.snapshot() };
    let { log } = await open(options);
    await runTransactions(log, store, 0, 5000);
    expect(log.stats().compactions).toBeGreaterThan(5);
    expect(log.stats().segments).toBe(1);
    await log.close();
    expect((await segments()).length).toBe(1);

    let records: unknown[];
    ({ log, records } = await open(options));
    const firstCount = records.length;
    expect(firstCount).toBeLessThan(1000); // 15,000 records appended
    expect(Store.replay(records).map).toEqual(store.map);
    const replayed = Store.replay(records);
    live = replayed;
    await runTransactions(log, replayed, 5000, 5000);
    await log.close();

    ({ log, records } = await open(options));
    expect(records.length).toBeLessThan(1000);
    expect(Store.replay(records).map).toEqual(replayed.map);
    expect(replayed.map.size).toBe(40);
    expect((await segments()).length).toBe(1);
    await log.close();
  });

  it('goes on writing while a due compaction prepares its snapshot, and compacts once a preparation not overtaken is ready', async () => {
    const store = new Store();
    let release!: () => void;
    const prepared = new Promise<void>((resolve) => (release = resolve));
    let preparations = 0;
    const { log } = await open({
      segmentMaxBytes: 4096,
      snapshot: () => store.snapshot(),
      prepareSnapshot: async () => {
        preparations++;
        await prepared;
      },
    });
    const put = (r: Op): Promise<void> => (store.apply(r), log.append(r, { force: true }));
    // Far past the segment size: every forced write is acknowledged while the preparation waits.
    for (let i = 0; i < 400; i++) await put({ op: 'set', key: `k${i % 20}`, value: i });
    expect(preparations).toBe(1);
    expect(log.stats().compactions).toBe(0);
    // On demand it does not wait.
    await log.compact();
    expect(log.stats().compactions).toBe(1);
    for (let i = 0; i < 400; i++) await put({ op: 'set', key: `k${i % 20}`, value: -i });
    expect(log.stats().compactions).toBe(1);
    // The compaction on demand overtook the first preparation: the next due one prepares afresh.
    expect(preparations).toBe(2);
    release();
    for (let waited = 0; log.stats().compactions < 2 && waited < 5000; waited += 10) await new Promise((r) => setTimeout(r, 10));
    expect(log.stats().compactions).toBe(2);
    await put({ op: 'set', key: 'after', value: 1 });
    await log.close();
    const { log: reopened, records } = await open({ snapshot: () => [] });
    expect(Store.replay(records).map).toEqual(store.map);
    await reopened.close();
  });

  it('compacts all the same when preparing the snapshot fails', async () => {
    const store = new Store();
    const { log } = await open({
      segmentMaxBytes: 4096,
      snapshot: () => store.snapshot(),
      prepareSnapshot: () => Promise.reject(new Error('no preparation today')),
      logger: pino({ level: 'silent' }),
    });
    for (let i = 0; i < 400; i++) {
      const r: Op = { op: 'set', key: `k${i % 20}`, value: i };
      store.apply(r);
      await log.append(r, { force: true });
    }
    expect(log.stats().compactions).toBeGreaterThan(0);
    await log.close();
    const { log: reopened, records } = await open({ snapshot: () => [] });
    expect(Store.replay(records).map).toEqual(store.map);
    await reopened.close();
  });

  it('compacts on demand; appends made meanwhile follow the snapshot', async () => {
    const store = new Store();
    const { log } = await open({ snapshot: () => store.snapshot() });
    const put = (r: Op): Promise<void> => (store.apply(r), log.append(r, { force: true }));
    await put({ op: 'set', key: 'a', value: 1 });
    await put({ op: 'set', key: 'b', value: 2 });
    await put({ op: 'del', key: 'a' });
    const compacted = log.compact();
    const during = put({ op: 'set', key: 'c', value: 3 });
    await compacted;
    await during;
    await put({ op: 'set', key: 'd', value: 4 });
    expect(log.stats()).toMatchObject({ compactions: 1, segments: 1 });
    await log.close();
    expect(await segments()).toEqual([segmentFileName(2)]);
    const { records } = await open();
    expect(Store.replay(records).map).toEqual(store.map);
    expect(records.length).toBeLessThanOrEqual(4);
  });

  it('survives a snapshot callback that throws', async () => {
    let broken = true;
    const { log } = await open({
      snapshot: () => {
        if (broken) throw new Error('bug in snapshot');
        return ['state'];
      },
    });
    await log.append('x', { force: true });
    await expect(log.compact()).rejects.toThrow('bug in snapshot');
    expect(log.failed).toBeUndefined();
    await log.append('y', { force: true });
    broken = false;
    await log.compact();
    await log.append('z', { force: true });
    await log.close();
    expect((await open()).records).toEqual(['state', 'z']);
  });

  it('ignores a snapshot segment left without its end marker by a crash, wherever the crash hit', async () => {
    await writeRecords(['a', 'b', 'c']);
    const full = chainedSegment(segmentHeader(2, { snapshotRecords: 3 }), ['s1', 's2', 's3', { tcxSnapshotEnd: 2, records: 3 }, 'after']);
    const headerBytes = decodeSegment(full).frames[0]!.end;
    const cuts = [0, 5, headerBytes, headerBytes + 20, full.length - frame('after').length - 3];
    for (const cut of cuts) {
      await writeFile(seg(2), full.subarray(0, cut));
      const { log, records } = await open();
      expect(records, `cut ${cut}`).toEqual(['a', 'b', 'c']);
      expect(await segments()).toEqual([segmentFileName(1)]);
      await log.close();
    }
    // With the marker durable, the snapshot wins and the old segment is deleted.
    await writeFile(seg(2), full);
    const { log, records } = await open();
    expect(records).toEqual(['s1', 's2', 's3', 'after']);
    expect(await segments()).toEqual([segmentFileName(2)]);
    await log.append('next', { force: true });
    await log.close();
    expect((await open()).records).toEqual(['s1', 's2', 's3', 'after', 'next']);
  });

  it('refuses an incomplete snapshot with nothing older to fall back on', async () => {
    await writeFile(seg(7), Buffer.concat([frame({ tcxSegment: 7, snapshot: true, snapshotRecords: 2 }), frame('s1')]));
    await expect(open()).rejects.toBeInstanceOf(LogCorruptedError);
  });
});

/**
 * Wraps node:fs/promises so a test can make writes, syncs or segment creation fail; with
 * `syncWrites`, segment writes go through writeSync (on the event loop) as on a real file.
 */
function faultyIo(options: { syncWrites?: boolean } = {}): { io: LogIo; fail: { write: boolean; datasync: boolean; create: boolean } } {
  const fail = { write: false, datasync: false, create: false };
  const eio = (): Promise<never> => Promise.reject(Object.assign(new Error('EIO: i/o error'), { code: 'EIO' }));
  const io: LogIo = {
    ...nodeLogIo,
    open: async (path, flags) => {
      if (fail.create && flags === 'wx') return eio();
      const h = await nodeLogIo.open(path, flags);
      const wrapped: LogFile = {
        write: (b, o, l, p) => (fail.write ? eio() : h.write(b, o, l, p)),
        datasync: () => (fail.datasync ? eio() : h.datasync()),
        sync: () => h.sync(),
        truncate: (n) => h.truncate(n),
        close: () => h.close(),
      };
      const writeSync = h.writeSync?.bind(h);
      if (options.syncWrites === true && writeSync !== undefined) {
        wrapped.writeSync = (b, o, l, p) => {
          if (fail.write) throw Object.assign(new Error('EIO: i/o error'), { code: 'EIO' });
          return writeSync(b, o, l, p);
        };
      }
      return wrapped;
    },
  };
  return { io, fail };
}

describe.each([
  { writes: 'through the thread pool', syncWrites: false },
  { writes: 'on the event loop (writeSync)', syncWrites: true },
])('FileLog: fail-stop, segment writes $writes', ({ syncWrites }) => {
  it('never resolves a forced append whose fdatasync failed, and refuses everything after', async () => {
    const { io, fail } = faultyIo({ syncWrites });
    const { log } = await open({ io, lazyFlushDelayMs: 60_000 });
    await log.append('durable', { force: true });
    fail.datasync = true;
    let resolved = 0;
    const unforced = log.append('rider', { force: false });
    const forced = Array.from({ length: 10 }, (_, i) => log.append({ i }, { force: true }).then(() => resolved++));
    for (const p of [unforced, ...forced]) await expect(p).rejects.toBeInstanceOf(LogFailedError);
    expect(resolved).toBe(0);
    expect(log.failed).toBeInstanceOf(LogFailedError);
    fail.datasync = false;
    const size = (await stat(seg(1))).size;
    await expect(log.append('later', { force: true })).rejects.toBe(log.failed);
    await expect(log.append('later', { force: false })).rejects.toBeInstanceOf(LogFailedError);
    await expect(log.flush()).rejects.toBeInstanceOf(LogFailedError);
    await expect(log.compact()).rejects.toBeInstanceOf(LogFailedError);
    expect((await stat(seg(1))).size).toBe(size); // never writes again
    await log.close();
    expect((await open()).records[0]).toBe('durable');
  });

  it('fails stop when a write fails', async () => {
    const { io, fail } = faultyIo({ syncWrites });
    const { log } = await open({ io });
    fail.write = true;
    const a = log.append('a', { force: false });
    const b = log.append('b', { force: true });
    await expect(b).rejects.toBeInstanceOf(LogFailedError);
    await expect(a).rejects.toBeInstanceOf(LogFailedError);
    expect(log.failed?.cause).toMatchObject({ code: 'EIO' });
    await log.close();
  });

  it('fails stop when rotation cannot create the next segment, keeping the old one authoritative', async () => {
    const { io, fail } = faultyIo({ syncWrites });
    const { log } = await open({ io, snapshot: () => ['snap'] });
    await log.append('a', { force: true });
    fail.create = true;
    const during = log.append('b', { force: true });
    await expect(log.compact()).rejects.toBeInstanceOf(LogFailedError);
    await during; // appended before the snapshot: written and synced to the old segment
    await expect(log.append('c', { force: true })).rejects.toBeInstanceOf(LogFailedError);
    expect(log.failed).toBeInstanceOf(LogFailedError);
    await log.close();
    expect((await open()).records).toEqual(['a', 'b']);
  });
});
