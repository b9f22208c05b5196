/**
 * The one port between the coordinator and a data store. The coordinator
 * never sees a `pg`, `ioredis` or `undici` object: each adapter owns its
 * connections, sessions and timeouts, and answers in the protocol's words.
 *
 * Contract every adapter keeps:
 *   - `enlist` runs the branch's work without making it durable. Calling it
 *     again for the same gid adds work to the same branch. Asked to
 *     (`prepareAfter`), an adapter may prepare the branch in the same round
 *     trip and answer its vote with the results; the coordinator then counts
 *     that vote and does not call `prepare`. It asks only when it will start
 *     voting right after the work, and only for branches whose prepare needs
 *     no forced log record first.
 *   - `prepare` returns a vote. `yes` only once the branch's yes is durable on
 *     the participant's side (rule 1). Any failure is a `no`, never a throw.
 *   - `commit` and `abort` are idempotent: delivering the same decision twice,
 *     or to a branch that already reached it, succeeds. They throw when the
 *     participant could not be reached or did not confirm; the caller retries.
 *   - `abort` also discards an open, unprepared branch.
 *   - `commitOnePhase` (optional) commits a transaction's only branch in one step: the
 *     store decides, nothing is prepared. It answers the store's outcome, or `unknown`
 *     when that outcome is not known (the answer was lost) with the evidence that finding
 *     it needs; the coordinator forces that evidence to its log and asks
 *     `onePhaseOutcome` with it — never the commit again — until the store can tell (after
 *     a restart too).
 *   - `findPrepared` lists the gids prepared on the participant that start
 *     with the prefix (recovery). Participants that cannot list return [].
 *   - Adapters never decide outcomes.
 */

import type { Decision, Vote } from '../protocol/commit-protocol.js';
import type { OnePhaseEvidence, ParticipantKind } from '../log/log-records.js';

export interface BranchRef {
  readonly transactionId: string;
  /** The transaction's protocol (http participants need it to run their 3PC timeouts). */
  readonly protocol?: '2pc' | '3pc';
  readonly branchId: string;
  readonly gid: string;
  /** Work kept in the log (http: the payload sent with every call; nats: the messages to publish). */
  readonly payload?: unknown;
}

export interface PrepareResult {
  readonly vote: Vote;
  /** Why the branch voted no. */
  readonly reason?: string;
}

export interface EnlistResult {
  /** postgres: the rows each operation returned, in order. */
  readonly results?: readonly unknown[];
  /** Set when the adapter also prepared the branch (asked with `prepareAfter`): its vote. */
  readonly vote?: PrepareResult;
}

export interface EnlistOptions {
  /** Voting starts right after this work: the adapter may prepare in the same round trip. */
  readonly prepareAfter?: boolean;
  /**
   * A one-phase commit follows this work at once: the adapter may fetch, in the same round
   * trip, what it needs to learn the outcome should the commit's answer be lost.
   */
  readonly onePhaseFollows?: boolean;
}

/** What the store did with a one-phase commit. */
export interface OnePhaseResult {
  readonly outcome: Decision;
  /** Why the store rolled the work back. */
  readonly reason?: string;
}

/**
 * What an adapter needs to learn a one-phase commit's outcome once its answer was lost
 * (a Postgres transaction id, say): plain JSON, kept in the coordinator's log.
 */
export type { OnePhaseEvidence } from '../log/log-records.js';

/** A one-phase commit whose answer was lost: the outcome is the store's, and not known yet. */
export interface OnePhaseUnknown {
  readonly outcome: 'unknown';
  readonly evidence: OnePhaseEvidence;
  /** What was lost, for the operator. */
  readonly reason: string;
}

export interface PrepareOptions {
  /**
   * The decision follows the votes at once (the client asked to commit): an adapter may
   * keep what it needs for phase 2 (a Postgres session) instead of handing it back.
   */
  readonly decisionFollows?: boolean;
}

export interface ParticipantAdapter {
  readonly name: string;
  readonly kind: ParticipantKind;
  /**
   * The request field a branch's work comes in: statements or commands run at enlist
   * (`operations`), a document sent with every call (`payload`), or messages published on
   * commit (`messages`). Work other than operations is kept in the coordinator's log (in the
   * branch's record) and handed back with every call as `BranchRef.payload`.
   */
  readonly work: 'operations' | 'payload' | 'messages';
  /**
   * All work of one transaction for this store runs in one branch (two branches would block
   * each other on the store's locks). False: each entry is a branch of its own.
   */
  readonly oneBranchPerStore: boolean;
  /**
   * The participant can list the branches prepared on it (`findPrepared`), so recovery finds
   * them without the log. When false, the coordinator forces a record of the branch before its
   * prepare is sent.
   */
  readonly listsPreparedBranches: boolean;
  /** Checks reachability and that the store can take part; throws CoordinatorError otherwise. */
  verify(): Promise<void>;
  /** Validates the work without side effects; throws CoordinatorError('VALIDATION_FAILED') when malformed. */
  validateWork(work: unknown): void;
  /** `signal` aborts when the transaction times out or is aborted: cancel the running work. */
  enlist(branch: BranchRef, work: unknown, signal?: AbortSignal, options?: EnlistOptions): Promise<EnlistResult>;
  prepare(branch: BranchRef, options?: PrepareOptions): Promise<PrepareResult>;
  /**
   * 3PC round 1. Defaults to `prepare`: a store with one durable "yes" state must reach it
   * here, or a pre-committed sibling could commit while this branch is lost (design rule 3).
   */
  canCommit?(branch: BranchRef, options?: PrepareOptions): Promise<PrepareResult>;
  /**
   * 3PC round 2, after the coordinator forced its pre-commit decision. Absent: nothing to
   * tell the store (the coordinator's log is the mark, as for Postgres).
   */
  preCommit?(branch: BranchRef): Promise<void>;
  commit(branch: BranchRef): Promise<void>;
  abort(branch: BranchRef): Promise<void>;
  /**
   * One-phase commit of a transaction's only branch, its work still open: the store commits
   * (or rolls back) on its own. `unknown` when the answer was lost; see `onePhaseOutcome`.
   * Present exactly when the kind's `onePhase` capability is true.
   *
   * `stopWaiting` (the coordinator is shutting down): once it aborts, the call answers
   * `unknown` with the evidence at once instead of waiting for the store's answer — the
   * commit goes on there, and the coordinator asks after its restart; aborted before anything
   * was sent, nothing is: the work is rolled back (`abort`).
   */
  commitOnePhase?(branch: BranchRef, stopWaiting?: AbortSignal): Promise<OnePhaseResult | OnePhaseUnknown>;
  /**
   * The outcome of a one-phase commit whose answer was lost, from the evidence its
   * `commitOnePhase` gave (on any instance of the adapter: it may come from the log after a
   * restart); throws while the store cannot tell yet.
   */
  onePhaseOutcome?(branch: BranchRef, evidence: OnePhaseEvidence): Promise<OnePhaseResult>;
  /**
   * Whether one-phase commit may be used on this store (with `commitOnePhase`; absent: yes).
   * False when the server keeps from the coordinator's role what a lost answer's evidence
   * needs: its single-branch transactions then take the full protocol. Checked once — at
   * registration, or at first use after a restart — and a plain boolean once known.
   */
  onePhaseUsable?(): boolean | Promise<boolean>;
  findPrepared(gidPrefix: string): Promise<string[]>;
  /** Branches whose work sits in an open session on this adapter. */
  openBranches(): number;
  /** Risks accepted at registration (e.g. a Redis without durable AOF); shown to operators. */
  warnings?(): string[];
  close(): Promise<void>;
}
