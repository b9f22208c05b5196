/**
 * Recovery's first step: a transaction the log saw start but not end becomes a
 * live transaction again, at the point its durable records put it. A commit
 * decision (or a durable 3PC pre-commit, which means commit) resumes in phase
 * 2 with commit; anything else resumes as an abort (presumed abort). Phase 2
 * goes to every branch again — delivery is idempotent, so a branch that had
 * already acknowledged before the crash just acknowledges once more. A
 * one-phase commit whose answer was lost resumes asking its store what it did.
 */

import type { Logger } from 'pino';
import type { DurableTransaction } from '../log/log-records.js';
import { events } from '../observability/events.js';
import type { Decision, TwoPhaseState } from '../protocol/commit-protocol.js';
import type { CoordinatorLog } from './coordinator-log.js';
import { LiveTransaction } from './live-transaction.js';
import { byHand } from './operator-actions.js';
import type { TransactionDriver } from './transaction-driver.js';
import type { TransactionTable } from './transaction-table.js';

export const PRESUMED_ABORT = 'presumed abort: the log holds no commit decision for this transaction';

export interface ResumeDeps {
  readonly log: CoordinatorLog;
  readonly table: TransactionTable;
  readonly driver: TransactionDriver;
  readonly logger: Logger;
  readonly coordinatorId: string;
}

/**
 * Re-drives every transaction the log saw start but not end and that does not run here yet:
 * those with a commit decision are committed, the rest (presumed abort) rolled back, a lost
 * one-phase answer asked for again. Returns how many it resumed.
 */
export async function resumeUnfinished(deps: ResumeDeps): Promise<number> {
  const { log, table, driver, logger } = deps;
  let resumed = 0;
  for (const durable of await log.unfinished()) {
    if (table.has(durable.id)) continue;
    const { tx, decision } = resumedTransaction(durable);
    tx.resumed = true;
    if (decision === 'one-phase') {
      // Resolved by hand before the restart, its end record lost: the operator's word stands
      // (set before anyone can reach the transaction).
      const logged = await log.manualResolution(deps.coordinatorId, tx.id);
      if (logged !== undefined) tx.onePhaseResolution = byHand(logged);
      if (table.has(durable.id)) continue;
    }
    table.add(tx);
    logger.info({ txId: tx.id, decision, branches: durable.branches.length }, 'recovery: resuming transaction');
    if (decision === 'one-phase') {
      void driver.resumeOnePhase(tx);
    } else {
      if (events.transactionResumed.active) events.transactionResumed.publish({ decision: decision === 'abort' ? 'abort' : 'commit' });
      driver.applyInternal(tx, { type: 'decision-durable', decision });
    }
    resumed++;
  }
  return resumed;
}

/**
 * The live transaction for an unfinished durable one, and the decision its driver must now
 * carry out ('one-phase': ask the store).
 */
export function resumedTransaction(durable: DurableTransaction): { tx: LiveTransaction; decision: Decision | 'one-phase' } {
  // ("unknown" only for transactions the sweep ended, which are never unfinished.)
  const protocol = durable.protocol === '3pc' ? '3pc' : '2pc';
  const tx = new LiveTransaction({ id: durable.id, protocol, timeoutMs: durable.timeoutMs, createdAt: durable.createdAt });
  const [only] = durable.branches;
  if (durable.onePhaseInDoubt !== undefined && durable.branches.length === 1 && only !== undefined) {
    resumeOnePhaseInto(tx, only, durable.onePhaseInDoubt);
    return { tx, decision: 'one-phase' };
  }
  const decision: Decision = durable.decision === 'commit' || durable.decision === 'precommit' ? 'commit' : 'abort';
  const reason = durable.reason ?? PRESUMED_ABORT;
  const is3pc = protocol === '3pc';
  const pending = decision === 'commit' && is3pc ? 'precommitted' : 'prepared';
  const branches: Record<string, { phase: TwoPhaseState['branches'][string]['phase'] }> = {};
  for (const b of durable.branches) {
    const branchNo = Number(b.branchId.replace(/^b/, ''));
    if (Number.isInteger(branchNo) && branchNo >= tx.nextBranchNo) tx.nextBranchNo = branchNo + 1;
    tx.branches.set(b.branchId, {
      branchId: b.branchId,
      participant: b.participant,
      kind: b.kind,
      gid: b.gid,
      prepareSent: true,
      attempts: 0,
      ...(b.payload === undefined ? {} : { payload: b.payload }),
      ...(b.vote === undefined ? {} : { vote: b.vote }),
    });
    // Logs of earlier versions record acknowledgements: those branches are done.
    const done = b.ackedAt !== undefined;
    branches[b.branchId] = {
      phase: b.vote === 'read-only' ? 'read-only' : done ? (decision === 'commit' ? 'committed' : 'aborted') : pending,
    };
  }
  tx.state = {
    protocol,
    // 3PC resumes as if every pre-commit was acknowledged: commit goes to every branch.
    phase: decision === 'commit' && is3pc ? 'precommitted' : 'deciding',
    branches,
    commitRequested: decision === 'commit',
    decision,
    abortReason: decision === 'abort' ? reason : undefined,
  };
  tx.decidedAt = durable.decidedAt ?? new Date().toISOString();
  return { tx, decision };
}

/** A one-phase commit whose answer was lost: its lone branch, still in the store's hands, and the evidence to ask with. */
function resumeOnePhaseInto(tx: LiveTransaction, b: DurableTransaction['branches'][number], inDoubt: NonNullable<DurableTransaction['onePhaseInDoubt']>): void {
  tx.nextBranchNo = 2;
  tx.branches.set(b.branchId, { branchId: b.branchId, participant: b.participant, kind: b.kind, gid: b.gid, prepareSent: false, attempts: 1, lastError: inDoubt.reason });
  tx.onePhase = true;
  tx.onePhaseEvidence = inDoubt.evidence;
  tx.onePhaseInDoubtLogged = true;
  tx.state = {
    protocol: tx.protocol,
    phase: 'one-phase',
    branches: { [b.branchId]: { phase: 'active' } },
    commitRequested: true,
    decision: undefined,
    abortReason: undefined,
  };
}
