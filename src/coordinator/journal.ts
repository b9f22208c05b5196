/**
 * The journal: every log record a transaction writes is built here, and only
 * here. Under presumed abort (Mohan, Lindsay, Obermarck) a transaction needs
 * little of the log:
 *
 *   prepare-intent  forced before the first prepare leaves, and only when some
 *                   branch is one recovery cannot find on its participant (an
 *                   http service cannot be asked what it prepared): every
 *                   branch, with the payloads. Shares its fsync with every
 *                   concurrent force (group commit).
 *   decision        commit — 3PC: pre-commit — forced before the first commit
 *                   (pre-commit) message leaves: the branch list and the
 *                   transaction's summary, everything recovery needs (with the
 *                   work kept in the log when no intent record holds it). An abort
 *                   writes no decision: no record means abort. After a durable
 *                   3PC pre-commit the commit needs no record either.
 *   ended           never forced: the outcome, and for an abort the summary the
 *                   view of the finished transaction shows.
 *
 * A one-phase commit (a lone branch whose store commits in one step) writes only
 * its ended record, with the summary: the store decided, and nothing needs to be
 * durable before its COMMIT. That record is the transaction's only one, so for a
 * commit it takes the decision's place — forced, after the store committed and
 * before the client is answered, so that an answered commit is never forgotten.
 * A crash before it leaves the log silent: the store alone knows what it did. Should
 * the store's answer be lost, one-phase-in-doubt is forced first: the branch, and the
 * evidence the adapter needs to ask the store what it did (after a restart too).
 *
 * Acknowledgements are not logged: phase 2 is idempotent, so recovery simply
 * delivers the decision to every branch again.
 */

import { isoNow } from '../lib/iso-clock.js';
import type { BranchRecord, LogRecord, OnePhaseEvidence } from '../log/log-records.js';
import type { Decision, Verdict } from '../protocol/commit-protocol.js';
import type { ForgottenView, LiveBranch, LiveTransaction } from './live-transaction.js';

export function branchRecord(b: LiveBranch, options: { payload: boolean }): BranchRecord {
  return {
    branchId: b.branchId,
    participant: b.participant,
    kind: b.kind,
    gid: b.gid,
    ...(options.payload && b.payload !== undefined ? { payload: b.payload } : {}),
    ...(b.vote === undefined ? {} : { vote: b.vote }),
  };
}

/** The forced record that must precede the first prepare when some branch cannot be found by recovery on its participant. */
export function prepareIntentRecord(tx: LiveTransaction): LogRecord {
  return {
    t: 'prepare-intent',
    id: tx.id,
    protocol: tx.protocol,
    timeoutMs: tx.timeoutMs,
    createdAt: tx.createdAt,
    branches: [...tx.branches.values()].map((b) => branchRecord(b, { payload: true })),
    at: isoNow(),
  };
}

/**
 * The decision record for a verdict, or undefined when presumed abort needs none: an abort,
 * or the commit that follows a durable 3PC pre-commit. Work kept in the log (http payloads,
 * nats messages) is in it unless a prepare-intent record already holds every branch's: phase 2 after a
 * crash needs it (nats messages are published from it), and this record shares its fsync
 * with the decision itself.
 */
export function decisionRecord(tx: LiveTransaction, verdict: Verdict, at: string): LogRecord | undefined {
  if (verdict === 'abort') return undefined;
  if (verdict === 'commit' && tx.protocol === '3pc') return undefined;
  return {
    t: 'decision',
    id: tx.id,
    decision: verdict,
    protocol: tx.protocol,
    timeoutMs: tx.timeoutMs,
    createdAt: tx.createdAt,
    branches: [...tx.branches.values()].map((b) => branchRecord(b, { payload: tx.intentLoggedFor !== tx.branches.size })),
    at,
  };
}

export function endedRecord(tx: LiveTransaction, outcome: Decision): LogRecord {
  const at = isoNow();
  if (outcome === 'commit' && !tx.onePhase) return { t: 'ended', id: tx.id, outcome, at };
  const reason = outcome === 'abort' ? tx.state.abortReason : undefined;
  return {
    t: 'ended',
    id: tx.id,
    outcome,
    at,
    ...(tx.onePhase ? { onePhase: true as const } : {}),
    summary: {
      protocol: tx.protocol,
      timeoutMs: tx.timeoutMs,
      createdAt: tx.createdAt,
      branches: [...tx.branches.values()].map((b) => branchRecord(b, { payload: false })),
      ...(reason === undefined ? {} : { reason }),
    },
  };
}

/** A one-phase commit whose answer was lost: forced before the store is asked what it did. */
export function onePhaseInDoubtRecord(tx: LiveTransaction, branch: LiveBranch, evidence: OnePhaseEvidence, reason: string): LogRecord {
  return {
    t: 'one-phase-in-doubt',
    id: tx.id,
    protocol: tx.protocol,
    timeoutMs: tx.timeoutMs,
    createdAt: tx.createdAt,
    branch: branchRecord(branch, { payload: false }),
    evidence,
    reason,
    at: isoNow(),
  };
}

/**
 * What the recovery sweep records after rolling back prepared branches of a transaction the
 * log never heard of (a crash between PREPARE and the first record): the transaction ended
 * in abort, by presumption. Unforced, like every end record — should it be lost, the log
 * again knows nothing, which means the same. Clients asking for the transaction then learn
 * "aborted" and why, instead of "unknown".
 */
export function presumedAbortRecord(transactionId: string, branches: readonly BranchRecord[], at: string): LogRecord {
  const participants = [...new Set(branches.map((b) => b.participant))].join(', ');
  return {
    t: 'ended',
    id: transactionId,
    outcome: 'abort',
    at,
    summary: {
      protocol: 'unknown',
      timeoutMs: 0,
      createdAt: at,
      branches,
      reason: `presumed abort: prepared on ${participants} without a decision in the log; rolled back by the recovery sweep`,
    },
  };
}

/** An operator gave up on a branch of an aborting transaction (forced; the audit trail). */
export function branchForgottenRecord(tx: LiveTransaction, branch: LiveBranch, audit: ForgottenView): LogRecord {
  return { t: 'branch-forgotten', id: tx.id, branchId: branch.branchId, participant: branch.participant, gid: branch.gid, ...audit };
}
