/**
 * A transaction the coordinator is running (or, after a restart, finishing):
 * the protocol state, what it knows of each branch, and the means to wait for
 * a change. Finished transactions leave memory; their record lives on in the
 * log's DurableState. Both render to the same TransactionView.
 */

import type { TransactionEndedEvent } from '../observability/events.js';
import type { DurableTransaction, ForgottenBranch, LoggedProtocol, OnePhaseEvidence, ParticipantKind, ProtocolName } from '../log/log-records.js';
import { initialState, type TwoPhaseState, type Vote } from '../protocol/commit-protocol.js';
import type { BranchRef, PrepareResult } from '../participants/participant.js';
import { CoordinatorError } from '../errors.js';
import { Mutex } from './mutex.js';

export interface LiveBranch {
  readonly branchId: string;
  readonly participant: string;
  readonly kind: ParticipantKind;
  readonly gid: string;
  payload?: unknown;
  /** http: a prepare was sent, so the service may hold state for this branch. */
  prepareSent: boolean;
  vote?: Vote;
  voteReason?: string;
  /**
   * A prepare started before the machine asked for it (the commit follows the work at once),
   * or the vote the adapter gave together with the work. Never rejects.
   */
  earlyPrepare?: Promise<PrepareResult> | undefined;
  lastError?: string;
  lastAttemptAt?: string;
  attempts: number;
  /** Phase-2 attempts that have come back (acknowledged or failed). */
  finishedAttempts?: number;
  /** An operator gave up on this branch of an aborting transaction (its participant is gone for good). */
  forgotten?: ForgottenView;
}

export interface ForgottenView {
  readonly reason: string;
  readonly actor: string;
  readonly at: string;
}

export interface BranchView {
  readonly branchId: string;
  readonly participant: string;
  readonly kind: ParticipantKind;
  readonly state: string;
  readonly vote?: Vote;
  readonly reason?: string;
  readonly attempts?: number;
  readonly lastError?: string;
  readonly lastAttemptAt?: string;
  readonly forgotten?: ForgottenView;
}

export interface TransactionView {
  readonly id: string;
  readonly protocol: LoggedProtocol;
  readonly state: string;
  readonly decision: 'commit' | 'abort' | null;
  readonly inDoubt: boolean;
  readonly reason?: string;
  readonly timeoutMs: number;
  readonly createdAt: string;
  readonly expiresAt?: string;
  readonly decidedAt?: string;
  readonly endedAt?: string;
  /** Committed (or rolled back) by its only branch's store in one step: no prepare, nothing forced before it. */
  readonly onePhase?: true;
  readonly branches: readonly BranchView[];
}

export class LiveTransaction {
  readonly id: string;
  readonly protocol: ProtocolName;
  readonly timeoutMs: number;
  readonly createdAt: string;
  /** Who began it (a fingerprint of the API token), for its per-token quotas. */
  owner: string | undefined;
  readonly lock = new Mutex();
  /** Aborted on timeout or client abort: cancels work still running inside a branch. */
  readonly cancelWork = new AbortController();
  #wake: AbortController | undefined;
  readonly branches = new Map<string, LiveBranch>();
  state: TwoPhaseState = initialState();
  nextBranchNo = 1;
  /** JSON bytes of the work its branches keep in the log (payloads, messages), bounded by branch-work.ts. */
  loggedWorkBytes = 0;
  /** How many branches the forced prepare-intent record named (undefined: none forced yet). */
  intentLoggedFor: number | undefined;
  decidedAt: string | undefined;
  /** The client allows one-phase commit for it (the default); false keeps the full protocol. */
  onePhaseAllowed = true;
  /** It ran one-phase commit (its only branch's store decided). */
  onePhase = false;
  /** A one-phase commit whose answer was lost: the store's evidence for asking what it did. */
  onePhaseEvidence: OnePhaseEvidence | undefined;
  /** That evidence is durable (its `one-phase-in-doubt` record was forced): a restart asks the store again. */
  onePhaseInDoubtLogged = false;
  /** An operator's word on a one-phase commit in doubt whose store cannot tell (forced to the log first). */
  onePhaseResolution: { readonly outcome: 'commit' | 'abort'; readonly reason: string } | undefined;
  /** Its end record is already in the log (a one-phase commit forces it before the answer). */
  endLogged = false;
  /** Set when forcing the decision failed: the outcome stays undecided until a restart. */
  logFailure: Error | undefined;
  timer: NodeJS.Timeout | undefined;
  /** performance.now() marks for the phase durations its end event reports. */
  readonly startedMs = performance.now();
  preparingMs: number | undefined;
  decidedMs: number | undefined;
  /** Resumed by recovery (after a restart or a takeover): its marks start there. */
  resumed = false;
  readonly #listeners = new Set<() => void>();
  /** createdAt + timeoutMs, both fixed: formatted once, at the first view. */
  #expiresAt: string | undefined;

  constructor(init: { id: string; protocol: ProtocolName; timeoutMs: number; createdAt: string }) {
    this.id = init.id;
    this.protocol = init.protocol;
    this.timeoutMs = init.timeoutMs;
    this.createdAt = init.createdAt;
  }

  /** Aborted by an operator's "retry now": cuts every backoff sleep short once. */
  get wakeSignal(): AbortSignal {
    this.#wake ??= new AbortController();
    return this.#wake.signal;
  }

  /** Operator's "retry now": every backoff sleep of this transaction ends at once. */
  wakeUp(): void {
    const woken = this.#wake;
    this.#wake = undefined;
    woken?.abort();
  }

  /** Wakes everyone waiting for a change. */
  changed(): void {
    for (const listener of [...this.#listeners]) listener();
  }

  /** Resolves when `done()` holds, or after `timeoutMs` — whichever comes first. */
  waitUntil(done: () => boolean, timeoutMs: number): Promise<void> {
    if (done()) return Promise.resolve();
    return new Promise((resolve) => {
      const finish = (): void => {
        clearTimeout(timer);
        this.#listeners.delete(check);
        resolve();
      };
      const check = (): void => {
        if (done()) finish();
      };
      const timer = setTimeout(finish, timeoutMs);
      this.#listeners.add(check);
    });
  }

  get inDoubt(): boolean {
    const p = this.state.phase;
    if (p === 'one-phase') return [...this.branches.values()].some((b) => b.lastError !== undefined); // the outcome is being asked for
    return p === 'precommitted' || p === 'committing' || p === 'aborting' || (p === 'deciding' && this.logFailure !== undefined);
  }

  view(): TransactionView {
    const decision = this.state.phase === 'deciding' ? null : (this.state.decision ?? null);
    return {
      id: this.id,
      protocol: this.protocol,
      state: this.state.phase,
      decision,
      inDoubt: this.inDoubt,
      ...(this.state.abortReason === undefined ? {} : { reason: this.state.abortReason }),
      timeoutMs: this.timeoutMs,
      createdAt: this.createdAt,
      expiresAt: this.#expiresAt ??= new Date(Date.parse(this.createdAt) + this.timeoutMs).toISOString(),
      ...(this.decidedAt === undefined ? {} : { decidedAt: this.decidedAt }),
      ...(this.onePhase ? { onePhase: true as const } : {}),
      branches: [...this.branches.values()].map((b) => ({
        branchId: b.branchId,
        participant: b.participant,
        kind: b.kind,
        state: this.state.branches[b.branchId]?.phase ?? 'active',
        ...(b.vote === undefined ? {} : { vote: b.vote }),
        ...(b.voteReason === undefined ? {} : { reason: b.voteReason }),
        attempts: b.attempts,
        ...(b.lastError === undefined ? {} : { lastError: b.lastError }),
        ...(b.lastAttemptAt === undefined ? {} : { lastAttemptAt: b.lastAttemptAt }),
        ...(b.forgotten === undefined ? {} : { forgotten: b.forgotten }),
      })),
    };
  }
}

/** The error for a request the transaction's phase does not allow; it names the phase. */
export function invalidState(tx: LiveTransaction, what: string): CoordinatorError {
  return new CoordinatorError('INVALID_STATE_TRANSITION', `cannot ${what} transaction ${tx.id}: it is ${tx.state.phase}`, {
    details: { transactionId: tx.id, state: tx.state.phase },
  });
}

/** What an adapter is told of a branch in every call. */
export function branchRef(tx: LiveTransaction, branch: LiveBranch): BranchRef {
  return {
    transactionId: tx.id,
    protocol: tx.protocol,
    branchId: branch.branchId,
    gid: branch.gid,
    ...(branch.payload === undefined ? {} : { payload: branch.payload }),
  };
}

/**
 * The view of a transaction known only from the log: finished, seen before a restart, or read
 * from a shared log while no instance runs it (decided, phase 2 not finished — or a one-phase
 * commit whose answer was lost: in doubt).
 */
export function durableView(tx: DurableTransaction, forgotten: readonly ForgottenBranch[] = []): TransactionView {
  const outcome = tx.outcome;
  // A durable 3PC pre-commit is a commit decision (the commit record after it is not forced).
  // An abort logs no decision (presumed abort): the outcome stands for it.
  const decision = tx.decision === 'precommit' ? 'commit' : (tx.decision ?? outcome ?? null);
  const onePhaseInDoubt = outcome === undefined ? tx.onePhaseInDoubt : undefined;
  const state =
    outcome === 'commit'
      ? 'committed'
      : outcome === 'abort'
        ? 'aborted'
        : onePhaseInDoubt !== undefined
          ? 'one-phase'
          : decision === 'commit'
            ? 'committing'
            : decision === 'abort'
              ? 'aborting'
              : 'unknown';
  const branchState = (b: DurableTransaction['branches'][number]): string => {
    if (onePhaseInDoubt !== undefined) return 'active'; // its work is in the store's hands
    if (b.vote === 'read-only') return 'read-only';
    if (outcome !== undefined) return outcome === 'commit' ? 'committed' : 'aborted';
    if (b.ackedAt !== undefined) return decision === 'commit' ? 'committed' : 'aborted';
    return b.precommittedAt !== undefined ? 'precommitted' : 'prepared';
  };
  return {
    id: tx.id,
    protocol: tx.protocol,
    state,
    decision,
    inDoubt: outcome === undefined && (decision !== null || onePhaseInDoubt !== undefined),
    ...(tx.reason === undefined ? {} : { reason: tx.reason }),
    ...(onePhaseInDoubt === undefined ? {} : { reason: onePhaseInDoubt.reason }),
    timeoutMs: tx.timeoutMs,
    createdAt: tx.createdAt,
    ...(tx.decidedAt === undefined ? {} : { decidedAt: tx.decidedAt }),
    ...(tx.endedAt === undefined ? {} : { endedAt: tx.endedAt }),
    ...(tx.onePhase === true || onePhaseInDoubt !== undefined ? { onePhase: true as const } : {}),
    branches: tx.branches.map((b) => ({
      branchId: b.branchId,
      participant: b.participant,
      kind: b.kind,
      state: branchState(b),
      ...(b.vote === undefined ? {} : { vote: b.vote }),
      ...forgottenView(forgotten.find((f) => f.branchId === b.branchId)),
    })),
  };
}

function forgottenView(f: ForgottenBranch | undefined): { forgotten?: ForgottenView } {
  return f === undefined ? {} : { forgotten: { reason: f.reason, actor: f.actor, at: f.at } };
}

/** What its end tells the event seam: counts and durations, no ids. */
export function endedEvent(tx: LiveTransaction, outcome: 'commit' | 'abort'): TransactionEndedEvent {
  const now = performance.now();
  const workEnd = tx.preparingMs ?? tx.decidedMs ?? now;
  return {
    protocol: tx.protocol,
    outcome,
    branches: tx.branches.size,
    durationMs: now - tx.startedMs,
    workMs: workEnd - tx.startedMs,
    ...(tx.preparingMs === undefined ? {} : { prepareMs: (tx.decidedMs ?? now) - tx.preparingMs }),
    ...(tx.decidedMs === undefined ? {} : { deliverMs: now - tx.decidedMs }),
    resumed: tx.resumed,
  };
}
