/**
 * The commit protocols as one state machine: two-phase commit (2pc) and
 * three-phase commit (3pc), both with presumed abort. Pure: events in, a new
 * state and a list of actions out. No I/O, no clocks, no randomness — the
 * runner in src/coordinator interprets the actions and feeds the results back
 * as events.
 *
 * 3PC differs only after the votes: instead of forcing a commit decision, the
 * machine forces a PRE-COMMIT decision, delivers pre-commit to every branch
 * that voted yes (phase `precommitted`), and once all acknowledged, logs the
 * commit (unforced: a durable pre-commit already means commit to recovery)
 * and delivers do-commit. The can-commit round is the `prepare-branches`
 * action: for Postgres and Redis it must already PREPARE (design rule 3).
 *
 * Transaction phases
 *
 *   active      Branches are being enlisted; their work runs in open,
 *               unprepared sessions. `prepare` or `commit` starts voting;
 *               `abort` or `timeout` aborts.
 *   preparing   Every branch has been asked to prepare; votes come in. The
 *               first `no` (or a failed prepare) settles the outcome as abort,
 *               but the decision waits until every outstanding prepare has
 *               answered, so an abort is never sent to a branch whose prepare
 *               is still in flight.
 *   prepared    Every branch voted yes (or read-only) and the client asked
 *               only to prepare. Waits for `commit`, `abort` or `timeout`.
 *   deciding    The decision has been handed to the log. For commit (3PC:
 *               pre-commit) the record is forced: no commit (pre-commit)
 *               message leaves before it is durable (rule 2). An abort
 *               record is not forced (presumed abort).
 *   precommitted  3PC only: the pre-commit decision is durable; pre-commit is
 *               being delivered to every branch that voted yes.
 *   committing  The commit decision is durable; commit is being delivered to
 *   aborting    every branch that voted yes (read-only branches are skipped)
 *               or abort to every branch that may hold work. Delivery is
 *               retried by the runner until each branch acknowledges.
 *   committed   Every branch acknowledged; the end record (never forced) has
 *   aborted     been requested. Terminal.
 *   one-phase   One-phase commit: the transaction's only branch commits on its
 *               own store, which decides the outcome — no prepare, no forced
 *               record (with one participant there is no sibling to agree
 *               with). The runner asks for it on `commit` (`onePhase`), only
 *               for a lone branch whose store can commit in one step and tell
 *               the outcome afterwards; the outcome comes back as
 *               `one-phase-outcome`. An abort can no longer be honoured, a
 *               timeout is ignored: the store's answer settles it.
 *
 * An operator may `forget` a branch of an aborting transaction (its participant is gone for
 * good): it counts as that branch's abort acknowledgement. Never under a commit decision.
 *
 * Guards: an event that does not fit the phase is rejected with
 * InvalidTransitionError, except duplicates of votes and acknowledgements,
 * which are idempotent (messages can be duplicated by retries).
 */

export type Decision = 'commit' | 'abort';
/** What the log records and the branches are told: a decision, or (3PC) the pre-commit. */
export type Verdict = Decision | 'precommit';
export type Vote = 'yes' | 'no' | 'read-only';
export type Protocol = '2pc' | '3pc';

export type TransactionPhase =
  | 'active'
  | 'preparing'
  | 'prepared'
  | 'deciding'
  | 'precommitted'
  | 'committing'
  | 'aborting'
  | 'committed'
  | 'aborted'
  | 'one-phase';

export type BranchPhase =
  | 'active'
  | 'preparing'
  | 'prepared'
  | 'precommitted'
  | 'read-only'
  | 'voted-no'
  | 'committed'
  | 'aborted';

export interface BranchState {
  readonly phase: BranchPhase;
}

export interface TwoPhaseState {
  readonly protocol: Protocol;
  readonly phase: TransactionPhase;
  readonly branches: Readonly<Record<string, BranchState>>;
  /** The client asked to commit (not only to prepare). */
  readonly commitRequested: boolean;
  readonly decision: Decision | undefined;
  /** Why the transaction aborts, when it does. */
  readonly abortReason: string | undefined;
}

export type TwoPhaseEvent =
  | { readonly type: 'enlist'; readonly branchId: string }
  | { readonly type: 'prepare' }
  /** `onePhase`: the runner offers one-phase commit (a lone branch whose store can do it). */
  | { readonly type: 'commit'; readonly onePhase?: boolean }
  | { readonly type: 'abort'; readonly reason: string }
  | { readonly type: 'timeout' }
  | { readonly type: 'vote'; readonly branchId: string; readonly vote: Vote; readonly reason?: string }
  | { readonly type: 'decision-durable'; readonly decision: Verdict }
  | { readonly type: 'ack'; readonly branchId: string; readonly verdict: Verdict }
  /** An operator gave up on a branch of an aborting transaction whose participant is gone for good. */
  | { readonly type: 'forget'; readonly branchId: string }
  /** The store's answer to a one-phase commit: it committed, or rolled the work back. */
  | { readonly type: 'one-phase-outcome'; readonly branchId: string; readonly outcome: Decision; readonly reason?: string };

export type TwoPhaseAction =
  | { readonly type: 'prepare-branches'; readonly branchIds: readonly string[] }
  | { readonly type: 'log-decision'; readonly decision: Verdict; readonly force: boolean }
  | { readonly type: 'deliver'; readonly decision: Verdict; readonly branchIds: readonly string[] }
  | { readonly type: 'log-end'; readonly outcome: Decision }
  /** Commit the lone branch in one step on its store; its answer comes back as `one-phase-outcome`. */
  | { readonly type: 'commit-one-phase'; readonly branchId: string };

export interface Step {
  readonly state: TwoPhaseState;
  readonly actions: readonly TwoPhaseAction[];
}

export class InvalidTransitionError extends Error {
  readonly phase: TransactionPhase;
  readonly event: TwoPhaseEvent['type'];
  constructor(phase: TransactionPhase, event: TwoPhaseEvent['type'], detail?: string) {
    super(`cannot ${event} a transaction that is ${phase}${detail === undefined ? '' : `: ${detail}`}`);
    this.name = 'InvalidTransitionError';
    this.phase = phase;
    this.event = event;
  }
}

export function initialState(protocol: Protocol = '2pc'): TwoPhaseState {
  return { protocol, phase: 'active', branches: {}, commitRequested: false, decision: undefined, abortReason: undefined };
}

const TERMINAL: ReadonlySet<TransactionPhase> = new Set(['committed', 'aborted']);

export function isTerminal(phase: TransactionPhase): boolean {
  return TERMINAL.has(phase);
}

/**
 * The state with one branch in a new phase. Built as one literal (not a spread of the state):
 * it runs several times per transaction, and a spread of the whole state costs ~5× as much.
 */
function withBranch(state: TwoPhaseState, branchId: string, phase: BranchPhase): TwoPhaseState {
  const branches: Record<string, BranchState> = { ...state.branches };
  branches[branchId] = { phase };
  // Required<>: a field added to the state later must be copied here too.
  const next: Required<TwoPhaseState> = {
    protocol: state.protocol,
    phase: state.phase,
    branches,
    commitRequested: state.commitRequested,
    decision: state.decision,
    abortReason: state.abortReason,
  };
  return next;
}

function branchIdsIn(state: TwoPhaseState, phases: readonly BranchPhase[]): string[] {
  const ids: string[] = [];
  for (const id of Object.keys(state.branches)) if (phases.includes(state.branches[id]!.phase)) ids.push(id);
  return ids;
}

/**
 * Branches that may hold work or a prepared state, and so must hear an abort. A 'no' may
 * stand for a prepare whose answer was lost (a timeout): the participant may have
 * prepared after all, so it hears the abort too (abort is idempotent).
 */
function branchesToAbort(state: TwoPhaseState): string[] {
  return branchIdsIn(state, ['active', 'preparing', 'prepared', 'voted-no']);
}

function startAbort(state: TwoPhaseState, reason: string): Step {
  return {
    state: { ...state, phase: 'deciding', decision: 'abort', abortReason: state.abortReason ?? reason },
    actions: [{ type: 'log-decision', decision: 'abort', force: false }],
  };
}

function startCommitDecision(state: TwoPhaseState): Step {
  return {
    state: { ...state, phase: 'deciding', decision: 'commit' },
    actions: [{ type: 'log-decision', decision: state.protocol === '3pc' ? 'precommit' : 'commit', force: true }],
  };
}

function startPrepare(state: TwoPhaseState, commitRequested: boolean): Step {
  const ids = branchIdsIn(state, ['active']);
  let next: TwoPhaseState = { ...state, phase: 'preparing', commitRequested };
  for (const id of ids) next = withBranch(next, id, 'preparing');
  if (ids.length === 0) return settleVotes(next);
  return { state: next, actions: [{ type: 'prepare-branches', branchIds: ids }] };
}

/** Called whenever a vote arrives: decides once no prepare is outstanding. */
function settleVotes(state: TwoPhaseState): Step {
  if (branchIdsIn(state, ['preparing']).length > 0) return { state, actions: [] };
  if (branchIdsIn(state, ['voted-no']).length > 0 || state.abortReason !== undefined) {
    return startAbort(state, state.abortReason ?? 'a participant voted no');
  }
  if (state.commitRequested) return startCommitDecision(state);
  return { state: { ...state, phase: 'prepared' }, actions: [] };
}

/**
 * One-phase commit: only for a transaction of exactly one branch, still running its work.
 * With two branches, one store could commit while the other rolls back — so the machine
 * refuses it there whatever the runner offers.
 */
function startOnePhase(state: TwoPhaseState): Step | undefined {
  const ids = Object.keys(state.branches);
  if (ids.length !== 1 || state.branches[ids[0]!]?.phase !== 'active') return undefined;
  return { state: { ...state, phase: 'one-phase', commitRequested: true }, actions: [{ type: 'commit-one-phase', branchId: ids[0]! }] };
}

function onOnePhaseOutcome(state: TwoPhaseState, event: Extract<TwoPhaseEvent, { type: 'one-phase-outcome' }>): Step {
  if (isTerminal(state.phase) && state.branches[event.branchId] !== undefined) return { state, actions: [] }; // duplicate
  if (state.phase !== 'one-phase') throw new InvalidTransitionError(state.phase, 'one-phase-outcome');
  if (state.branches[event.branchId] === undefined) throw new InvalidTransitionError(state.phase, 'one-phase-outcome', `unknown branch ${event.branchId}`);
  const committed = event.outcome === 'commit';
  const next: TwoPhaseState = {
    ...withBranch(state, event.branchId, committed ? 'committed' : 'aborted'),
    decision: event.outcome,
    ...(committed ? {} : { abortReason: state.abortReason ?? event.reason ?? `branch ${event.branchId} could not commit` }),
  };
  return finish(next, event.outcome);
}

function afterDecisionDurable(state: TwoPhaseState, verdict: Verdict): Step {
  if (verdict === 'precommit') {
    const ids = branchIdsIn(state, ['prepared']);
    const next: TwoPhaseState = { ...state, phase: 'precommitted' };
    if (ids.length === 0) return logCommitAfterPrecommit(next);
    return { state: next, actions: [{ type: 'deliver', decision: 'precommit', branchIds: ids }] };
  }
  if (verdict === 'commit') {
    // 3PC after recovery may find branches still 'prepared' (their pre-commit ack was lost): commit them too.
    const ids = branchIdsIn(state, ['prepared', 'precommitted']);
    const next: TwoPhaseState = { ...state, phase: 'committing' };
    if (ids.length === 0) return finish(next, 'commit');
    return { state: next, actions: [{ type: 'deliver', decision: 'commit', branchIds: ids }] };
  }
  const ids = branchesToAbort(state);
  const next: TwoPhaseState = { ...state, phase: 'aborting' };
  if (ids.length === 0) return finish(next, 'abort');
  return { state: next, actions: [{ type: 'deliver', decision: 'abort', branchIds: ids }] };
}

/** 3PC: every branch acknowledged pre-commit; the commit record need not be forced. */
function logCommitAfterPrecommit(state: TwoPhaseState): Step {
  return { state, actions: [{ type: 'log-decision', decision: 'commit', force: false }] };
}

function finish(state: TwoPhaseState, outcome: Decision): Step {
  return {
    state: { ...state, phase: outcome === 'commit' ? 'committed' : 'aborted' },
    actions: [{ type: 'log-end', outcome }],
  };
}

/**
 * The branches whose phase-2 message (pre-commit, commit or abort, by the phase) is still to be
 * acknowledged; empty outside those phases.
 */
export function awaitingDelivery(state: TwoPhaseState): string[] {
  switch (state.phase) {
    case 'precommitted':
      return branchIdsIn(state, ['prepared']);
    case 'committing':
      return branchIdsIn(state, ['prepared', 'precommitted']);
    case 'aborting':
      return branchesToAbort(state);
    default:
      return [];
  }
}

function onAck(state: TwoPhaseState, branchId: string, verdict: Verdict): Step {
  const branch = state.branches[branchId];
  if (branch === undefined) throw new InvalidTransitionError(state.phase, 'ack', `unknown branch ${branchId}`);
  // An acknowledgement of an earlier round (a late or duplicated pre-commit ack) says nothing now.
  const current: Verdict | undefined =
    state.phase === 'precommitted' ? 'precommit' : state.phase === 'committing' ? 'commit' : state.phase === 'aborting' ? 'abort' : undefined;
  if (current !== undefined && verdict !== current) return { state, actions: [] };
  if (state.phase === 'precommitted') {
    if (branch.phase !== 'prepared') return { state, actions: [] }; // duplicate ack
    const next = withBranch(state, branchId, 'precommitted');
    if (awaitingDelivery(next).length > 0) return { state: next, actions: [] };
    return logCommitAfterPrecommit(next);
  }
  if (state.phase !== 'committing' && state.phase !== 'aborting') {
    if (isTerminal(state.phase)) return { state, actions: [] }; // duplicate ack after the end
    throw new InvalidTransitionError(state.phase, 'ack');
  }
  const done: BranchPhase = state.decision === 'commit' ? 'committed' : 'aborted';
  const next = branch.phase === done ? state : withBranch(state, branchId, done);
  if (awaitingDelivery(next).length > 0) return { state: next, actions: [] };
  return finish(next, state.decision ?? 'abort');
}

/**
 * Forgetting a branch stands for its abort acknowledgement, and only that: the participant is
 * gone for good and nothing there can be rolled back any more. Never while the outcome is
 * open or commit — a prepared branch of a committed transaction must commit, so giving up
 * on it would contradict the decision.
 */
function onForget(state: TwoPhaseState, branchId: string): Step {
  const branch = state.branches[branchId];
  if (branch === undefined) throw new InvalidTransitionError(state.phase, 'forget', `unknown branch ${branchId}`);
  if (state.decision !== 'abort' || (state.phase !== 'aborting' && !isTerminal(state.phase))) {
    throw new InvalidTransitionError(state.phase, 'forget', 'only a branch of an aborting transaction can be forgotten');
  }
  return onAck(state, branchId, 'abort');
}

function onVote(state: TwoPhaseState, event: Extract<TwoPhaseEvent, { type: 'vote' }>): Step {
  const branch = state.branches[event.branchId];
  if (branch === undefined) throw new InvalidTransitionError(state.phase, 'vote', `unknown branch ${event.branchId}`);
  if (branch.phase !== 'preparing') return { state, actions: [] }; // duplicate or late vote: already counted
  if (state.phase !== 'preparing') throw new InvalidTransitionError(state.phase, 'vote');
  const phase: BranchPhase = event.vote === 'yes' ? 'prepared' : event.vote === 'read-only' ? 'read-only' : 'voted-no';
  let next = withBranch(state, event.branchId, phase);
  if (event.vote === 'no' && next.abortReason === undefined) {
    next = { ...next, abortReason: event.reason ?? `branch ${event.branchId} voted no` };
  }
  return settleVotes(next);
}

export function step(state: TwoPhaseState, event: TwoPhaseEvent): Step {
  switch (event.type) {
    case 'enlist': {
      if (state.phase !== 'active') throw new InvalidTransitionError(state.phase, 'enlist');
      if (state.branches[event.branchId] !== undefined) return { state, actions: [] };
      return { state: withBranch(state, event.branchId, 'active'), actions: [] };
    }
    case 'prepare': {
      if (state.phase === 'active') return startPrepare(state, false);
      if (state.phase === 'prepared' || state.phase === 'preparing') return { state, actions: [] };
      throw new InvalidTransitionError(state.phase, 'prepare');
    }
    case 'commit': {
      if (state.phase === 'active') return (event.onePhase === true ? startOnePhase(state) : undefined) ?? startPrepare(state, true);
      if (state.phase === 'one-phase') return { state, actions: [] }; // repeated commit: under way
      if (state.phase === 'preparing') return { state: { ...state, commitRequested: true }, actions: [] };
      if (state.phase === 'prepared') return startCommitDecision({ ...state, commitRequested: true });
      if (state.decision === 'commit') return { state, actions: [] }; // repeated commit: idempotent
      throw new InvalidTransitionError(state.phase, 'commit', state.abortReason);
    }
    case 'abort':
    case 'timeout': {
      const reason = event.type === 'abort' ? event.reason : 'transaction timed out';
      if (state.phase === 'active' || state.phase === 'prepared') return startAbort(state, reason);
      if (state.phase === 'preparing') {
        // Outstanding prepares must answer first; remember the abort.
        return settleVotes({ ...state, abortReason: state.abortReason ?? reason });
      }
      if (state.decision === 'abort') return { state, actions: [] }; // already aborting: idempotent
      if (event.type === 'timeout') return { state, actions: [] }; // a committed decision is never undone
      if (state.phase === 'one-phase') throw new InvalidTransitionError(state.phase, 'abort', 'the one-phase commit is under way on the store');
      throw new InvalidTransitionError(state.phase, 'abort', 'the commit decision is already durable');
    }
    case 'vote':
      return onVote(state, event);
    case 'decision-durable': {
      const expected =
        state.phase === 'deciding'
          ? state.decision === 'commit' && state.protocol === '3pc'
            ? 'precommit'
            : state.decision
          : state.phase === 'precommitted'
            ? 'commit'
            : undefined;
      if (expected !== event.decision) throw new InvalidTransitionError(state.phase, 'decision-durable');
      if (state.phase === 'precommitted' && awaitingDelivery(state).length > 0) {
        throw new InvalidTransitionError(state.phase, 'decision-durable', 'pre-commit not yet acknowledged by every branch');
      }
      return afterDecisionDurable(state, event.decision);
    }
    case 'ack':
      return onAck(state, event.branchId, event.verdict);
    case 'forget':
      return onForget(state, event.branchId);
    case 'one-phase-outcome':
      return onOnePhaseOutcome(state, event);
  }
}
