/**
 * How the API answers a transaction's state after a prepare or commit request:
 *
 *   200  final: prepared, committed (or read-only everywhere)
 *   202  not final yet: still preparing or deciding, or decided and being
 *        delivered (precommitted, committing) — delivery goes on by itself —
 *        or a one-phase commit whose outcome the store has not told yet
 *   409  aborted, or aborting: the body says why (TRANSACTION_ABORTED)
 */

import type { TransactionView } from '../coordinator/live-transaction.js';

const NOT_FINAL: ReadonlySet<string> = new Set(['precommitted', 'committing', 'preparing', 'deciding', 'one-phase']);

export function statusOf(view: TransactionView): number {
  if (view.state === 'aborted' || view.state === 'aborting') return 409;
  return NOT_FINAL.has(view.state) ? 202 : 200;
}

/** A commit or prepare that ended in abort answers 409 with the reason, and still carries `state`. */
export function outcomeBody(view: TransactionView): Record<string, unknown> {
  if (statusOf(view) !== 409) return { ...view };
  return { ...view, error: { code: 'TRANSACTION_ABORTED', message: view.reason ?? 'the transaction was aborted' } };
}
