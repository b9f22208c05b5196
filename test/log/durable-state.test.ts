import { describe, expect, it } from 'vitest';
import { DurableState } from '../../src/log/durable-state.js';
import type { BranchRecord, LogRecord } from '../../src/log/log-records.js';

const at = '2026-01-01T00:00:00.000Z';
const branches: BranchRecord[] = [
  { branchId: 'b1', participant: 'a', kind: 'http', gid: 'tcx:c1:t1:1', payload: {} },
  { branchId: 'b2', participant: 'gone', kind: 'http', gid: 'tcx:c1:t1:2', payload: {} },
];
const forget: LogRecord = { t: 'branch-forgotten', id: 't1', branchId: 'b2', participant: 'gone', gid: 'tcx:c1:t1:2', reason: 'r', actor: 'token:x', at };

describe('DurableState: forgotten branches', () => {
  it('takes a forgotten branch of an aborting transaction as acknowledged, and keeps the audit through a snapshot', () => {
    const state = new DurableState();
    state.apply({ t: 'prepare-intent', id: 't1', branches, at, protocol: '2pc', timeoutMs: 1000, createdAt: at });
    state.apply(forget);
    expect(state.transaction('t1')?.branches.find((b) => b.branchId === 'b2')?.ackedAt).toBe(at);
    const copy = new DurableState();
    for (const record of state.snapshot().records) copy.apply(record);
    expect(copy.forgottenBranches.get('t1')).toEqual([forget]);
    expect(copy.transaction('t1')?.branches.find((b) => b.branchId === 'b2')?.ackedAt).toBe(at);
  });

  it('never lets a forgotten branch stand for an acknowledgement under a commit decision', () => {
    for (const decision of ['commit', 'precommit'] as const) {
      const state = new DurableState();
      state.apply({ t: 'decision', id: 't1', decision, branches, at, protocol: '2pc', timeoutMs: 1000, createdAt: at });
      state.apply(forget);
      // Recovery must still deliver the commit to b2.
      expect(state.transaction('t1')?.branches.find((b) => b.branchId === 'b2')?.ackedAt).toBeUndefined();
    }
  });
});

describe('DurableState: work kept in the log', () => {
  const messages = [{ subject: 'orders.created', data: { id: 7 } }];
  const withWork: BranchRecord[] = [
    { branchId: 'b1', participant: 'db', kind: 'postgres', gid: 'tcx:c1:t2:1' },
    { branchId: 'b2', participant: 'events', kind: 'nats', gid: 'tcx:c1:t2:2', payload: messages },
  ];

  it('is kept while the transaction is unfinished (phase 2 after a crash needs it), also through a snapshot', () => {
    const state = new DurableState();
    state.apply({ t: 'decision', id: 't2', decision: 'commit', branches: withWork, at, protocol: '2pc', timeoutMs: 1000, createdAt: at });
    const copy = new DurableState();
    for (const record of state.snapshot().records) copy.apply(record);
    for (const s of [state, copy]) expect(s.transaction('t2')?.branches.find((b) => b.branchId === 'b2')?.payload).toEqual(messages);
  });

  it('is dropped once the transaction ended: finished transactions do not hold their messages for the retention window', () => {
    const state = new DurableState();
    state.apply({ t: 'decision', id: 't2', decision: 'commit', branches: withWork, at, protocol: '2pc', timeoutMs: 1000, createdAt: at });
    state.apply({ t: 'ended', id: 't2', outcome: 'commit', at });
    const finished = state.finished.get('t2');
    expect(finished?.outcome).toBe('commit');
    expect(finished?.branches.map((b) => b.gid)).toEqual(['tcx:c1:t2:1', 'tcx:c1:t2:2']);
    expect(finished?.branches.some((b) => b.payload !== undefined)).toBe(false);
    // A snapshot of a finished transaction that still held them (written by an earlier version) is read without them too.
    const old = new DurableState();
    old.apply({ t: 'tx-state', tx: { id: 't3', protocol: '2pc', timeoutMs: 1000, createdAt: at, branches: withWork, decision: 'commit', outcome: 'commit', endedAt: at } });
    expect(old.finished.get('t3')?.branches.some((b) => b.payload !== undefined)).toBe(false);
  });
});

describe('DurableState: a one-phase commit whose answer was lost', () => {
  const branch: BranchRecord = { branchId: 'b1', participant: 'db', kind: 'postgres', gid: 'tcx:c1:t4:1' };
  const evidence = { xid: '1234', since: '1767225600000000', postmaster: '1767225500000000', pid: 42 };
  const lost: LogRecord = { t: 'one-phase-in-doubt', id: 't4', branch, evidence, reason: 'the answer to COMMIT was lost', at, protocol: '2pc', timeoutMs: 1000, createdAt: at };

  it('is unfinished, with its evidence, also through a snapshot: recovery asks the store after a restart', () => {
    const state = new DurableState();
    state.apply(lost);
    const copy = new DurableState();
    for (const record of state.snapshot().records) copy.apply(record);
    for (const s of [state, copy]) {
      const [tx] = s.unfinished();
      expect(tx).toMatchObject({ id: 't4', branches: [branch], onePhaseInDoubt: { evidence, reason: 'the answer to COMMIT was lost', at } });
      expect(tx?.decision).toBeUndefined();
    }
  });

  it('ends with its end record: finished, one-phase, without the evidence', () => {
    const state = new DurableState();
    state.apply(lost);
    state.apply({ t: 'ended', id: 't4', outcome: 'commit', at, onePhase: true, summary: { protocol: '2pc', timeoutMs: 1000, createdAt: at, branches: [branch] } });
    expect(state.unfinished()).toEqual([]);
    const finished = state.transaction('t4');
    expect(finished).toMatchObject({ outcome: 'commit', onePhase: true });
    expect(finished?.onePhaseInDoubt).toBeUndefined();
    // A late copy of the record (a replayed segment) does not revive it.
    state.apply(lost);
    expect(state.unfinished()).toEqual([]);
  });
});
