/**
 * A graceful stop's wait for the live transactions, within one deadline: every undecided
 * transaction aborts at once (none waits for another, none past the deadline); phase 2 under
 * way gets until shortly before the deadline to be acknowledged; the rest of the time is kept
 * for one-phase COMMITs still unanswered, whose evidence is then forced while the log is open
 * so that recovery asks their stores after the restart. What is left unfinished, recovery
 * finishes.
 */

import { isTerminal } from '../protocol/commit-protocol.js';
import type { LiveTransaction } from './live-transaction.js';
import type { TransactionDriver } from './transaction-driver.js';
import type { TransactionTable } from './transaction-table.js';

export interface DrainDeps {
  readonly table: TransactionTable;
  /** The client's abort (it waits, bounded, for the branches to hear it). */
  readonly abort: (id: string, reason: string) => Promise<unknown>;
  readonly driver: TransactionDriver;
}

export async function drainTransactions(deps: DrainDeps, deadlineMs: number): Promise<void> {
  const deadline = Date.now() + deadlineMs;
  // Kept at the end for forcing the evidence of unanswered one-phase COMMITs.
  const phase2Deadline = deadline - Math.min(1_000, Math.floor(deadlineMs / 4));
  // A one-phase commit cannot be aborted: its COMMIT is with the store.
  const aborts = deps.table
    .all()
    .filter((tx) => tx.state.decision === undefined && tx.state.phase !== 'preparing' && tx.state.phase !== 'one-phase')
    .map((tx) => deps.abort(tx.id, 'coordinator shutting down').catch(() => undefined));
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([Promise.all(aborts), new Promise<void>((resolve) => (timer = setTimeout(resolve, Math.max(0, phase2Deadline - Date.now()))))]);
  clearTimeout(timer);
  await waitForEach(deps.table, (tx) => isTerminal(tx.state.phase), phase2Deadline);
  deps.driver.abandonOnePhaseAnswers();
  await waitForEach(deps.table, (tx) => tx.state.phase !== 'one-phase' || tx.onePhaseInDoubtLogged || tx.logFailure !== undefined, deadline);
}

/** Waits until `done` holds for every live transaction, or until `deadline` (epoch ms). */
async function waitForEach(table: TransactionTable, done: (tx: LiveTransaction) => boolean, deadline: number): Promise<void> {
  for (const tx of table.all()) {
    const left = deadline - Date.now();
    if (left <= 0) return;
    await tx.waitUntil(() => done(tx), left);
  }
}
