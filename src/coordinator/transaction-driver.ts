/**
 * Drives one transaction's protocol: feeds events to the pure 2PC/3PC machine
 * (src/protocol) and performs the actions it returns —
 *
 *   prepare-branches  every branch asked to prepare (3PC: can-commit) at once;
 *                     a vote the adapter already gave with the work counts as
 *                     the answer
 *   log-decision      the journal's record, forced before any commit
 *                     (pre-commit) leaves (rule 2); presumed abort writes none
 *   deliver           phase 2 to each branch, retried with backoff until it is
 *                     acknowledged (rule 5); visible as in doubt meanwhile
 *   log-end           the unforced end record; the transaction leaves memory
 *   commit-one-phase  the lone branch commits on its store in one step; a lost
 *                     answer forces the store's evidence to the log, then the
 *                     store is asked for the outcome, with backoff, until it can
 *                     tell (never by a second commit)
 *
 * Each step is synchronous, so no two interleave; the results of I/O come back
 * as new events. Timeouts abort abandoned transactions (rule 7).
 */

import type { Logger } from 'pino';
import { isoNow } from '../lib/iso-clock.js';
import { asError, errorMessage } from '../errors.js';
import type { BranchRef, OnePhaseResult, OnePhaseUnknown, ParticipantAdapter } from '../participants/participant.js';
import { isTerminal, step, type TwoPhaseAction, type TwoPhaseEvent, type Verdict, type Decision } from '../protocol/commit-protocol.js';
import { backoffDelay, sleep, type BackoffPolicy } from './backoff.js';
import type { CoordinatorLog } from './coordinator-log.js';
import { hitFailPoint } from './fail-points.js';
import { flatLineLogger } from '../logger.js';
import { decisionRecord, endedRecord, onePhaseInDoubtRecord } from './journal.js';
import { endedEvent, type LiveBranch, type LiveTransaction } from './live-transaction.js';
import { events, observeCall } from '../observability/events.js';
import type { ParticipantRegistry } from './participant-registry.js';

export interface DriverHooks {
  /** The transaction has its decision (its outcome is no longer open). */
  readonly decided: (tx: LiveTransaction) => void;
  /** The end record is written: the transaction leaves memory. */
  readonly ended: (tx: LiveTransaction) => void;
}

export class TransactionDriver {
  readonly #log: CoordinatorLog;
  readonly #registry: ParticipantRegistry;
  readonly #retry: BackoffPolicy;
  readonly #logger: Logger;
  /** For the decision line of every transaction: flat fields, so the cheap redaction (logger.ts). */
  readonly #decisionLogger: Logger;
  readonly #hooks: DriverHooks;
  readonly #stopping: AbortSignal;
  /** Aborted when a graceful stop no longer waits for one-phase COMMIT answers (abandonOnePhaseAnswers). */
  readonly #answersAbandoned = new AbortController();
  readonly #leaseHeld: () => boolean;

  constructor(deps: {
    log: CoordinatorLog;
    registry: ParticipantRegistry;
    retry: BackoffPolicy;
    logger: Logger;
    hooks: DriverHooks;
    stopping: AbortSignal;
    /** False once this instance may no longer hold the coordinator id: no participant hears from it then. */
    leaseHeld?: () => boolean;
  }) {
    this.#leaseHeld = deps.leaseHeld ?? (() => true);
    this.#log = deps.log;
    this.#registry = deps.registry;
    this.#retry = deps.retry;
    this.#logger = deps.logger;
    this.#decisionLogger = flatLineLogger(deps.logger);
    this.#hooks = deps.hooks;
    this.#stopping = deps.stopping;
  }

  /**
   * A graceful stop's deadline is near: a one-phase COMMIT still waiting for its answer stops
   * waiting, and its evidence is forced as for a lost answer (the log is still open), so that
   * recovery asks the store after the restart instead of forgetting the transaction. No COMMIT
   * leaves after this; nobody is asked until the restart.
   */
  abandonOnePhaseAnswers(): void {
    this.#answersAbandoned.abort();
  }

  /** A client's event: a rejected transition throws (the API answers 409). */
  apply(tx: LiveTransaction, event: TwoPhaseEvent): void {
    const undecided = tx.state.decision === undefined;
    const { state, actions } = step(tx.state, event);
    tx.state = state;
    if (undecided && state.decision !== undefined) this.#hooks.decided(tx);
    tx.changed();
    for (const action of actions) this.#perform(tx, action);
  }

  /** The machine's own events: a rejected transition here is a bug to report, not a crash. */
  applyInternal(tx: LiveTransaction, event: TwoPhaseEvent): void {
    try {
      this.apply(tx, event);
    } catch (err) {
      this.#logger.error({ txId: tx.id, event: event.type, phase: tx.state.phase, err: errorMessage(err) }, 'protocol event rejected');
    }
  }

  /**
   * An operator's "forget this branch" (its participant is gone for good), once the record is
   * durable: the machine takes it for the branch's abort acknowledgement and refuses it under
   * any other outcome; the branch's delivery stops calling the participant.
   */
  forget(tx: LiveTransaction, branchId: string, audit: NonNullable<LiveBranch['forgotten']>): void {
    this.apply(tx, { type: 'forget', branchId });
    const branch = tx.branches.get(branchId);
    if (branch !== undefined) branch.forgotten = audit;
    tx.wakeUp();
  }

  ref(tx: LiveTransaction, branch: LiveBranch): BranchRef {
    return {
      transactionId: tx.id,
      protocol: tx.protocol,
      branchId: branch.branchId,
      gid: branch.gid,
      ...(branch.payload === undefined ? {} : { payload: branch.payload }),
    };
  }

  async onTimeout(tx: LiveTransaction): Promise<void> {
    if (tx.state.decision === undefined && tx.state.phase === 'active') tx.cancelWork.abort(new Error('transaction timed out'));
    await tx.lock.run(async () => {
      if (tx.state.decision !== undefined || isTerminal(tx.state.phase)) return;
      this.#logger.warn({ txId: tx.id, phase: tx.state.phase, timeoutMs: tx.timeoutMs }, 'transaction timed out; aborting');
      this.applyInternal(tx, { type: 'timeout' });
    });
  }

  #perform(tx: LiveTransaction, action: TwoPhaseAction): void {
    switch (action.type) {
      case 'prepare-branches':
        tx.preparingMs ??= performance.now();
        for (const id of action.branchIds) void this.#prepareBranch(tx, id);
        return;
      case 'log-decision':
        void this.#logDecision(tx, action.decision, action.force);
        return;
      case 'deliver':
        for (const id of action.branchIds) void this.#deliver(tx, id, action.decision);
        return;
      case 'log-end':
        this.#end(tx, action.outcome);
        return;
      case 'commit-one-phase':
        void this.#commitOnePhase(tx, action.branchId);
        return;
    }
  }

  /**
   * One-phase commit: the store decides, nothing is logged before (a crash leaves the log
   * silent, and the store has committed all of the branch's work or none of it). A lost
   * answer is not a "no": the store's evidence is forced to the log, and the store is asked
   * what it did until it can tell (after a restart, by recovery), in doubt meanwhile.
   */
  async #commitOnePhase(tx: LiveTransaction, branchId: string): Promise<void> {
    const branch = tx.branches.get(branchId);
    if (branch === undefined) return;
    tx.onePhase = true;
    tx.preparingMs ??= performance.now();
    const adapter = this.#registry.adapter(branch.participant);
    const ref = this.ref(tx, branch);
    if (!this.#leaseHeld()) {
      // No commit leaves once the lease may have gone; the open work is rolled back (or ends with its session).
      await adapter.abort(ref).catch(() => undefined);
      await this.#finishOnePhase(tx, branchId, { outcome: 'abort', reason: "this instance lost its coordinator id's lease" });
      return;
    }
    hitFailPoint('before-one-phase-commit');
    branch.attempts = 1;
    branch.lastAttemptAt = isoNow();
    let answer: OnePhaseResult | OnePhaseUnknown;
    try {
      answer = await observeCall(adapter, 'commit-one-phase', () => adapter.commitOnePhase!(ref, this.#answersAbandoned.signal));
    } catch (err) {
      // An adapter that broke its contract: whether COMMIT left is not known, and nothing says how to find out.
      answer = { outcome: 'unknown', evidence: {}, reason: `one-phase commit on ${branch.participant} failed: ${errorMessage(err)}` };
    }
    if (answer.outcome === 'unknown') {
      await this.#recordOnePhaseInDoubt(tx, branch, answer);
      const asked = await this.#askOnePhaseOutcome(tx, branch);
      if (asked === undefined) return; // stopping: recovery asks again after the restart
      answer = asked;
    }
    hitFailPoint('after-one-phase-commit');
    await this.#finishOnePhase(tx, branchId, answer);
  }

  /** Recovery: a one-phase commit whose answer was lost before a restart; the store is asked what it did. */
  async resumeOnePhase(tx: LiveTransaction): Promise<void> {
    const [branch] = tx.branches.values();
    if (branch === undefined) return;
    const result = await this.#askOnePhaseOutcome(tx, branch);
    if (result !== undefined) await this.#finishOnePhase(tx, branch.branchId, result);
  }

  /**
   * The answer was lost: its evidence forced to the log so that a restart does not forget it,
   * then no longer undecided for the open-transaction limits (the store has it). Should the
   * force fail, the client hears LOG_UNAVAILABLE: a restart would not know the transaction.
   */
  async #recordOnePhaseInDoubt(tx: LiveTransaction, branch: LiveBranch, unknown: OnePhaseUnknown): Promise<void> {
    tx.onePhaseEvidence = unknown.evidence;
    branch.lastError = unknown.reason;
    this.#logger.warn({ txId: tx.id, branchId: branch.branchId, participant: branch.participant, err: unknown.reason }, 'one-phase commit: answer lost; asking the store');
    try {
      await this.#log.force(onePhaseInDoubtRecord(tx, branch, unknown.evidence, unknown.reason));
      tx.onePhaseInDoubtLogged = true;
      hitFailPoint('one-phase-answer-lost');
    } catch (err) {
      // The log failed (the coordinator is unhealthy now): the store is still asked while this process runs.
      tx.logFailure = asError(err);
      this.#logger.error({ txId: tx.id, err: errorMessage(err) }, 'one-phase commit: forcing the lost answer\'s evidence failed');
    }
    this.#hooks.decided(tx);
    tx.changed();
  }

  /** Asks the store, with backoff, until it tells; undefined when the coordinator stops first. */
  async #askOnePhaseOutcome(tx: LiveTransaction, branch: LiveBranch): Promise<OnePhaseResult | undefined> {
    const adapter = (): ParticipantAdapter => this.#registry.adapter(branch.participant);
    const evidence = tx.onePhaseEvidence ?? {};
    for (let attempt = 0; ; attempt++) {
      if (this.#stopping.aborted || this.#answersAbandoned.signal.aborted) return undefined;
      if (!this.#leaseHeld()) {
        // The lease may have passed to another instance, which asks (from the logged evidence) now.
        await sleep(backoffDelay(this.#retry, attempt), this.#stopping, tx.wakeSignal);
        continue;
      }
      branch.attempts += 1;
      branch.lastAttemptAt = isoNow();
      try {
        const current = adapter();
        const result = await observeCall(current, 'one-phase-outcome', () => current.onePhaseOutcome!(this.ref(tx, branch), evidence));
        branch.finishedAttempts = (branch.finishedAttempts ?? 0) + 1;
        return result;
      } catch (err) {
        branch.finishedAttempts = (branch.finishedAttempts ?? 0) + 1;
        branch.lastError = errorMessage(err);
        // An operator resolved it by hand (durable already), and the store still cannot tell: their word.
        if (tx.onePhaseResolution !== undefined) return tx.onePhaseResolution;
        const delay = backoffDelay(this.#retry, attempt);
        this.#logger.warn(
          { txId: tx.id, branchId: branch.branchId, participant: branch.participant, attempt: attempt + 1, retryInMs: delay, err: branch.lastError },
          'one-phase commit: outcome not known yet; asking the store again',
        );
        tx.changed();
        await sleep(delay, this.#stopping, tx.wakeSignal);
      }
    }
  }

  async #finishOnePhase(tx: LiveTransaction, branchId: string, result: OnePhaseResult): Promise<void> {
    const branch = tx.branches.get(branchId);
    if (branch !== undefined) delete branch.lastError;
    tx.decidedAt ??= isoNow();
    tx.decidedMs ??= performance.now();
    // A commit's end record is its only record; after a lost answer the in-doubt record would
    // bring the transaction back, to be asked again (maybe answered otherwise): forced too.
    const inDoubtBefore = tx.onePhaseEvidence !== undefined || tx.onePhaseResolution !== undefined;
    if (result.outcome === 'commit' || inDoubtBefore) await this.#forceOnePhaseEnd(tx, result.outcome);
    this.applyInternal(tx, {
      type: 'one-phase-outcome',
      branchId,
      outcome: result.outcome,
      ...(result.reason === undefined ? {} : { reason: result.reason }),
    });
    this.#decisionLogger.info({ txId: tx.id, decision: result.outcome, branches: 1, onePhase: true, ...(result.reason === undefined ? {} : { reason: result.reason }) }, 'decision');
  }

  async #prepareBranch(tx: LiveTransaction, branchId: string): Promise<void> {
    const branch = tx.branches.get(branchId);
    if (branch === undefined) return;
    branch.prepareSent = true;
    let vote: 'yes' | 'no' | 'read-only';
    let reason: string | undefined;
    const early = branch.earlyPrepare;
    if (early === undefined && !this.#leaseHeld()) {
      // No prepare leaves once the lease may have gone: the new holder presumes abort.
      this.applyInternal(tx, { type: 'vote', branchId, vote: 'no', reason: "this instance lost its coordinator id's lease" });
      return;
    }
    if (early !== undefined) {
      // Prepared before the machine asked (the commit followed the work at once): take that vote.
      branch.earlyPrepare = undefined;
      ({ vote, reason } = await early);
    } else {
      try {
        const adapter = this.#registry.adapter(branch.participant);
        const ref = this.ref(tx, branch);
        const options = { decisionFollows: tx.state.commitRequested };
        // 3PC can-commit: stores with one durable "yes" state prepare here (design rule 3).
        const canCommit = tx.protocol === '3pc' ? adapter.canCommit?.bind(adapter) : undefined;
        const answer =
          canCommit !== undefined ? await observeCall(adapter, 'can-commit', () => canCommit(ref, options)) : await observeCall(adapter, 'prepare', () => adapter.prepare(ref, options));
        vote = answer.vote;
        reason = answer.reason;
      } catch (err) {
        vote = 'no';
        reason = `prepare on ${branch.participant} failed: ${errorMessage(err)}`;
      }
    }
    branch.vote = vote;
    if (reason !== undefined) branch.voteReason = reason;
    if (vote === 'yes') hitFailPoint('after-prepare');
    else if (vote === 'no') this.#logger.info({ txId: tx.id, branchId, participant: branch.participant, reason }, 'branch voted no');
    this.applyInternal(tx, { type: 'vote', branchId, vote, ...(reason === undefined ? {} : { reason }) });
  }

  async #logDecision(tx: LiveTransaction, verdict: Verdict, force: boolean): Promise<void> {
    const at = isoNow();
    const record = decisionRecord(tx, verdict, at);
    if (force && record !== undefined) {
      try {
        await this.#log.force(record);
      } catch (err) {
        // Fail-stop: without a durable decision no commit may leave. The branches stay
        // prepared; recovery after a restart rolls them back (presumed abort).
        tx.logFailure = asError(err);
        this.#logger.error({ txId: tx.id, err: errorMessage(err) }, 'forcing the commit decision failed; transaction left undecided');
        tx.changed();
        return;
      }
      hitFailPoint('after-decision-logged');
    } else {
      if (verdict === 'commit') hitFailPoint('before-commit-record'); // 3PC: every pre-commit acknowledged
      if (record !== undefined) this.#log.record(record);
    }
    tx.decidedAt ??= at;
    tx.decidedMs ??= performance.now();
    // Phase 2 leaves first; the log line follows.
    this.applyInternal(tx, { type: 'decision-durable', decision: verdict });
    const reason = verdict === 'abort' ? tx.state.abortReason : undefined;
    this.#decisionLogger.info({ txId: tx.id, decision: verdict, branches: tx.branches.size, ...(reason === undefined ? {} : { reason }) }, 'decision');
  }

  async #deliver(tx: LiveTransaction, branchId: string, decision: Verdict): Promise<void> {
    const branch = tx.branches.get(branchId);
    if (branch === undefined) return;
    const adapter = this.#registry.has(branch.participant) ? this.#registry.adapter(branch.participant) : undefined;
    // An http service that never received a prepare holds nothing for this branch; a store
    // without a pre-commit step is marked by the coordinator's own log.
    const needsCall =
      !(!branch.prepareSent && adapter !== undefined && !adapter.listsPreparedBranches) &&
      !(decision === 'precommit' && adapter !== undefined && adapter.preCommit === undefined);
    for (let attempt = 0; needsCall; attempt++) {
      if (this.#stopping.aborted) return; // recovery after restart finishes it
      if (branch.forgotten !== undefined) return; // an operator gave up on it: acknowledged as such
      if (!this.#leaseHeld()) {
        // The lease on this coordinator id may have passed to another instance, which delivers now.
        await sleep(backoffDelay(this.#retry, attempt), this.#stopping, tx.wakeSignal);
        continue;
      }
      branch.attempts = attempt + 1;
      branch.lastAttemptAt = isoNow();
      try {
        const current = this.#registry.adapter(branch.participant);
        const ref = this.ref(tx, branch);
        if (decision === 'precommit') {
          const preCommit = current.preCommit?.bind(current);
          if (preCommit !== undefined) await observeCall(current, 'pre-commit', () => preCommit(ref));
        } else if (decision === 'commit') await observeCall(current, 'commit', () => current.commit(ref));
        else await observeCall(current, 'abort', () => current.abort(ref));
        branch.finishedAttempts = (branch.finishedAttempts ?? 0) + 1;
        break;
      } catch (err) {
        branch.finishedAttempts = (branch.finishedAttempts ?? 0) + 1;
        if (branch.forgotten !== undefined) return; // forgotten while this attempt was under way
        branch.lastError = errorMessage(err);
        if (!this.#leaseHeld()) continue; // an attempt sent before the lease lapsed: nothing more is sent
        const delay = backoffDelay(this.#retry, attempt);
        this.#logger.warn(
          { txId: tx.id, branchId, participant: branch.participant, decision, attempt: attempt + 1, retryInMs: delay, err: branch.lastError },
          'phase-2 delivery failed; retrying',
        );
        tx.changed();
        await sleep(delay, this.#stopping, tx.wakeSignal);
      }
    }
    delete branch.lastError;
    if (decision === 'commit') hitFailPoint('between-commits');
    if (decision === 'precommit') hitFailPoint('between-precommits');
    this.applyInternal(tx, { type: 'ack', branchId, verdict: decision });
  }

  /**
   * The end record of a one-phase commit is its only record, and it is forced before the
   * client hears "committed" (group commit shares the fsync): an answered commit is never
   * forgotten by a crash, on this instance or any other reading a shared log. (An abort needs
   * no force — the log's silence means abort — unless an in-doubt record precedes it.)
   */
  async #forceOnePhaseEnd(tx: LiveTransaction, outcome: Decision): Promise<void> {
    const record = endedRecord(tx, outcome);
    try {
      await this.#log.force(record);
      tx.endLogged = true;
    } catch (err) {
      // The store decided whatever the log does: the client hears LOG_UNAVAILABLE with the outcome.
      tx.logFailure = asError(err);
      this.#logger.error({ txId: tx.id, outcome, err: errorMessage(err) }, 'one-phase commit: forcing its end record failed');
    }
  }

  #end(tx: LiveTransaction, outcome: Decision): void {
    hitFailPoint('before-end-record');
    if (!tx.endLogged) this.#log.record(endedRecord(tx, outcome));
    clearTimeout(tx.timer);
    this.#hooks.ended(tx);
    if (events.transactionEnded.active) events.transactionEnded.publish(endedEvent(tx, outcome));
    this.#logger.debug({ txId: tx.id, outcome }, 'transaction ended');
    tx.changed();
  }
}
