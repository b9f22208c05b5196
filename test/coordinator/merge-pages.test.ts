import { describe, expect, it } from 'vitest';
import type { TransactionView } from '../../src/coordinator/live-transaction.js';
import { decodeCursor, mergePages, type ListPage } from '../../src/coordinator/transaction-listing.js';

const view = (id: string, second: number): TransactionView => ({
  id,
  protocol: '2pc',
  state: 'committed',
  decision: 'commit',
  inDoubt: false,
  timeoutMs: 1000,
  createdAt: new Date(Date.UTC(2026, 0, 1, 0, 0, second)).toISOString(),
  branches: [],
});

describe('merging instances\' pages of one listing', () => {
  it('keeps the newest across instances, says there is more when the union or any page does, and drops duplicates', () => {
    const a: ListPage = { transactions: [view('a3', 9), view('a2', 5), view('a1', 1)], nextCursor: null };
    const b: ListPage = { transactions: [view('b2', 7), view('b1', 3)], nextCursor: null };
    const page = mergePages([a, b, { transactions: [view('b2', 7)], nextCursor: null }], 3);
    expect(page.transactions.map((t) => t.id)).toEqual(['a3', 'b2', 'a2']);
    expect(decodeCursor(page.nextCursor!)).toEqual({ createdAtMs: Date.parse(view('a2', 5).createdAt), id: 'a2' });
    expect(mergePages([a, b], 5).nextCursor).toBeNull();
    // One instance had more beyond its page: so has the merged listing.
    expect(mergePages([a, { ...b, nextCursor: 'x' }], 5).nextCursor).not.toBeNull();
  });
});
