/**
 * Finished transactions, kept for the retention window so that their outcome
 * can still be asked for (by clients, and by 3PC participants: for them "no
 * such transaction" means abort, so a committed one must never go missing
 * early).
 *
 * Those that finished since the last compaction are plain objects (`recent`);
 * each compaction seals them into an immutable binary bucket
 * (finished-bucket.ts) that is written once to a file of its own and never
 * rewritten, so neither memory nor compaction nor start-up grows with the
 * history the way JSON records would. Pruning drops whole buckets, oldest
 * first: a bucket goes once its newest transaction is past retention, or while
 * more than `maxFinished` are kept.
 */

import { encodeBucketInSlices } from './bucket-encoder.js';
import { bucketKey, canSeal, encodeBucket, FinishedBucket } from './finished-bucket.js';
import type { DurableTransaction } from './log-records.js';

export interface SealedBucket {
  /** Sequence number, which names its file. */
  readonly seq: number;
  readonly bucket: FinishedBucket;
}

export class FinishedTransactions {
  readonly #recent = new Map<string, DurableTransaction>();
  /** Oldest first. */
  #sealed: SealedBucket[] = [];
  #nextSeq = 1;
  #sealedCount = 0;
  #sealingAhead = false;
  /** A bucket sealed ahead of the next compaction, and the transactions in it. */
  #ahead: { readonly transactions: readonly DurableTransaction[]; readonly bucket: FinishedBucket } | undefined;

  add(tx: DurableTransaction): void {
    this.#recent.delete(tx.id);
    this.#recent.set(tx.id, tx);
  }

  /** Forgets a transaction (it is live again: a snapshot of an older state said it finished). */
  delete(id: string): void {
    this.#recent.delete(id);
  }

  get(id: string): DurableTransaction | undefined {
    const recent = this.#recent.get(id);
    if (recent !== undefined) return recent;
    const key = bucketKey(id);
    if (key === undefined) return undefined;
    for (let i = this.#sealed.length - 1; i >= 0; i--) {
      const found = this.#sealed[i]!.bucket.getByKey(key);
      if (found !== undefined) return found;
    }
    return undefined;
  }

  /**
   * Finished since the last seal. (A record about a transaction in a sealed bucket cannot
   * follow: buckets hold what ended before the snapshot that sealed them, and the log after
   * that snapshot holds only later records.)
   */
  hasRecent(id: string): boolean {
    return this.#recent.has(id);
  }

  get size(): number {
    return this.#recent.size + this.#sealedCount;
  }

  /** Bytes held by sealed buckets (the recent ones are ordinary objects). */
  get sealedBytes(): number {
    return this.#sealed.reduce((n, s) => n + s.bucket.bytes, 0);
  }

  /** Finished since the last seal, in the order they finished. */
  recent(): Iterable<DurableTransaction> {
    return this.#recent.values();
  }

  /**
   * The recent transactions the last seal() left: those that cannot be sealed (an id that is not a
   * UUID: none this coordinator makes) and those it left for the next one. A snapshot writes them
   * as records.
   */
  *unsealed(): Generator<DurableTransaction> {
    yield* this.#recent.values();
  }

  /**
   * Seals the recent transactions into buckets (at compaction, at the rotation point). A bucket
   * sealed ahead (sealAhead) whose transactions are all still recent and unchanged goes in as it
   * is; those that finished after it are sealed too when there are at least `minimumRest` of
   * them, else they stay recent for the next seal (the snapshot writes them as records). Without
   * a usable bucket sealed ahead, every sealable recent transaction is sealed here. Returns the
   * buckets it added.
   */
  seal(minimumRest = 1): SealedBucket[] {
    const added: SealedBucket[] = [];
    const ahead = this.#ahead;
    this.#ahead = undefined;
    let rest = minimumRest;
    if (ahead !== undefined && ahead.transactions.every((tx) => this.#recent.get(tx.id) === tx)) {
      for (const tx of ahead.transactions) this.#recent.delete(tx.id);
      added.push(this.#addSealed(this.#nextSeq, ahead.bucket));
    } else {
      rest = 1;
    }
    const sealable = [...this.#recent.values()].filter(canSeal);
    if (sealable.length === 0 || sealable.length < rest) return added;
    const bucket = new FinishedBucket(encodeBucket(sealable));
    // Usually every one is sealable: one clear() instead of a delete per transaction.
    if (sealable.length === this.#recent.size) this.#recent.clear();
    else for (const tx of sealable) this.#recent.delete(tx.id);
    added.push(this.#addSealed(this.#nextSeq, bucket));
    return added;
  }

  /**
   * Encodes, a slice at a time with the event loop free in between, a bucket of the transactions
   * that are recent when it starts — ahead of a compaction, whose seal() then installs it and has
   * only the few that finished meanwhile left to do while every transaction in flight waits.
   * Nothing changes until that seal(): they stay recent (and prunable) meanwhile, and if any of
   * them changed or went by then, seal() does all the work itself. Resolves with how many it
   * encoded; one runs at a time.
   */
  async sealAhead(minimum = 1): Promise<number> {
    if (this.#sealingAhead) return 0;
    const sealable = [...this.#recent.values()].filter(canSeal);
    if (sealable.length < Math.max(1, minimum)) return 0;
    this.#sealingAhead = true;
    try {
      this.#ahead = { transactions: sealable, bucket: new FinishedBucket(await encodeBucketInSlices(sealable)) };
      return sealable.length;
    } finally {
      this.#sealingAhead = false;
    }
  }

  /** A bucket read back from its file at start-up. */
  load(seq: number, bucket: FinishedBucket): void {
    this.#addSealed(seq, bucket);
  }

  #addSealed(seq: number, bucket: FinishedBucket): SealedBucket {
    const sealed = { seq, bucket };
    this.#sealed.push(sealed);
    this.#sealed.sort((a, b) => a.seq - b.seq);
    this.#sealedCount += bucket.count;
    this.#nextSeq = Math.max(this.#nextSeq, seq + 1);
    return sealed;
  }

  sealedBuckets(): readonly SealedBucket[] {
    return this.#sealed;
  }

  /**
   * Drops what is past retention or over the cap, oldest first: whole buckets (so the cap may
   * leave up to one bucket fewer than `maxFinished`), then recent transactions.
   */
  prune(now: number, retentionMs: number, maxFinished: number): number {
    const cutoff = now - retentionMs;
    let removed = 0;
    while (this.#sealed.length > 0) {
      const oldest = this.#sealed[0]!;
      if (oldest.bucket.newestEndedAt >= cutoff && this.size <= maxFinished) break;
      this.#sealed.shift();
      this.#sealedCount -= oldest.bucket.count;
      removed += oldest.bucket.count;
    }
    // Recent ones, in the order they finished.
    for (const [id, tx] of this.#recent) {
      const endedAt = tx.endedAt === undefined ? now : Date.parse(tx.endedAt);
      if (endedAt >= cutoff && this.size <= maxFinished) break;
      this.#recent.delete(id);
      removed++;
    }
    return removed;
  }
}
