/**
 * The event seam: the transaction driver, the recovery sweep, the logs and the calls into
 * participants publish what happened on typed node:diagnostics_channel channels; metrics (and
 * anything else: a test, a tracer) subscribe. Nothing here knows who listens, and publishing
 * costs one property read when nobody does (`active`), so the protocol code carries no metric
 * calls and pays nothing for them when they are off.
 *
 * Messages carry bounded values only (participant names, kinds, calls, protocols, outcomes,
 * error codes, durations, counts) — never a transaction id, a gid or a payload — so that any
 * subscriber may turn them into labels.
 */

import diagnosticsChannel from 'node:diagnostics_channel';
import { CoordinatorError } from '../errors.js';

export class TypedChannel<T extends object> {
  readonly #channel: diagnosticsChannel.Channel;

  constructor(name: string) {
    this.#channel = diagnosticsChannel.channel(name);
  }

  /** True when someone listens: build the message only then. */
  get active(): boolean {
    return this.#channel.hasSubscribers;
  }

  publish(message: T): void {
    this.#channel.publish(message);
  }

  /** Returns the unsubscribe function. */
  subscribe(listener: (message: T) => void): () => void {
    const onMessage = (message: unknown): void => listener(message as T);
    this.#channel.subscribe(onMessage);
    return () => void this.#channel.unsubscribe(onMessage);
  }
}

export type ParticipantCallName = 'work' | 'prepare' | 'can-commit' | 'pre-commit' | 'commit' | 'abort' | 'find-prepared' | 'commit-one-phase' | 'one-phase-outcome';

export interface ParticipantCallEvent {
  readonly participant: string;
  readonly kind: string;
  readonly call: ParticipantCallName;
  readonly durationMs: number;
  /** Set when the call failed: the catalogue code of its error (INTERNAL for anything else). */
  readonly errorCode?: string;
}

export interface TransactionEndedEvent {
  readonly protocol: string;
  readonly outcome: 'commit' | 'abort';
  readonly branches: number;
  /** From begin (or resumption after a restart) to the end record. */
  readonly durationMs: number;
  /** Running the branches' work: from begin until prepare started (or the decision, when there was no prepare). */
  readonly workMs: number;
  /** Prepare (can-commit) round until the decision was durable; absent without one. */
  readonly prepareMs?: number;
  /** Phase 2: from the durable decision until every branch acknowledged. */
  readonly deliverMs?: number;
  /** Resumed by recovery after a restart or takeover: its durations start at the resumption. */
  readonly resumed: boolean;
}

export interface LogFlushedEvent {
  readonly backend: 'file' | 'postgres';
  readonly records: number;
  /** Made durable (fdatasync; a synchronous commit), not just written. */
  readonly forced: boolean;
  /** The durable part: the fdatasync, or the commit. */
  readonly durationMs: number;
}

export interface RecoverySweptEvent {
  readonly committed: number;
  readonly rolledBack: number;
  readonly failed: number;
  readonly unreachable: number;
}

export interface TransactionResumedEvent {
  /** What recovery does with it: deliver the logged commit, or abort (presumed or logged). */
  readonly decision: 'commit' | 'abort';
}

export const events = {
  participantCall: new TypedChannel<ParticipantCallEvent>('tcx:participant:call'),
  transactionEnded: new TypedChannel<TransactionEndedEvent>('tcx:transaction:ended'),
  logFlushed: new TypedChannel<LogFlushedEvent>('tcx:log:flushed'),
  recoverySwept: new TypedChannel<RecoverySweptEvent>('tcx:recovery:swept'),
  transactionResumed: new TypedChannel<TransactionResumedEvent>('tcx:recovery:resumed'),
} as const;

/** Runs one call into a participant, publishing its duration and outcome when anyone listens. */
export async function observeCall<T>(participant: { readonly name: string; readonly kind: string }, call: ParticipantCallName, run: () => Promise<T>): Promise<T> {
  if (!events.participantCall.active) return run();
  const started = performance.now();
  try {
    const result = await run();
    events.participantCall.publish({ participant: participant.name, kind: participant.kind, call, durationMs: performance.now() - started });
    return result;
  } catch (err) {
    const errorCode = err instanceof CoordinatorError ? err.code : 'INTERNAL';
    events.participantCall.publish({ participant: participant.name, kind: participant.kind, call, durationMs: performance.now() - started, errorCode });
    throw err;
  }
}
