/**
 * The two-phase commit state machine, with presumed abort. Pure: events in,
 * a new state and a list of actions out. No I/O, no clocks, no randomness —
 * the runner in src/coordinator interprets the actions and feeds the results
 * back as events.
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
 *   deciding    The decision has been handed to the log. For commit the
 *               record is forced: phase 2 must not start before it is durable
 *               (rule 2). An abort record is not forced (presumed abort).
 *   committing  The commit decision is durable; commit is being delivered to
 *   aborting    every branch that voted yes (read-only branches are skipped)
 *               or abort to every branch that may hold work. Delivery is
 *               retried by the runner until each branch acknowledges.
 *   committed   Every branch acknowledged; the end record (never forced) has
 *   aborted     been requested. Terminal.
 *
 * Guards: an event that does not fit the phase is rejected with
 * InvalidTransitionError, except duplicates of votes and acknowledgements,
 * which are idempotent (messages can be duplicated by retries).
 */

export type Decision = 'commit' | 'abort';
export type Vote = 'yes' | 'no' | 'read-only';

export type TransactionPhase =
  | 'active'
  | 'preparing'
  | 'prepared'
  | 'deciding'
  | 'committing'
  | 'aborting'
  | 'committed'
  | 'aborted';

export type BranchPhase =
  | 'active'
  | 'preparing'
  | 'prepared'
  | 'read-only'
  | 'voted-no'
  | 'committed'
  | 'aborted';

export interface BranchState {
  readonly phase: BranchPhase;
}

export interface TwoPhaseState {
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
  | { readonly type: 'commit' }
  | { readonly type: 'abort'; readonly reason: string }
  | { readonly type: 'timeout' }
  | { readonly type: 'vote'; readonly branchId: string; readonly vote: Vote; readonly reason?: string }
  | { readonly type: 'decision-durable'; readonly decision: Decision }
  | { readonly type: 'ack'; readonly branchId: string };

export type TwoPhaseAction =
  | { readonly type: 'prepare-branches'; readonly branchIds: readonly string[] }
  | { readonly type: 'log-decision'; readonly decision: Decision; readonly force: boolean }
  | { readonly type: 'deliver'; readonly decision: Decision; readonly branchIds: readonly string[] }
  | { readonly type: 'log-end'; readonly outcome: Decision };

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

export function initialState(): TwoPhaseState {
  return { phase: 'active', branches: {}, commitRequested: false, decision: undefined, abortReason: undefined };
}

const TERMINAL: ReadonlySet<TransactionPhase> = new Set(['committed', 'aborted']);

export function isTerminal(phase: TransactionPhase): boolean {
  return TERMINAL.has(phase);
}

function withBranch(state: TwoPhaseState, branchId: string, phase: BranchPhase): TwoPhaseState {
  return { ...state, branches: { ...state.branches, [branchId]: { phase } } };
}

function branchIdsIn(state: TwoPhaseState, phases: readonly BranchPhase[]): string[] {
  return Object.entries(state.branches)
    .filter(([, b]) => phases.includes(b.phase))
    .map(([id]) => id);
}

/** Branches that may hold work or a prepared state, and so must hear an abort. */
function branchesToAbort(state: TwoPhaseState): string[] {
  return branchIdsIn(state, ['active', 'preparing', 'prepared']);
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
    actions: [{ type: 'log-decision', decision: 'commit', force: true }],
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

function afterDecisionDurable(state: TwoPhaseState, decision: Decision): Step {
  if (decision === 'commit') {
    const ids = branchIdsIn(state, ['prepared']);
    const next: TwoPhaseState = { ...state, phase: 'committing' };
    if (ids.length === 0) return finish(next, 'commit');
    return { state: next, actions: [{ type: 'deliver', decision: 'commit', branchIds: ids }] };
  }
  const ids = branchesToAbort(state);
  const next: TwoPhaseState = { ...state, phase: 'aborting' };
  if (ids.length === 0) return finish(next, 'abort');
  return { state: next, actions: [{ type: 'deliver', decision: 'abort', branchIds: ids }] };
}

function finish(state: TwoPhaseState, outcome: Decision): Step {
  return {
    state: { ...state, phase: outcome === 'commit' ? 'committed' : 'aborted' },
    actions: [{ type: 'log-end', outcome }],
  };
}

function onAck(state: TwoPhaseState, branchId: string): Step {
  const branch = state.branches[branchId];
  if (branch === undefined) throw new InvalidTransitionError(state.phase, 'ack', `unknown branch ${branchId}`);
  if (state.phase !== 'committing' && state.phase !== 'aborting') {
    if (isTerminal(state.phase)) return { state, actions: [] }; // duplicate ack after the end
    throw new InvalidTransitionError(state.phase, 'ack');
  }
  const done: BranchPhase = state.decision === 'commit' ? 'committed' : 'aborted';
  const next = branch.phase === done ? state : withBranch(state, branchId, done);
  const pending = state.decision === 'commit' ? branchIdsIn(next, ['prepared']) : branchesToAbort(next);
  if (pending.length > 0) return { state: next, actions: [] };
  return finish(next, state.decision ?? 'abort');
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
      if (state.phase === 'active') return startPrepare(state, true);
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
      throw new InvalidTransitionError(state.phase, 'abort', 'the commit decision is already durable');
    }
    case 'vote':
      return onVote(state, event);
    case 'decision-durable': {
      if (state.phase !== 'deciding' || state.decision !== event.decision) {
        throw new InvalidTransitionError(state.phase, 'decision-durable');
      }
      return afterDecisionDurable(state, event.decision);
    }
    case 'ack':
      return onAck(state, event.branchId);
  }
}
