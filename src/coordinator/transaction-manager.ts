/**
 * Takes client requests on transactions — begin, enlist work, prepare, commit,
 * abort, or all of it in one request — and hands the protocol to the
 * TransactionDriver. Who may begin is transaction-admission.ts's; the live
 * transactions and the lookups that fall through to the log are
 * transaction-table.ts's; recovery's resumption is resume.ts's.
 *
 * Client requests on one transaction run one at a time (its mutex). In a
 * one-request transaction that commits, a branch whose store can prepare without
 * a forced record first is prepared as soon as its work has run, or in the same
 * round trip as its work: voting follows the work immediately anyway.
 */

import type { Logger } from 'pino';
import { CoordinatorError, errorMessage } from '../errors.js';
import { isTerminal } from '../protocol/commit-protocol.js';
import type { BackoffPolicy } from './backoff.js';
import type { CoordinatorLog } from './coordinator-log.js';
import { BranchWork, type EnlistAnswer, type EnlistRequest, type PlannedWork } from './branch-work.js';
import { prepareIntentRecord } from './journal.js';
import { invalidState, type LiveBranch, type LiveTransaction, type TransactionView } from './live-transaction.js';
import { onePhaseFits } from './one-phase-commit.js';
import { forgetBranch, resolveOnePhase, retryDelivery, type OperatorActionDeps } from './operator-actions.js';
import type { ParticipantRegistry } from './participant-registry.js';
import { resumeUnfinished } from './resume.js';
import type { TokenQuotaOptions } from './token-quotas.js';
import { TransactionAdmission, type BeginRequest } from './transaction-admission.js';
import type { ListFilter, ListPage } from './transaction-listing.js';
import { TransactionDriver } from './transaction-driver.js';
import { drainTransactions } from './transaction-drain.js';
import { TransactionTable } from './transaction-table.js';

export interface TransactionManagerOptions {
  readonly coordinatorId: string;
  readonly defaultTimeoutMs: number;
  readonly maxTimeoutMs: number;
  readonly maxActiveTransactions: number;
  /** Fair use per API token (requests that name an owner). */
  readonly tokenQuotas: TokenQuotaOptions;
  readonly commitWaitMs: number;
  /** Upper bound for a prepare round; every adapter call is bounded well below it. */
  readonly prepareWaitMs: number;
  readonly retry: BackoffPolicy;
  /** False once this instance may no longer hold the coordinator id (a shared log's lease). */
  readonly leaseHeld?: () => boolean;
}

export type { EnlistAnswer, EnlistRequest } from './branch-work.js';
export type { BeginRequest } from './transaction-admission.js';

export interface RunRequest extends BeginRequest {
  readonly branches: readonly EnlistRequest[];
  readonly commit: boolean;
  /** Run the work of different branches at once, not in request order (no cross-store lock order). */
  readonly parallel?: boolean;
}

export interface RunAnswer {
  readonly view: TransactionView;
  /** The answer of each branch that ran, in request order (up to the first that failed). */
  readonly results: readonly EnlistAnswer[];
  /** Set when the work of a branch failed and the transaction was aborted because of it. */
  readonly failure?: CoordinatorError;
}

export class TransactionManager {
  readonly #table: TransactionTable;
  readonly #admission: TransactionAdmission;
  readonly #log: CoordinatorLog;
  readonly #registry: ParticipantRegistry;
  readonly #options: TransactionManagerOptions;
  readonly #logger: Logger;
  readonly #stopping = new AbortController();
  readonly #driver: TransactionDriver;
  readonly #work: BranchWork;

  constructor(log: CoordinatorLog, registry: ParticipantRegistry, options: TransactionManagerOptions, logger: Logger) {
    this.#log = log;
    this.#registry = registry;
    this.#options = options;
    this.#logger = logger;
    this.#table = new TransactionTable(log, options.coordinatorId);
    this.#admission = new TransactionAdmission(options, log);
    this.#driver = new TransactionDriver({
      log,
      registry,
      retry: options.retry,
      logger,
      stopping: this.#stopping.signal,
      ...(options.leaseHeld === undefined ? {} : { leaseHeld: options.leaseHeld }),
      hooks: {
        decided: (tx) => this.#admission.settled(tx),
        ended: (tx) => {
          this.#admission.settled(tx);
          this.#table.remove(tx.id);
        },
      },
    });
    this.#work = new BranchWork({ registry, driver: this.#driver, coordinatorId: options.coordinatorId });
  }

  // ---- client requests ------------------------------------------------------------------

  begin(request: BeginRequest): TransactionView {
    return this.#begin(request).view();
  }

  #begin(request: BeginRequest): LiveTransaction {
    // Nothing is logged yet: until a prepare-intent or decision record, the log's silence means abort.
    const tx = this.#admission.admit(request);
    this.#table.add(tx);
    tx.timer = setTimeout(() => void this.#driver.onTimeout(tx), tx.timeoutMs);
    tx.timer.unref();
    return tx;
  }

  async enlist(id: string, request: EnlistRequest): Promise<EnlistAnswer> {
    const tx = this.#table.live(id) ?? (await this.#table.notLive(id, 'enlist'));
    return tx.lock.run(async () => {
      if (tx.state.phase !== 'active') throw invalidState(tx, 'enlist a branch in');
      this.#admission.assertAcceptingWork(tx);
      const [planned] = this.#work.plan(tx, [request], false);
      try {
        return await this.#work.runWork(tx, planned!);
      } catch (err) {
        throw await this.#abortAfterFailedWork(tx, planned!.branch, err);
      }
    });
  }

  /**
   * A whole transaction in one request: begin, every branch's work, and (if asked) the commit.
   *
   * By default the work runs in request order, one entry after the other, so that a client
   * that lists its participants in a consistent order never deadlocks across databases; with
   * `parallel` the work of different branches runs at once. When the commit follows, a branch
   * whose store can be prepared without a forced record first is prepared as soon as its work
   * has run (while later work runs), or in the same round trip as its last entry.
   */
  async run(request: RunRequest): Promise<RunAnswer> {
    const tx = this.#begin(request);
    return tx.lock.run(async () => {
      let planned: PlannedWork[];
      try {
        planned = this.#work.plan(tx, request.branches, request.commit);
      } catch (err) {
        await this.#abortAndSettle(tx, `the request was refused: ${errorMessage(err)}`);
        throw err;
      }
      // A lone branch whose store commits in one step does so right after its work: nothing
      // to prepare, nothing to force.
      if (request.commit && (await onePhaseFits(tx, this.#registry))) {
        for (const p of planned) {
          p.onePhaseFollows = p.prepareAfter;
          p.prepareAfter = false;
        }
      }
      // With the commit to follow and a branch recovery cannot find on its participant, the
      // prepare-intent goes first: every branch prepared early is then one the log knows too.
      if (request.commit) {
        try {
          await this.#makeEnlistmentsDurable(tx);
        } catch (err) {
          await this.#abortAndSettle(tx, `the commit was refused: ${errorMessage(err)}`);
          throw err;
        }
      }
      const ran = request.parallel === true ? await this.#work.runAtOnce(tx, planned) : await this.#work.runInOrder(tx, planned);
      const { results } = ran;
      if (ran.failed !== undefined) {
        // Prepares already on their way finish first: their branches then hear the abort.
        await Promise.all(planned.map((p) => p.branch.earlyPrepare));
        const error = await this.#abortAfterFailedWork(tx, ran.failed.branch, ran.error);
        if (!request.commit || error.code !== 'OPERATION_FAILED') throw error;
        return answered(tx.view(), results, error);
      }
      if (!request.commit) return answered(tx.view(), results);
      try {
        return answered(await this.#commitLocked(tx), results);
      } catch (err) {
        // Refused before a decision (the log failed, the coordinator is stopping): branches may
        // already be prepared, and nobody will ask again for this request's transaction.
        if (tx.state.decision === undefined && !isTerminal(tx.state.phase)) await this.#abortAndSettle(tx, `the commit was refused: ${errorMessage(err)}`);
        throw withCurrentState(err, tx);
      }
    });
  }

  /** Aborts a transaction nobody will ask about again, and waits (bounded) until its branches heard it. */
  async #abortAndSettle(tx: LiveTransaction, reason: string): Promise<void> {
    this.#driver.apply(tx, { type: 'abort', reason });
    await tx.waitUntil(() => isTerminal(tx.state.phase), this.#options.commitWaitMs);
  }

  /** The work of a branch failed: the transaction aborts, and the error says why. */
  async #abortAfterFailedWork(tx: LiveTransaction, branch: LiveBranch, err: unknown): Promise<CoordinatorError> {
    const cancelled = tx.cancelWork.signal.aborted ? errorMessage(tx.cancelWork.signal.reason) : undefined;
    const reason = cancelled ?? `branch ${branch.branchId} on ${branch.participant} failed: ${errorMessage(err)}`;
    await this.#abortAndSettle(tx, reason);
    const code = err instanceof CoordinatorError ? err.code : 'OPERATION_FAILED';
    const retryAfterSeconds = err instanceof CoordinatorError ? err.retryAfterSeconds : undefined;
    return new CoordinatorError(code, errorMessage(err), {
      cause: err,
      details: { ...(err instanceof CoordinatorError ? err.details : {}), transactionId: tx.id, state: tx.state.phase, reason },
      ...(retryAfterSeconds === undefined ? {} : { retryAfterSeconds }),
    });
  }

  async prepare(id: string): Promise<TransactionView> {
    const tx = this.#table.live(id) ?? (await this.#table.notLive(id, 'prepare'));
    return tx.lock.run(async () => {
      if (tx.state.phase === 'active') {
        this.#admission.assertAcceptingWork(tx);
        await this.#makeEnlistmentsDurable(tx);
        this.#driver.apply(tx, { type: 'prepare' });
      } else if (tx.state.phase !== 'preparing' && tx.state.phase !== 'prepared') {
        throw invalidState(tx, 'prepare');
      }
      await tx.waitUntil(() => tx.state.phase !== 'preparing', this.#options.prepareWaitMs);
      return this.#viewOrLogFailure(tx);
    });
  }

  async commit(id: string): Promise<TransactionView> {
    const tx = this.#table.live(id);
    if (tx === undefined) return this.#table.finished(id, 'commit');
    return tx.lock.run(() => this.#commitLocked(tx));
  }

  async #commitLocked(tx: LiveTransaction): Promise<TransactionView> {
    const fits = tx.state.phase === 'active' && (await onePhaseFits(tx, this.#registry));
    const phase = tx.state.phase;
    if (phase === 'active' || phase === 'preparing' || phase === 'prepared') {
      this.#admission.assertAcceptingWork(tx);
      const onePhase = phase === 'active' && fits;
      if (phase === 'active' && !onePhase) await this.#makeEnlistmentsDurable(tx);
      this.#driver.apply(tx, { type: 'commit', onePhase });
    } else if (tx.state.decision !== 'commit' || tx.logFailure !== undefined) {
      return this.#viewOrLogFailure(tx);
    }
    // Votes (bounded by the participants' own deadlines), then the forced decision, then up to
    // commitWaitMs for acknowledgements; past that the answer is 202 and delivery goes on.
    const decided = (): boolean => tx.logFailure !== undefined || (tx.state.phase !== 'preparing' && tx.state.phase !== 'deciding');
    await tx.waitUntil(decided, this.#options.prepareWaitMs);
    await tx.waitUntil(() => isTerminal(tx.state.phase) || tx.logFailure !== undefined, this.#options.commitWaitMs);
    return this.#viewOrLogFailure(tx);
  }

  async abort(id: string, reason = 'aborted by the client'): Promise<TransactionView> {
    const tx = this.#table.live(id);
    if (tx === undefined) return this.#table.finished(id, 'abort');
    if (tx.state.decision === undefined) tx.cancelWork.abort(new Error(reason));
    return tx.lock.run(async () => {
      if (tx.state.decision === 'commit' && tx.state.phase !== 'deciding') throw invalidState(tx, 'abort');
      this.#driver.apply(tx, { type: 'abort', reason });
      // Like a commit: outstanding prepares answer first (bounded), then up to commitWaitMs for
      // the acknowledgements; past that the answer says `aborting` and delivery goes on.
      await tx.waitUntil(() => tx.state.phase !== 'preparing' && tx.state.phase !== 'deciding', this.#options.prepareWaitMs);
      await tx.waitUntil(() => isTerminal(tx.state.phase) || tx.logFailure !== undefined, this.#options.commitWaitMs);
      return tx.view();
    });
  }

  get(id: string): Promise<TransactionView> {
    return this.#table.view(id);
  }

  /** A page of transactions, newest first: running ones and finished ones within retention. */
  list(filter: ListFilter): ListPage {
    return this.#table.list(filter);
  }

  /** True while the transaction runs here (or is being finished after a restart). */
  isLive(id: string): boolean {
    return this.#table.has(id);
  }

  inDoubtCount(): number {
    return this.#table.inDoubtCount();
  }

  activeCount(): number {
    return this.#admission.openCount;
  }

  liveCount(): number {
    return this.#table.size;
  }

  /** True while the participant has a branch in a transaction that has not ended. */
  participantInUse(name: string): Promise<boolean> {
    return this.#table.participantInUse(name);
  }

  /** True when a running (or resumed) transaction drives the branch with this gid itself. */
  ownsBranch(transactionId: string, gid: string): boolean {
    return this.#table.ownsBranch(transactionId, gid);
  }

  /** Operator's "retry now" (operator-actions.ts). */
  async retryNow(id: string): Promise<TransactionView> {
    const tx = this.#table.live(id);
    if (tx === undefined) {
      await this.get(id); // 404 when unknown
      throw new CoordinatorError('INVALID_STATE_TRANSITION', `transaction ${id} has ended; there is nothing to retry`);
    }
    return retryDelivery(tx, this.#operatorDeps());
  }

  /** Operator's way out for a participant gone for good (operator-actions.ts). */
  async forgetBranch(id: string, branchId: string, request: { reason: string; actor: string }): Promise<TransactionView> {
    const tx = this.#table.live(id) ?? (await this.#table.notLive(id, 'forget a branch of'));
    return forgetBranch(tx, branchId, request, this.#operatorDeps());
  }

  /**
   * An operator's resolution of a branch's gid, when it is the lone branch of a one-phase
   * commit in doubt here (operator-actions.ts); undefined for any other gid.
   */
  async resolveOnePhaseByHand(
    participant: string,
    transactionId: string,
    gid: string,
    request: { outcome: 'commit' | 'abort'; reason: string; actor: string },
  ): Promise<{ outcome: 'commit' | 'abort'; at: string } | undefined> {
    const tx = this.#table.live(transactionId);
    const branch = tx === undefined ? undefined : [...tx.branches.values()].find((b) => b.gid === gid && b.participant === participant);
    if (tx === undefined || branch === undefined || !tx.onePhase) return undefined;
    return resolveOnePhase(tx, branch, request, this.#operatorDeps());
  }

  #operatorDeps(): OperatorActionDeps {
    return { log: this.#log, driver: this.#driver, logger: this.#logger, commitWaitMs: this.#options.commitWaitMs, assertAcceptingWork: (tx) => this.#admission.assertAcceptingWork(tx) };
  }

  // ---- recovery -------------------------------------------------------------------------

  /**
   * Re-drives every transaction the log saw start but not end: those with a commit
   * decision are committed, the rest (presumed abort) rolled back.
   */
  resumeUnfinished(): Promise<number> {
    return resumeUnfinished({ log: this.#log, table: this.#table, driver: this.#driver, logger: this.#logger, coordinatorId: this.#options.coordinatorId });
  }

  // ---- shutdown -------------------------------------------------------------------------

  /** Stops at once without another word to anyone: the lease passed to another instance. */
  halt(): void {
    this.#admission.stopAccepting();
    this.#stopping.abort();
    for (const tx of this.#table.all()) clearTimeout(tx.timer);
  }

  /** Stops taking new work; waits up to `deadlineMs` for the live transactions (transaction-drain.ts). */
  async drain(deadlineMs: number): Promise<void> {
    this.#admission.stopAccepting();
    await drainTransactions({ table: this.#table, abort: (id, reason) => this.abort(id, reason), driver: this.#driver }, deadlineMs);
    this.#stopping.abort();
    for (const tx of this.#table.all()) clearTimeout(tx.timer);
  }

  // ---- helpers --------------------------------------------------------------------------

  /** Before any prepare leaves, the branches recovery cannot find by itself must be durable. */
  async #makeEnlistmentsDurable(tx: LiveTransaction): Promise<void> {
    if (tx.intentLoggedFor === tx.branches.size) return; // no branch added since it was forced
    const unlisted = [...tx.branches.values()].some((b) => !this.#registry.adapter(b.participant).listsPreparedBranches);
    if (!unlisted) return;
    await this.#log.force(prepareIntentRecord(tx));
    tx.intentLoggedFor = tx.branches.size;
  }

  #viewOrLogFailure(tx: LiveTransaction): TransactionView {
    const view = tx.view();
    if (tx.logFailure !== undefined) {
      const what = tx.onePhase
        ? `the one-phase commit (the database's outcome: ${view.state}) could not be recorded in the coordinator's log`
        : 'the commit decision could not be made durable';
      throw new CoordinatorError('LOG_UNAVAILABLE', `${what}: ${tx.logFailure.message}`, {
        details: { transactionId: tx.id, state: view.state },
      });
    }
    return view;
  }
}

/** An error that names the transaction's state, restated with the state it has now (after an abort). */
function withCurrentState(err: unknown, tx: LiveTransaction): unknown {
  if (!(err instanceof CoordinatorError) || typeof err.details?.state !== 'string') return err;
  return new CoordinatorError(err.code, err.message, {
    cause: err.cause,
    details: { ...err.details, state: tx.view().state },
    ...(err.retryAfterSeconds === undefined ? {} : { retryAfterSeconds: err.retryAfterSeconds }),
  });
}

/** A one-request answer: each branch's result carries the state the transaction ended the request in. */
function answered(view: TransactionView, results: readonly EnlistAnswer[], failure?: CoordinatorError): RunAnswer {
  const settled = results.map((r) => ({ ...r, state: view.state }));
  return failure === undefined ? { view, results: settled } : { view, results: settled, failure };
}

