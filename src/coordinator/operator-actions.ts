/**
 * What an operator may do to a running transaction beyond the client's requests: retry its
 * pending deliveries now, or give up on a branch whose participant is gone for good. The
 * transaction manager finds the transaction; these act on it.
 */

import type { Logger } from 'pino';
import { CoordinatorError } from '../errors.js';
import { awaitingDelivery, isTerminal } from '../protocol/commit-protocol.js';
import type { CoordinatorLog } from './coordinator-log.js';
import { branchForgottenRecord } from './journal.js';
import { invalidState, type LiveBranch, type LiveTransaction, type TransactionView } from './live-transaction.js';
import type { TransactionDriver } from './transaction-driver.js';

export interface OperatorActionDeps {
  readonly log: CoordinatorLog;
  readonly driver: TransactionDriver;
  readonly logger: Logger;
  readonly commitWaitMs: number;
  /** Throws unless this coordinator takes new work (not stopping, lease held, log healthy). */
  assertAcceptingWork(tx: LiveTransaction): void;
}

/**
 * "Retry now": every pending phase-2 delivery of an in-doubt transaction retries at once (a
 * one-phase commit whose answer was lost asks its store again), and the answer is the state
 * after that attempt (bounded by TCX_COMMIT_WAIT_MS).
 */
export async function retryDelivery(tx: LiveTransaction, deps: OperatorActionDeps): Promise<TransactionView> {
  if (!tx.inDoubt) throw invalidState(tx, 'retry delivery of');
  const before = new Map([...tx.branches.values()].map((b) => [b.branchId, b.finishedAttempts]));
  tx.wakeUp();
  deps.logger.info({ txId: tx.id }, 'operator: retry now');
  const pending = (): readonly string[] => (tx.state.phase === 'one-phase' ? [...tx.branches.keys()] : awaitingDelivery(tx.state));
  const attempted = (): boolean =>
    isTerminal(tx.state.phase) || pending().every((id) => (tx.branches.get(id)?.finishedAttempts ?? 0) > (before.get(id) ?? 0));
  await tx.waitUntil(attempted, deps.commitWaitMs);
  return tx.view();
}

/**
 * The way out for a participant gone for good: gives up on one branch of an aborting
 * transaction. Never under a commit decision (a prepared branch of a committed transaction
 * must commit: the participant has to come back). Forced to the log with the reason and who
 * asked before it takes effect; the branch then counts as acknowledged, so the transaction can
 * end and the participant can be removed.
 */
export function forgetBranch(tx: LiveTransaction, branchId: string, request: { reason: string; actor: string }, deps: OperatorActionDeps): Promise<TransactionView> {
  const id = tx.id;
  return tx.lock.run(async () => {
    deps.assertAcceptingWork(tx);
    const branch = tx.branches.get(branchId);
    if (branch === undefined) throw new CoordinatorError('UNKNOWN_BRANCH', `transaction ${id} has no branch ${branchId}`);
    if (tx.state.decision === 'commit') {
      throw new CoordinatorError('RESOLUTION_CONTRADICTS_LOG', `transaction ${id} has a commit decision: ${branchId} must commit once ${branch.participant} is back`, {
        details: { logged: 'commit' },
      });
    }
    if (tx.state.phase !== 'aborting') {
      throw new CoordinatorError('INVALID_STATE_TRANSITION', `transaction ${id} is ${tx.state.phase}: only a branch of an aborting transaction can be forgotten (abort it first)`, {
        details: { transactionId: id, state: tx.state.phase },
      });
    }
    if (!awaitingDelivery(tx.state).includes(branchId)) {
      throw new CoordinatorError('INVALID_STATE_TRANSITION', `branch ${branchId} of transaction ${id} has already acknowledged the abort`, {
        details: { transactionId: id, state: tx.state.phase },
      });
    }
    const audit = { reason: request.reason, actor: request.actor, at: new Date().toISOString() };
    await deps.log.force(branchForgottenRecord(tx, branch, audit));
    deps.driver.forget(tx, branchId, audit);
    deps.logger.warn({ txId: id, branchId, participant: branch.participant, reason: audit.reason, actor: audit.actor }, 'operator: branch forgotten');
    return tx.view();
  });
}

/** An operator's resolution as the one-phase commit in doubt takes it (from the request, or from the log after a restart). */
export function byHand(resolution: { outcome: 'commit' | 'abort'; reason: string; actor: string }): NonNullable<LiveTransaction['onePhaseResolution']> {
  return { outcome: resolution.outcome, reason: `resolved by hand (${resolution.actor}): ${resolution.reason}` };
}

/**
 * An operator's word on a one-phase commit in doubt that its store cannot settle (it
 * restarted and may have reused the transaction id, say): forced to the log (the audit
 * trail) before it takes effect. The store is asked once more; only if it still cannot tell
 * does the transaction end with the operator's outcome (the store's own answer wins).
 */
export async function resolveOnePhase(
  tx: LiveTransaction,
  branch: LiveBranch,
  request: { outcome: 'commit' | 'abort'; reason: string; actor: string },
  deps: OperatorActionDeps,
): Promise<{ outcome: 'commit' | 'abort'; at: string }> {
  const at = new Date().toISOString();
  await tx.lock.run(async () => {
    deps.assertAcceptingWork(tx);
    const earlier = tx.onePhaseResolution;
    if (earlier !== undefined && earlier.outcome !== request.outcome) {
      throw new CoordinatorError('RESOLUTION_CONTRADICTS_LOG', `transaction ${tx.id} was already resolved to ${earlier.outcome} by hand`, {
        details: { logged: `manual ${earlier.outcome}` },
      });
    }
    if (tx.state.phase !== 'one-phase' || !tx.inDoubt) {
      throw new CoordinatorError('INVALID_STATE_TRANSITION', `transaction ${tx.id} is ${tx.state.phase}${tx.inDoubt ? '' : ' and not in doubt'}: nothing to resolve by hand`, {
        details: { transactionId: tx.id, state: tx.state.phase },
      });
    }
    if (earlier !== undefined) return; // the same resolution again: recorded already
    await deps.log.force({
      t: 'manual-resolution',
      gid: branch.gid,
      transactionId: tx.id,
      participant: branch.participant,
      outcome: request.outcome,
      reason: request.reason,
      actor: request.actor,
      at,
    });
    tx.onePhaseResolution = byHand(request);
    deps.logger.warn({ txId: tx.id, gid: branch.gid, participant: branch.participant, outcome: request.outcome, reason: request.reason, actor: request.actor }, 'operator: one-phase commit resolved by hand');
  });
  tx.wakeUp();
  await tx.waitUntil(() => isTerminal(tx.state.phase), deps.commitWaitMs);
  const outcome = isTerminal(tx.state.phase) ? tx.state.decision : undefined;
  if (outcome === undefined) {
    // An attempt to ask the store is still under way (its answer wins): not ended yet.
    throw new CoordinatorError('PARTICIPANT_UNREACHABLE', `resolution recorded; ${branch.participant} is asked once more before it takes effect: GET /v1/transactions/${tx.id} for the outcome`);
  }
  return { outcome, at };
}
