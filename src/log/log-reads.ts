/**
 * What can be read of one coordinator id's log, asynchronously. Two implementations answer
 * the same questions the same way (test/log/log-reads-conformance.test.ts):
 *
 *   - the owner's log (CoordinatorLog, over the file log or the Postgres log): from the state
 *     it keeps as it writes — its own records, including forced ones still being written
 *     (a decision not durable yet is the owner's to know: the sweep and manual resolution
 *     must not act against it);
 *   - another instance reading a shared Postgres log (SharedLogReader.reads): from the
 *     records and the snapshot in the database, replayed.
 *
 * The coordinator's reads of its log go through this interface; the listing of finished
 * transactions pages through the owner's sealed buckets directly (transaction-listing.ts).
 *
 * The owner's answers reflect its state at the moment of the call (the replica is read before
 * the returned promise settles): a caller that checks `hasPendingForce` and then reads, with no
 * await in between, sees one consistent moment — recovery and manual resolution rely on it.
 */

import type { DurableState } from './durable-state.js';
import type { DurableTransaction, ForgottenBranch, LogRecord, ParticipantConfig } from './log-records.js';

export type ManualResolution = Extract<LogRecord, { t: 'manual-resolution' }>;

export interface LogReads {
  /** The coordinator id the log was first written under (undefined: a new log). */
  coordinatorId(): Promise<string | undefined>;
  /** What the log knows of one transaction: unfinished, or finished within retention. */
  transaction(id: string): Promise<DurableTransaction | undefined>;
  /** Operators' audit of the branches of a transaction they gave up on (oldest first). */
  forgottenBranches(id: string): Promise<readonly ForgottenBranch[]>;
  /** Every transaction the log saw start and not end. */
  unfinished(): Promise<readonly DurableTransaction[]>;
  /** The participants registered and not removed. */
  participants(): Promise<readonly ParticipantConfig[]>;
  /** An operator's resolution of a branch of that (lost) coordinator's transaction, if any. */
  manualResolution(coordinatorId: string, transactionId: string): Promise<ManualResolution | undefined>;
}

/** The reads of a replayed state (an owner's, or one loaded from a shared log). */
export function stateReads(state: DurableState): LogReads {
  return {
    coordinatorId: async () => state.coordinatorId,
    transaction: async (id) => state.transaction(id),
    forgottenBranches: async (id) => state.forgottenBranches.get(id) ?? [],
    unfinished: async () => [...state.unfinished()],
    participants: async () => [...state.participants.values()],
    manualResolution: async (coordinatorId, transactionId) => state.manualResolutions.get(`${coordinatorId}:${transactionId}`),
  };
}
