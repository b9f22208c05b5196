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
 *   commit-one-phase  the lone branch commits on its store in one step
 *                     (one-phase-commit.ts); a lost answer forces the store's
 *                     evidence to the log, then the store is asked for the
 *                     outcome, with backoff, until it can tell (never by a
 *                     second commit)
 *
 * Each step is synchronous, so no two interleave; the results of I/O come back
 * as new events. Timeouts abort abandoned transactions (rule 7).
 */

import type { Logger } from 'pino';
import { isoNow } from '../lib/iso-clock.js';
import { asError, errorMessage } from '../errors.js';
import { isTerminal, step, type TwoPhaseAction, type TwoPhaseEvent, type Verdict, type Decision } from '../protocol/commit-protocol.js';
import { backoffDelay, sleep, type BackoffPolicy } from './backoff.js';
import type { CoordinatorLog } from './coordinator-log.js';
import { hitFailPoint } from './fail-points.js';
import { flatLineLogger } from '../logger.js';
import { decisionRecord, endedRecord } from './journal.js';
import { branchRef, endedEvent, type LiveBranch, type LiveTransaction } from './live-transaction.js';
import { events, observeCall } from '../observability/events.js';
import { OnePhaseCommit } from './one-phase-commit.js';
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
  readonly #onePhase: OnePhaseCommit;
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
    this.#onePhase = new OnePhaseCommit({
      log: deps.log,
      registry: deps.registry,
      retry: deps.retry,
      logger: deps.logger,
      decisionLogger: this.#decisionLogger,
      stopping: deps.stopping,
      leaseHeld: this.#leaseHeld,
      decided: (tx) => this.#hooks.decided(tx),
      applyInternal: (tx, event) => this.applyInternal(tx, event),
    });
  }

  /** A graceful stop's deadline is near: one-phase COMMITs stop waiting for their answers (one-phase-commit.ts). */
  abandonOnePhaseAnswers(): void {
    this.#onePhase.abandonAnswers();
  }

  /** Recovery: a one-phase commit whose answer was lost before a restart; the store is asked what it did. */
  resumeOnePhase(tx: LiveTransaction): Promise<void> {
    return this.#onePhase.resume(tx);
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
        void this.#onePhase.commit(tx, action.branchId);
        return;
    }
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
        const ref = branchRef(tx, branch);
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
        const ref = branchRef(tx, branch);
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
