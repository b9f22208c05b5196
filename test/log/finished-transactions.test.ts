import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { BucketCorruptedError, encodeBucket, FinishedBucket } from '../../src/log/finished-bucket.js';
import { FinishedTransactions } from '../../src/log/finished-transactions.js';
import type { DurableTransaction } from '../../src/log/log-records.js';

const T0 = Date.parse('2026-12-01T10:00:00.000Z');
const at = (ms: number): string => new Date(T0 + ms).toISOString();

function finished(i: number, overrides: Partial<DurableTransaction> = {}): DurableTransaction {
  const id = overrides.id ?? randomUUID();
  const commit = i % 3 !== 0;
  return {
    id,
    protocol: i % 2 === 0 ? '2pc' : '3pc',
    timeoutMs: 30_000 + i,
    createdAt: at(i),
    branches: [
      { branchId: 'b1', participant: 'bank-a', kind: 'postgres', gid: `tcx:c0ffee:${id}:1`, vote: 'yes' },
      { branchId: 'b2', participant: i % 2 === 0 ? 'ledger' : 'cache', kind: i % 2 === 0 ? 'http' : 'redis', gid: `tcx:c0ffee:${id}:2`, ...(commit ? { vote: 'yes' as const } : { vote: 'no' as const }) },
    ],
    ...(commit ? { decision: i % 2 === 0 ? ('commit' as const) : ('precommit' as const), decidedAt: at(i + 1) } : {}),
    ...(commit ? {} : { reason: `branch b2 on cache failed: überzogen ✗ #${i}` }),
    outcome: commit ? 'commit' : 'abort',
    endedAt: at(i + 2),
    ...overrides,
  };
}

describe('sealed buckets of finished transactions', () => {
  it('answer a listing in place: creation times, outcomes, ids and participants match the decoded entries', () => {
    const txs = Array.from({ length: 200 }, (_, i) => finished(i));
    // Non-canonical gids sit between branches: the in-place participant test must step over them.
    txs.push(finished(9, { branches: [
      { branchId: 'x1', participant: 'legacy', kind: 'postgres', gid: 'tcx:other:legacy:3' },
      { branchId: 'b2', participant: 'tail', kind: 'http', gid: 'not-canonical' },
    ] }));
    const bucket = new FinishedBucket(encodeBucket(txs));
    expect(bucket.stringIndex('nobody')).toBe(-1);
    const names = ['bank-a', 'ledger', 'cache', 'legacy', 'tail', 'postgres'];
    for (let i = 0; i < bucket.count; i++) {
      const tx = bucket.at(i);
      expect(bucket.idOf(i)).toBe(tx.id);
      expect(bucket.createdAtOf(i)).toBe(Date.parse(tx.createdAt));
      expect(bucket.outcomeOf(i)).toBe(tx.outcome);
      for (const name of names) {
        const index = bucket.stringIndex(name);
        expect(index >= 0 && bucket.hasParticipant(i, index), `${tx.id} on ${name}`).toBe(tx.branches.some((b) => b.participant === name));
      }
    }
    expect(bucket.oldestCreatedAt).toBe(Math.min(...txs.map((t) => Date.parse(t.createdAt))));
    expect(bucket.newestCreatedAt).toBe(Math.max(...txs.map((t) => Date.parse(t.createdAt))));
  });

  it('give back every transaction exactly, by id, and nothing for ids they do not hold', () => {
    const txs = Array.from({ length: 500 }, (_, i) => finished(i));
    // A branch whose gid is not the canonical one survives too.
    txs.push(finished(7, { branches: [{ branchId: 'x9', participant: 'old', kind: 'postgres', gid: 'tcx:other:legacy:3' }] }));
    const bucket = new FinishedBucket(encodeBucket(txs));
    expect(bucket.count).toBe(txs.length);
    for (const tx of txs) expect(bucket.get(tx.id)).toEqual(tx);
    expect(bucket.get(randomUUID())).toBeUndefined();
    expect(bucket.get('not-a-uuid')).toBeUndefined();
    expect(bucket.newestEndedAt).toBe(Math.max(...txs.map((t) => Date.parse(t.endedAt!))));
    expect([...bucket.all()].length).toBe(txs.length);
  });

  it('hold a finished transaction in well under 100 bytes', () => {
    const txs = Array.from({ length: 10_000 }, (_, i) => finished(i, { reason: undefined, ...(i % 3 === 0 ? { outcome: 'abort' } : {}) }));
    const bytes = encodeBucket(txs).length;
    expect(bytes / txs.length).toBeLessThan(100);
  });

  it('refuse a damaged bucket instead of answering from it', () => {
    const buf = encodeBucket([finished(1), finished(2)]);
    for (const offset of [0, 20, Math.floor(buf.length / 2), buf.length - 1]) {
      const bad = Buffer.from(buf);
      bad[offset] = bad[offset]! ^ 0xff;
      expect(() => new FinishedBucket(bad)).toThrow(BucketCorruptedError);
    }
    expect(() => new FinishedBucket(buf.subarray(0, buf.length - 3))).toThrow(BucketCorruptedError);
  });
});

describe('the finished-transaction store', () => {
  it('answers from recent and sealed transactions alike, and seals only UUID ids', () => {
    const store = new FinishedTransactions();
    const sealedLater = Array.from({ length: 50 }, (_, i) => finished(i));
    for (const tx of sealedLater) store.add(tx);
    const odd = finished(99, { id: 'legacy-id-1' });
    store.add(odd);
    const [sealed] = store.seal();
    expect(sealed?.bucket.count).toBe(50);
    expect([...store.unsealed()]).toEqual([odd]);
    const recent = finished(100);
    store.add(recent);
    expect(store.size).toBe(52);
    for (const tx of [...sealedLater, odd, recent]) expect(store.get(tx.id)).toEqual(tx);
  });

  it('prunes whole buckets past retention, oldest first, and keeps at most maxFinished', () => {
    const store = new FinishedTransactions();
    const batches = [0, 1, 2].map((b) => Array.from({ length: 10 }, (_, i) => finished(b * 1000 + i)));
    for (const batch of batches) {
      for (const tx of batch) store.add(tx);
      store.seal();
    }
    const recent = Array.from({ length: 5 }, (_, i) => finished(5000 + i));
    for (const tx of recent) store.add(tx);
    // Retention: the first bucket ended at T0+11 at the latest; a cutoff after it drops only that bucket.
    expect(store.prune(T0 + 12 + 100, 100, 1_000)).toBe(10);
    expect(store.get(batches[0]![0]!.id)).toBeUndefined();
    expect(store.get(batches[1]![0]!.id)).toBeDefined();
    // Cap: 25 left; at most 12 kept → both remaining buckets go (whole), the recent ones stay.
    expect(store.prune(T0, 3_600_000, 12)).toBe(20);
    expect(store.size).toBe(5);
    for (const tx of recent) expect(store.get(tx.id)).toEqual(tx);
    // Recent ones go oldest first once no bucket is left.
    expect(store.prune(T0, 3_600_000, 3)).toBe(2);
    expect(store.get(recent[0]!.id)).toBeUndefined();
    expect(store.get(recent[4]!.id)).toBeDefined();
  });
});

/** A fixed UUID from a counter: the same bytes on every run. */
const fixedId = (n: number): string => {
  const h = (n * 2654435761 >>> 0).toString(16).padStart(8, '0') + n.toString(16).padStart(24, '0');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-4${h.slice(13, 16)}-8${h.slice(17, 20)}-${h.slice(20, 32)}`;
};

/** Every shape an entry can take, in an order the encoder must sort. */
function formatFixture(): DurableTransaction[] {
  const txs = Array.from({ length: 300 }, (_, i) => finished(i, { id: fixedId(i) }));
  txs.forEach((tx, i) => {
    if (i % 7 === 0) txs[i] = { ...tx, protocol: 'unknown' };
    if (i % 11 === 0) txs[i] = { ...txs[i]!, onePhase: true, branches: txs[i]!.branches.slice(0, 1) };
  });
  const id = fixedId(1000);
  txs.push(
    finished(1, { id, reason: `${'ü'.repeat(40_000)}`, decision: 'abort', outcome: 'abort' }),
    finished(2, { id: fixedId(1001), branches: [
      { branchId: 'b1', participant: 'p', kind: 'redis', gid: `tcx:other-coordinator:${fixedId(1001)}:1`, vote: 'read-only' },
      { branchId: 'b2', participant: 'p', kind: 'redis', gid: `tcx:c0ffee:${fixedId(7)}:2` },
      { branchId: 'x3', participant: 'q', kind: 'nats', gid: `tcx:c0ffee:${fixedId(1001)}:3` },
      { branchId: 'b4', participant: 'q', kind: 'nats', gid: 'a gid of its own' },
    ] }),
    // Where reading a gid by comparing strings ends and reading it field by field begins.
    finished(4, { id: fixedId(1003), branches: [
      { branchId: 'b07', participant: 'p', kind: 'postgres', gid: `tcx:c0ffee:${fixedId(1003)}:07`, vote: 'yes' },
      { branchId: 'b7', participant: 'p', kind: 'postgres', gid: `tcx:c0ffee:${fixedId(1003)}:007`, vote: 'yes' },
      { branchId: 'b0', participant: 'p', kind: 'postgres', gid: `tcx:c0ffee:${fixedId(1003)}:0`, vote: 'yes' },
      { branchId: 'b1234567', participant: 'p', kind: 'postgres', gid: `tcx:c0ffee:${fixedId(1003)}:1234567`, vote: 'yes' },
      { branchId: 'b5', participant: 'p', kind: 'postgres', gid: `tcx:${'c'.repeat(40)}:${fixedId(1003)}:5`, vote: 'yes' },
      { branchId: 'b6', participant: 'p', kind: 'postgres', gid: `tcx:${'c'.repeat(41)}:${fixedId(1003)}:6`, vote: 'yes' },
      { branchId: 'b8', participant: 'p', kind: 'postgres', gid: `tcx:c0ffee:${fixedId(1003)}:8:9`, vote: 'yes' },
      { branchId: 'b9', participant: 'p', kind: 'postgres', gid: `tcx:c0_fee:${fixedId(1003)}:9`, vote: 'yes' },
      { branchId: 'b10', participant: 'p', kind: 'postgres', gid: `TCX:c0ffee:${fixedId(1003)}:10`, vote: 'yes' },
      { branchId: 'b11', participant: 'p', kind: 'postgres', gid: `tcx:c0ffee:${fixedId(1003)}:11`, vote: 'yes' },
      { branchId: 'b12', participant: 'p', kind: 'postgres', gid: `tcx:c0ffee:${fixedId(7)}:12`, vote: 'yes' },
      { branchId: 'b13', participant: 'p', kind: 'postgres', gid: `tcx:c0ffee:${fixedId(1003)}:14`, vote: 'yes' },
      { branchId: 'b15', participant: 'p', kind: 'postgres', gid: `tcx:c0ffef:${fixedId(1003)}:15`, vote: 'yes' },
    ] }),
    finished(3, { id: fixedId(1002), decidedAt: undefined, branches: Array.from({ length: 300 }, (_, n) => (
      { branchId: `b${n + 1}`, participant: `p${n % 5}`, kind: 'http', gid: `tcx:c0ffee:${fixedId(1002)}:${n + 1}`, vote: 'yes' as const }
    )) }),
  );
  // Not in id order: the encoder sorts.
  return txs.reverse();
}

describe('the bucket format', () => {
  it('is byte for byte version 1: buckets written by earlier versions stay readable and equal input gives an equal file', async () => {
    const { createHash } = await import('node:crypto');
    const txs = formatFixture();
    const buf = encodeBucket(txs);
    expect(createHash('sha256').update(buf).digest('hex')).toBe('8735f2abae7263ad41e61ff7ea99a9e41a1c686202747dd0e2b0d1ba573720b2');
    const bucket = new FinishedBucket(buf);
    expect(bucket.count).toBe(txs.length);
    for (const tx of txs) expect(bucket.get(tx.id)?.id).toBe(tx.id);
  });
});

describe('the bucket format: what it cannot hold', () => {
  it('refuses a 65,536th distinct string and a string past 65,535 bytes instead of writing a bucket that decodes wrong', () => {
    // Unique participant names, plus the kind and the coordinator id: 65,536 strings exactly.
    const names = Array.from({ length: 65_534 }, (_, i) => `p${i}`);
    const txs: DurableTransaction[] = [];
    for (let t = 0; t * 255 < names.length; t++) {
      const id = fixedId(20_000 + t);
      txs.push(finished(t, { id, branches: names.slice(t * 255, (t + 1) * 255).map((participant, n) => ({ branchId: `b${n + 1}`, participant, kind: 'postgres', gid: `tcx:c0ffee:${id}:${n + 1}`, vote: 'yes' as const })) }));
    }
    expect(() => encodeBucket(txs)).toThrow(RangeError);
    expect(() => encodeBucket(txs.slice(0, -1))).not.toThrow();
    const long = finished(1, { id: fixedId(30_000), branches: [{ branchId: 'b1', participant: 'x'.repeat(70_000), kind: 'postgres', gid: `tcx:c0ffee:${fixedId(30_000)}:1`, vote: 'yes' }] });
    expect(() => encodeBucket([long])).toThrow(RangeError);
  });
});

describe('sealing ahead of a compaction', () => {
  it('changes nothing until the seal, which installs the bucket and leaves a few late ones recent', async () => {
    const store = new FinishedTransactions();
    const first = Array.from({ length: 5000 }, (_, i) => finished(i));
    for (const tx of first) store.add(tx);
    const sealing = store.sealAhead();
    const later = Array.from({ length: 50 }, (_, i) => finished(10_000 + i));
    for (const tx of later) store.add(tx);
    expect(await sealing).toBe(5000);
    // Until the seal they are all still recent: the invariant "a bucket holds what ended before
    // the snapshot that sealed it" holds, and pruning still sees each of them.
    expect(store.sealedBuckets()).toHaveLength(0);
    expect([...store.recent()]).toHaveLength(5050);
    const added = store.seal(100);
    expect(added.map((b) => b.bucket.count)).toEqual([5000]);
    expect([...store.unsealed()].map((tx) => tx.id)).toEqual(later.map((tx) => tx.id));
    for (const tx of [...first, ...later]) expect(store.get(tx.id)).toEqual(tx);
    expect(store.size).toBe(5050);
    // The next seal, with nothing sealed ahead, seals them all.
    expect(store.seal(100).map((b) => b.bucket.count)).toEqual([50]);
    expect([...store.unsealed()]).toEqual([]);
  });

  it('is dropped when one of them changed or went before the seal: the seal does all of it, the newer version wins', async () => {
    const store = new FinishedTransactions();
    const first = Array.from({ length: 3000 }, (_, i) => finished(i));
    for (const tx of first) store.add(tx);
    expect(await store.sealAhead()).toBe(3000);
    const replaced = { ...first[1234]!, reason: 'a newer version of it' };
    store.add(replaced);
    store.delete(first[99]!.id);
    const added = store.seal(10_000);
    expect(added.map((b) => b.bucket.count)).toEqual([2999]);
    expect([...store.unsealed()]).toEqual([]);
    expect(store.get(replaced.id)).toEqual(replaced);
    expect(store.get(first[99]!.id)).toBeUndefined();
    expect(store.size).toBe(2999);
    // Below its minimum it does not start at all.
    expect(await store.sealAhead(10_000)).toBe(0);
  });
});
