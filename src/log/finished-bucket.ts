/**
 * A sealed bucket of finished transactions, searched in place without parsing it (the layout:
 * bucket-format.ts; written by bucket-encoder.ts). Finished transactions are kept only so that
 * clients (and 3PC participants) can still ask for their outcome; a million of them must
 * neither fill the memory nor slow the start-up, so they live here instead of as objects or JSON.
 *
 * Only transactions whose id is a UUID can be sealed (every id this coordinator creates is
 * one); see `canSeal`.
 */

import { crc32 } from 'node:zlib';
import { DECISIONS, HEADER_BYTES, iso, MAGIC, OUTCOMES, UUID, uuidBytes, uuidString, VERSION, VOTES } from './bucket-format.js';
import type { BranchRecord, DurableTransaction, ParticipantKind } from './log-records.js';

export { encodeBucket } from './bucket-encoder.js';

export class BucketCorruptedError extends Error {
  constructor(detail: string) {
    super(`finished-transaction bucket corrupted: ${detail}`);
    this.name = 'BucketCorruptedError';
  }
}

/** The key a bucket finds a transaction by, or undefined for an id no bucket can hold. */
export function bucketKey(id: string): Buffer | undefined {
  if (!UUID.test(id)) return undefined;
  const key = Buffer.alloc(16);
  uuidBytes(id, key, 0);
  return key;
}

/** True when the transaction can go into a sealed bucket (its id is a lowercase UUID). */
export function canSeal(tx: DurableTransaction): boolean {
  return UUID.test(tx.id);
}

interface BucketTimes {
  readonly newestEnded: number;
  readonly newestCreated: number;
  readonly oldestCreated: number;
}

/** A sealed bucket, searched in place. */
export class FinishedBucket {
  readonly count: number;
  readonly bytes: number;
  readonly #buf: Buffer;
  /** Read on first use, not at start-up (a scan of every entry; pruning asks only the oldest bucket). */
  #times: BucketTimes | undefined;
  readonly #keysAt: number;
  readonly #offsetsAt: number;
  readonly #dataAt: number;
  readonly #strings: string[];

  constructor(buf: Buffer) {
    if (buf.length < HEADER_BYTES + 4 + 2) throw new BucketCorruptedError('too short');
    const at = buf.length - 4;
    if (buf.readUInt32LE(at) !== crc32(buf.subarray(0, at))) throw new BucketCorruptedError('checksum mismatch');
    if (buf.readUInt32LE(0) !== MAGIC || buf.readUInt8(4) !== VERSION) throw new BucketCorruptedError('unknown format');
    this.#buf = buf;
    this.count = buf.readUInt32LE(5);
    const stringsBytes = buf.readUInt32LE(9);
    const dataBytes = buf.readUInt32LE(13);
    this.#keysAt = HEADER_BYTES;
    this.#offsetsAt = this.#keysAt + 16 * this.count;
    const stringsAt = this.#offsetsAt + 4 * (this.count + 1);
    this.#dataAt = stringsAt + stringsBytes;
    if (this.#dataAt + dataBytes !== at) throw new BucketCorruptedError('sizes do not add up');
    this.#strings = [];
    let s = stringsAt + 2;
    for (let i = buf.readUInt16LE(stringsAt); i > 0; i--) {
      const len = buf.readUInt16LE(s);
      this.#strings.push(buf.toString('utf8', s + 2, s + 2 + len));
      s += 2 + len;
    }
    this.bytes = buf.length;
  }

  /** The latest end time in the bucket (epoch ms): it can be pruned once this is past retention. */
  get newestEndedAt(): number {
    return this.#scanTimes().newestEnded;
  }

  /** The latest and earliest creation times in the bucket (epoch ms): listings skip buckets outside their range. */
  get newestCreatedAt(): number {
    return this.#scanTimes().newestCreated;
  }

  get oldestCreatedAt(): number {
    return this.#scanTimes().oldestCreated;
  }

  #scanTimes(): BucketTimes {
    if (this.#times !== undefined) return this.#times;
    const buf = this.#buf;
    let newestEnded = Number.NEGATIVE_INFINITY;
    let newestCreated = Number.NEGATIVE_INFINITY;
    let oldestCreated = Number.POSITIVE_INFINITY;
    for (let i = 0; i < this.count; i++) {
      const entry = this.#dataAt + buf.readUInt32LE(this.#offsetsAt + 4 * i);
      const ended = buf.readDoubleLE(entry + 17);
      if (ended > newestEnded) newestEnded = ended;
      const created = buf.readDoubleLE(entry + 1);
      if (created > newestCreated) newestCreated = created;
      if (created < oldestCreated) oldestCreated = created;
    }
    this.#times = { newestEnded, newestCreated, oldestCreated };
    return this.#times;
  }

  /** The index of `s` in the bucket's string table, or -1: a participant no entry names. */
  stringIndex(s: string): number {
    return this.#strings.indexOf(s);
  }

  /** True when a branch of the entry at `index` is on the participant with string index `participant`, read in place. */
  hasParticipant(index: number, participant: number): boolean {
    const buf = this.#buf;
    let at = this.#dataAt + buf.readUInt32LE(this.#offsetsAt + 4 * index);
    at += 31 + buf.readUInt16LE(at + 29);
    for (let n = buf.readUInt8(at++); n > 0; n--) {
      if (buf.readUInt16LE(at + 5) === participant) return true;
      const bflags = buf.readUInt8(at);
      at += 11;
      if ((bflags & 4) !== 0) at += 2 + buf.readUInt16LE(at);
    }
    return false;
  }

  /** The creation time (epoch ms) of the entry at `index`, read in place. */
  createdAtOf(index: number): number {
    return this.#buf.readDoubleLE(this.#dataAt + this.#buf.readUInt32LE(this.#offsetsAt + 4 * index) + 1);
  }

  /** The outcome of the entry at `index`, read in place. */
  outcomeOf(index: number): 'commit' | 'abort' | undefined {
    return OUTCOMES[(this.#buf.readUInt8(this.#dataAt + this.#buf.readUInt32LE(this.#offsetsAt + 4 * index)) >> 1) & 3];
  }

  /** The transaction id of the entry at `index`. */
  idOf(index: number): string {
    return uuidString(this.#buf, this.#keysAt + 16 * index);
  }

  /** The whole entry at `index` (0 ≤ index < count). */
  at(index: number): DurableTransaction {
    return this.#decode(index);
  }

  /** The encoded bucket (what is written to its file). */
  get buffer(): Buffer {
    return this.#buf;
  }

  get(id: string): DurableTransaction | undefined {
    const key = bucketKey(id);
    return key === undefined ? undefined : this.getByKey(key);
  }

  /** Looks up by the 16-byte key of `bucketKey` (compute it once to search several buckets). */
  getByKey(key: Buffer): DurableTransaction | undefined {
    let lo = 0;
    let hi = this.count - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      const c = this.#buf.compare(key, 0, 16, this.#keysAt + 16 * mid, this.#keysAt + 16 * mid + 16);
      if (c === 0) return this.#decode(mid);
      if (c > 0) hi = mid - 1;
      else lo = mid + 1;
    }
    return undefined;
  }

  /** Every transaction in the bucket (for tests and re-encoding). */
  *all(): Generator<DurableTransaction> {
    for (let i = 0; i < this.count; i++) yield this.#decode(i);
  }

  #decode(index: number): DurableTransaction {
    const buf = this.#buf;
    const id = uuidString(buf, this.#keysAt + 16 * index);
    let at = this.#dataAt + buf.readUInt32LE(this.#offsetsAt + 4 * index);
    const flags = buf.readUInt8(at);
    const createdAt = iso(buf.readDoubleLE(at + 1));
    const decidedAt = iso(buf.readDoubleLE(at + 9));
    const endedAt = iso(buf.readDoubleLE(at + 17));
    const timeoutMs = buf.readUInt32LE(at + 25);
    const reasonLen = buf.readUInt16LE(at + 29);
    const reason = reasonLen === 0 ? undefined : buf.toString('utf8', at + 31, at + 31 + reasonLen);
    at += 31 + reasonLen;
    const branches: BranchRecord[] = [];
    for (let n = buf.readUInt8(at++); n > 0; n--) {
      const bflags = buf.readUInt8(at);
      const branchNo = buf.readUInt32LE(at + 1);
      const participant = this.#strings[buf.readUInt16LE(at + 5)] ?? '';
      const kind = (this.#strings[buf.readUInt16LE(at + 7)] ?? 'postgres') as ParticipantKind;
      const coordinator = this.#strings[buf.readUInt16LE(at + 9)] ?? '';
      at += 11;
      let branchId = `b${branchNo}`;
      let gid = `tcx:${coordinator}:${id}:${branchNo}`;
      if ((bflags & 4) !== 0) {
        const len = buf.readUInt16LE(at);
        const text = buf.toString('utf8', at + 2, at + 2 + len);
        const nl = text.indexOf('\n');
        branchId = text.slice(0, nl);
        gid = text.slice(nl + 1);
        at += 2 + len;
      }
      const vote = VOTES[bflags & 3];
      branches.push({ branchId, participant, kind, gid, ...(vote === undefined ? {} : { vote }) });
    }
    const outcome = OUTCOMES[(flags >> 1) & 3];
    const decision = DECISIONS[(flags >> 3) & 7];
    return {
      id,
      protocol: (flags & 64) !== 0 ? 'unknown' : (flags & 1) === 1 ? '3pc' : '2pc',
      timeoutMs,
      createdAt: createdAt ?? new Date(0).toISOString(),
      branches,
      ...(decision === undefined ? {} : { decision }),
      ...(decidedAt === undefined ? {} : { decidedAt }),
      ...(reason === undefined ? {} : { reason }),
      ...(outcome === undefined ? {} : { outcome }),
      ...(endedAt === undefined ? {} : { endedAt }),
      ...((flags & 128) !== 0 ? { onePhase: true as const } : {}),
    };
  }
}
