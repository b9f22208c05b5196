/**
 * The transactions running here (or being finished after a restart), by id,
 * and the questions about a transaction that fall through to the log once it
 * has left memory: its view, why a request cannot apply to it, whether a
 * participant or a gid is still in use.
 */

import { CoordinatorError } from '../errors.js';
import type { CoordinatorLog } from './coordinator-log.js';
import { durableView, type LiveTransaction, type TransactionView } from './live-transaction.js';
import { listTransactions, type ListFilter, type ListPage } from './transaction-listing.js';

export class TransactionTable {
  readonly #live = new Map<string, LiveTransaction>();
  readonly #log: CoordinatorLog;
  readonly #coordinatorId: string;

  constructor(log: CoordinatorLog, coordinatorId: string) {
    this.#log = log;
    this.#coordinatorId = coordinatorId;
  }

  live(id: string): LiveTransaction | undefined {
    return this.#live.get(id);
  }

  add(tx: LiveTransaction): void {
    this.#live.set(tx.id, tx);
  }

  remove(id: string): void {
    this.#live.delete(id);
  }

  /** True while the transaction runs here (or is being finished after a restart). */
  has(id: string): boolean {
    return this.#live.has(id);
  }

  /** A snapshot of the live transactions (safe to change the table while going through it). */
  all(): LiveTransaction[] {
    return [...this.#live.values()];
  }

  get size(): number {
    return this.#live.size;
  }

  /** The view of a live or finished transaction; 404 when the log does not know it either. */
  async view(id: string): Promise<TransactionView> {
    const live = this.#live.get(id);
    if (live !== undefined) return live.view();
    const durable = await this.#log.transaction(id);
    if (durable === undefined) {
      // The coordinator id tells a 3PC participant whether this "no record" (presumed abort)
      // comes from the coordinator that prepared it, or from another instance.
      throw new CoordinatorError('UNKNOWN_TRANSACTION', `no transaction ${id}`, { details: { coordinatorId: this.#coordinatorId } });
    }
    return durableView(durable, await this.#log.forgottenBranches(id));
  }

  /**
   * A commit or an abort of a transaction that is no longer live: the answer is where it
   * ended, except that a committed one cannot be aborted (409).
   */
  async finished(id: string, wanted: 'commit' | 'abort'): Promise<TransactionView> {
    const view = await this.view(id);
    if (view.state === 'committed' && wanted === 'abort') {
      throw new CoordinatorError('INVALID_STATE_TRANSITION', `transaction ${id} is committed and cannot be aborted`, {
        details: { transactionId: id, state: view.state },
      });
    }
    return view;
  }

  /** Throws why `what` cannot be done to a transaction that does not run here: unknown, or ended. */
  async notLive(id: string, what: string): Promise<never> {
    const durable = await this.#log.transaction(id);
    if (durable === undefined) throw new CoordinatorError('UNKNOWN_TRANSACTION', `no transaction ${id}`);
    const view = durableView(durable);
    throw new CoordinatorError('INVALID_STATE_TRANSITION', `cannot ${what} transaction ${id}: it is ${view.state}`, {
      details: { transactionId: id, state: view.state },
    });
  }

  /** A page of transactions, newest first: running ones and finished ones within retention. */
  list(filter: ListFilter): ListPage {
    return listTransactions(this.#live, this.#log.state, filter);
  }

  inDoubtCount(): number {
    let n = 0;
    for (const tx of this.#live.values()) if (tx.inDoubt) n++;
    return n;
  }

  /** True while the participant has a branch in a transaction that has not ended. */
  async participantInUse(name: string): Promise<boolean> {
    for (const tx of this.#live.values()) {
      for (const b of tx.branches.values()) if (b.participant === name) return true;
    }
    return (await this.#log.unfinished()).some((tx) => tx.branches.some((b) => b.participant === name));
  }

  /** True when a running (or resumed) transaction drives the branch with this gid itself. */
  ownsBranch(transactionId: string, gid: string): boolean {
    const tx = this.#live.get(transactionId);
    if (tx === undefined) return false;
    for (const b of tx.branches.values()) {
      if (b.gid !== gid) continue;
      // Driven only while its phase 2 is pending. A branch that voted no (a PREPARE that
      // broke, then landed late) or already finished is left to the sweep and the log.
      const phase = tx.state.branches[b.branchId]?.phase;
      return phase === 'active' || phase === 'preparing' || phase === 'prepared' || phase === 'precommitted';
    }
    return false;
  }
}
