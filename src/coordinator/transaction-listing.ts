/**
 * Lists transactions newest first — the running ones and the finished ones still
 * within retention — filtered by state, participant and creation time, a page
 * at a time.
 *
 * The order is createdAt descending, then id descending, and a cursor is the
 * position of the last transaction of a page. A transaction's createdAt never
 * changes, so following the cursors neither repeats nor skips one however many
 * begin or end meanwhile (one that begins after the first page is newer than
 * every cursor: a fresh listing shows it). A page costs one pass over the
 * running transactions and the recent finished ones; sealed buckets are read
 * in place (a participant filter too), and a bucket wholly outside the page's
 * range — older than a full page, newer than the cursor, or not naming the
 * participant — is skipped whole.
 */

import { CoordinatorError } from '../errors.js';
import type { DurableState } from '../log/durable-state.js';
import type { DurableTransaction } from '../log/log-records.js';
import { durableView, type LiveTransaction, type TransactionView } from './live-transaction.js';

export interface ListCursor {
  readonly createdAtMs: number;
  readonly id: string;
}

export interface ListFilter {
  /** A phase, `in-doubt`, or (finished) `committed` / `aborted`. */
  readonly state?: string;
  readonly participant?: string;
  /** Only transactions created at or after this time (epoch ms). */
  readonly sinceMs?: number;
  readonly limit: number;
  /** Only transactions after this position (older, in the listing's order). */
  readonly after?: ListCursor;
}

export interface ListPage {
  readonly transactions: TransactionView[];
  /** Where the next page starts; null when this page is the last. */
  readonly nextCursor: string | null;
}

const ID = /^[A-Za-z0-9-]{1,64}$/;

export function encodeCursor(cursor: ListCursor): string {
  return Buffer.from(`${cursor.createdAtMs}:${cursor.id}`, 'utf8').toString('base64url');
}

export function decodeCursor(raw: string): ListCursor {
  const text = Buffer.from(raw, 'base64url').toString('utf8');
  const m = /^(\d{1,16}):(.+)$/.exec(text);
  if (m === null || !ID.test(m[2]!) || encodeCursor({ createdAtMs: Number(m[1]), id: m[2]! }) !== raw) {
    throw new CoordinatorError('VALIDATION_FAILED', 'cursor is not one this coordinator handed out (take it from nextCursor)');
  }
  return { createdAtMs: Number(m[1]), id: m[2]! };
}

/** Newest first: createdAt descending, then id descending. */
function newer(aMs: number, aId: string, bMs: number, bId: string): boolean {
  return aMs !== bMs ? aMs > bMs : aId > bId;
}

interface Candidate {
  readonly ms: number;
  readonly id: string;
  readonly view: () => TransactionView;
}

/** The `capacity` newest candidates offered, kept in order. */
class NewestFirst {
  readonly #items: Candidate[] = [];
  readonly #capacity: number;

  constructor(capacity: number) {
    this.#capacity = capacity;
  }

  /** True when a candidate created at `ms` could still make the cut. */
  wants(ms: number): boolean {
    const last = this.#items.at(-1);
    return this.#items.length < this.#capacity || last === undefined || ms >= last.ms;
  }

  offer(candidate: Candidate): void {
    const items = this.#items;
    let lo = 0;
    let hi = items.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (newer(items[mid]!.ms, items[mid]!.id, candidate.ms, candidate.id)) lo = mid + 1;
      else hi = mid;
    }
    if (lo >= this.#capacity) return;
    items.splice(lo, 0, candidate);
    if (items.length > this.#capacity) items.pop();
  }

  get items(): readonly Candidate[] {
    return this.#items;
  }
}

export function listTransactions(live: ReadonlyMap<string, LiveTransaction>, durable: DurableState, filter: ListFilter): ListPage {
  // One more than the page: whether it exists says if there is a next page.
  const page = new NewestFirst(filter.limit + 1);
  const since = filter.sinceMs ?? Number.NEGATIVE_INFINITY;
  const after = filter.after;
  // The id is read only on a tie with the cursor's time (it costs a string per sealed entry).
  const inRange = (ms: number, id: () => string): boolean =>
    ms >= since &&
    page.wants(ms) &&
    (after === undefined || after.createdAtMs > ms || (after.createdAtMs === ms && after.id > id()));

  for (const tx of live.values()) {
    const ms = Date.parse(tx.createdAt);
    if (!inRange(ms, () => tx.id) || !liveMatches(tx, filter)) continue;
    page.offer({ ms, id: tx.id, view: () => tx.view() });
  }

  // Finished transactions are only ever committed or aborted.
  const outcome = filter.state === 'committed' ? 'commit' : filter.state === 'aborted' ? 'abort' : undefined;
  if (filter.state === undefined || outcome !== undefined) {
    const finishedView = (t: DurableTransaction) => (): TransactionView => durableView(t, durable.forgottenBranches.get(t.id));
    const offerFinished = (t: DurableTransaction, ms: number): void => {
      if (live.has(t.id)) return; // running again (a sweep's presumption raced it): the live view counts
      if (outcome !== undefined && t.outcome !== outcome) return;
      if (filter.participant !== undefined && !t.branches.some((b) => b.participant === filter.participant)) return;
      page.offer({ ms, id: t.id, view: finishedView(t) });
    };
    for (const t of durable.finished.recent()) {
      const ms = Date.parse(t.createdAt);
      if (inRange(ms, () => t.id)) offerFinished(t, ms);
    }
    const buckets = durable.finished.sealedBuckets();
    for (let b = buckets.length - 1; b >= 0; b--) {
      const bucket = buckets[b]!.bucket;
      if (bucket.newestCreatedAt < since || !page.wants(bucket.newestCreatedAt)) continue;
      if (after !== undefined && bucket.oldestCreatedAt > after.createdAtMs) continue; // all before the cursor
      // The participant filter is tested in place: a name the bucket never mentions skips it whole.
      const participant = filter.participant === undefined ? -1 : bucket.stringIndex(filter.participant);
      if (filter.participant !== undefined && participant < 0) continue;
      for (let i = 0; i < bucket.count; i++) {
        const ms = bucket.createdAtOf(i);
        if (outcome !== undefined && bucket.outcomeOf(i) !== outcome) continue;
        if (!inRange(ms, () => bucket.idOf(i))) continue;
        if (participant >= 0 && !bucket.hasParticipant(i, participant)) continue;
        offerFinished(bucket.at(i), ms);
      }
    }
  }

  const items = page.items;
  const shown = items.slice(0, filter.limit);
  const last = shown.at(-1);
  return {
    transactions: shown.map((c) => c.view()),
    nextCursor: items.length > filter.limit && last !== undefined ? encodeCursor({ createdAtMs: last.ms, id: last.id }) : null,
  };
}

function liveMatches(tx: LiveTransaction, filter: ListFilter): boolean {
  if (filter.state !== undefined && !(filter.state === 'in-doubt' ? tx.inDoubt : tx.state.phase === filter.state)) return false;
  if (filter.participant !== undefined) {
    for (const b of tx.branches.values()) if (b.participant === filter.participant) return true;
    return false;
  }
  return true;
}

/**
 * Several instances' pages of the same listing (same filters, same cursor) as one: the order
 * is total, so the newest `limit` of their union are the newest `limit` of all; there is more
 * when the union holds more, or when any page said so.
 */
export function mergePages(pages: readonly ListPage[], limit: number): ListPage {
  const merged = new NewestFirst(limit + 1);
  const seen = new Set<string>();
  for (const page of pages) {
    for (const view of page.transactions) {
      if (seen.has(view.id)) continue;
      seen.add(view.id);
      merged.offer({ ms: Date.parse(view.createdAt), id: view.id, view: () => view });
    }
  }
  const items = merged.items;
  const shown = items.slice(0, limit);
  const last = shown.at(-1);
  const more = items.length > limit || pages.some((p) => p.nextCursor !== null);
  return {
    transactions: shown.map((c) => c.view()),
    nextCursor: more && last !== undefined ? encodeCursor({ createdAtMs: last.ms, id: last.id }) : null,
  };
}
