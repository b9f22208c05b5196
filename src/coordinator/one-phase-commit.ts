/**
 * One-phase commit of a transaction with a single branch: whether it fits (onePhaseFits, asked
 * by the manager), and the driver's `commit-one-phase` action, in which the branch's store
 * commits in one step and decides. Nothing is logged before the COMMIT leaves — a crash
 * leaves the log silent, and the store has committed all of the branch's work or none of it —
 * and a commit's end record, its only record, is forced before the client hears the outcome. A lost answer is never taken for a "no" and never answered by
 * a second COMMIT: the store's evidence is forced to the log, and the store is asked what it
 * did, with backoff, until it can tell (after a restart, by recovery).
 */

import type { Logger } from 'pino';
import { asError, errorMessage } from '../errors.js';
import { isoNow } from '../lib/iso-clock.js';
import type { OnePhaseResult, OnePhaseUnknown, ParticipantAdapter } from '../participants/participant.js';
import type { Decision, TwoPhaseEvent } from '../protocol/commit-protocol.js';
import { observeCall } from '../observability/events.js';
import { backoffDelay, sleep, type BackoffPolicy } from './backoff.js';
import type { CoordinatorLog } from './coordinator-log.js';
import { hitFailPoint } from './fail-points.js';
import { endedRecord, onePhaseInDoubtRecord } from './journal.js';
import { branchRef, type LiveBranch, type LiveTransaction } from './live-transaction.js';
import type { ParticipantRegistry } from './participant-registry.js';

export interface OnePhaseCommitDeps {
  readonly log: CoordinatorLog;
  readonly registry: ParticipantRegistry;
  readonly retry: BackoffPolicy;
  readonly logger: Logger;
  /** For the decision line (flat fields: the cheap redaction). */
  readonly decisionLogger: Logger;
  readonly stopping: AbortSignal;
  readonly leaseHeld: () => boolean;
  /** The transaction is no longer undecided for the open-transaction limits. */
  readonly decided: (tx: LiveTransaction) => void;
  /** Feeds the machine's own event to the protocol (the driver's applyInternal). */
  readonly applyInternal: (tx: LiveTransaction, event: TwoPhaseEvent) => void;
}

export class OnePhaseCommit {
  readonly #log: CoordinatorLog;
  readonly #registry: ParticipantRegistry;
  readonly #retry: BackoffPolicy;
  readonly #logger: Logger;
  readonly #decisionLogger: Logger;
  readonly #stopping: AbortSignal;
  readonly #leaseHeld: () => boolean;
  readonly #decided: (tx: LiveTransaction) => void;
  readonly #applyInternal: (tx: LiveTransaction, event: TwoPhaseEvent) => void;
  /** Aborted when a graceful stop no longer waits for COMMIT answers (abandonAnswers). */
  readonly #answersAbandoned = new AbortController();

  constructor(deps: OnePhaseCommitDeps) {
    this.#log = deps.log;
    this.#registry = deps.registry;
    this.#retry = deps.retry;
    this.#logger = deps.logger;
    this.#decisionLogger = deps.decisionLogger;
    this.#stopping = deps.stopping;
    this.#leaseHeld = deps.leaseHeld;
    this.#decided = deps.decided;
    this.#applyInternal = deps.applyInternal;
  }

  /**
   * A graceful stop's deadline is near: a COMMIT still waiting for its answer stops waiting,
   * and its evidence is forced as for a lost answer (the log is still open), so that recovery
   * asks the store after the restart instead of forgetting the transaction. No COMMIT leaves
   * after this; nobody is asked until the restart.
   */
  abandonAnswers(): void {
    this.#answersAbandoned.abort();
  }

  /** The lone branch commits on its store; in doubt while a lost answer is asked for. */
  async commit(tx: LiveTransaction, branchId: string): Promise<void> {
    const branch = tx.branches.get(branchId);
    if (branch === undefined) return;
    tx.onePhase = true;
    tx.preparingMs ??= performance.now();
    const adapter = this.#registry.adapter(branch.participant);
    const ref = branchRef(tx, branch);
    if (!this.#leaseHeld()) {
      // No commit leaves once the lease may have gone; the open work is rolled back (or ends with its session).
      await adapter.abort(ref).catch(() => undefined);
      await this.#finish(tx, branchId, { outcome: 'abort', reason: "this instance lost its coordinator id's lease" });
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
      await this.#recordInDoubt(tx, branch, answer);
      const asked = await this.#askOutcome(tx, branch);
      if (asked === undefined) return; // stopping: recovery asks again after the restart
      answer = asked;
    }
    hitFailPoint('after-one-phase-commit');
    await this.#finish(tx, branchId, answer);
  }

  /** Recovery: a one-phase commit whose answer was lost before a restart; the store is asked what it did. */
  async resume(tx: LiveTransaction): Promise<void> {
    const [branch] = tx.branches.values();
    if (branch === undefined) return;
    const result = await this.#askOutcome(tx, branch);
    if (result !== undefined) await this.#finish(tx, branch.branchId, result);
  }

  /**
   * The answer was lost: its evidence forced to the log so that a restart does not forget it,
   * then no longer undecided for the open-transaction limits (the store has it). Should the
   * force fail, the client hears LOG_UNAVAILABLE: a restart would not know the transaction.
   */
  async #recordInDoubt(tx: LiveTransaction, branch: LiveBranch, unknown: OnePhaseUnknown): Promise<void> {
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
    this.#decided(tx);
    tx.changed();
  }

  /** Asks the store, with backoff, until it tells; undefined when the coordinator stops first. */
  async #askOutcome(tx: LiveTransaction, branch: LiveBranch): Promise<OnePhaseResult | undefined> {
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
        const result = await observeCall(current, 'one-phase-outcome', () => current.onePhaseOutcome!(branchRef(tx, branch), evidence));
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

  async #finish(tx: LiveTransaction, branchId: string, result: OnePhaseResult): Promise<void> {
    const branch = tx.branches.get(branchId);
    if (branch !== undefined) delete branch.lastError;
    tx.decidedAt ??= isoNow();
    tx.decidedMs ??= performance.now();
    // A commit's end record is its only record; after a lost answer the in-doubt record would
    // bring the transaction back, to be asked again (maybe answered otherwise): forced too.
    const inDoubtBefore = tx.onePhaseEvidence !== undefined || tx.onePhaseResolution !== undefined;
    if (result.outcome === 'commit' || inDoubtBefore) await this.#forceEnd(tx, result.outcome);
    this.#applyInternal(tx, {
      type: 'one-phase-outcome',
      branchId,
      outcome: result.outcome,
      ...(result.reason === undefined ? {} : { reason: result.reason }),
    });
    this.#decisionLogger.info({ txId: tx.id, decision: result.outcome, branches: 1, onePhase: true, ...(result.reason === undefined ? {} : { reason: result.reason }) }, 'decision');
  }

  /**
   * The end record of a one-phase commit is its only record, and it is forced before the
   * client hears "committed" (group commit shares the fsync): an answered commit is never
   * forgotten by a crash, on this instance or any other reading a shared log. (An abort needs
   * no force — the log's silence means abort — unless an in-doubt record precedes it.)
   */
  async #forceEnd(tx: LiveTransaction, outcome: Decision): Promise<void> {
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
}

/**
 * One-phase commit fits a transaction the client did not keep from it, of exactly one branch
 * whose store can commit in one step and tell the outcome afterwards, and may now (asked
 * once after a restart; the machine checks the branch count again).
 */
export async function onePhaseFits(tx: LiveTransaction, registry: ParticipantRegistry): Promise<boolean> {
  if (!tx.onePhaseAllowed || tx.branches.size !== 1) return false;
  const [branch] = tx.branches.values();
  if (branch === undefined || branch.prepareSent) return false;
  const adapter = registry.adapter(branch.participant);
  if (adapter.commitOnePhase === undefined || adapter.onePhaseOutcome === undefined) return false;
  return (await adapter.onePhaseUsable?.()) ?? true;
}
