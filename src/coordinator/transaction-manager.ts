/**
 * Takes client requests on transactions — begin, enlist work, prepare, commit,
 * abort, or all of it in one request — checks them, and hands the protocol to
 * the TransactionDriver. Holds the transactions that are running (or, after a
 * restart, being finished); finished ones live on in the log's DurableState.
 *
 * Client requests on one transaction run one at a time (its mutex). In a
 * one-request transaction that commits, a branch whose store can prepare without
 * a forced record first is prepared as soon as its work has run, or in the same
 * round trip as its work: voting follows the work immediately anyway.
 */

import { randomUUID } from 'node:crypto';
import type { Logger } from 'pino';
import { CoordinatorError, errorMessage } from '../errors.js';
import type { ProtocolName } from '../log/log-records.js';
import { initialState, isTerminal } from '../protocol/commit-protocol.js';
import type { BackoffPolicy } from './backoff.js';
import type { CoordinatorLog } from './coordinator-log.js';
import { BranchWork, type EnlistAnswer, type EnlistRequest, type PlannedWork } from './branch-work.js';
import { prepareIntentRecord } from './journal.js';
import { durableView, invalidState, LiveTransaction, type LiveBranch, type TransactionView } from './live-transaction.js';
import { byHand, forgetBranch, resolveOnePhase, retryDelivery, type OperatorActionDeps } from './operator-actions.js';
import type { ParticipantRegistry } from './participant-registry.js';
import { resumedTransaction } from './resume.js';
import { TokenQuotas, type TokenQuotaOptions } from './token-quotas.js';
import { listTransactions, type ListFilter, type ListPage } from './transaction-listing.js';
import { TransactionDriver } from './transaction-driver.js';
import { events } from '../observability/events.js';

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

export interface BeginRequest {
  readonly protocol?: ProtocolName;
  readonly timeoutMs?: number;
  /** Who begins it (a fingerprint of the API token): its quotas apply. */
  readonly owner?: string;
  /** False: never one-phase commit, even with a single branch (the full protocol and its forced decision). */
  readonly onePhase?: boolean;
}

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
  readonly #live = new Map<string, LiveTransaction>();
  /** Live transactions without a decision yet: what TCX_MAX_ACTIVE_TRANSACTIONS bounds. */
  readonly #undecided = new Set<LiveTransaction>();
  readonly #quotas: TokenQuotas;
  readonly #log: CoordinatorLog;
  readonly #registry: ParticipantRegistry;
  readonly #options: TransactionManagerOptions;
  readonly #logger: Logger;
  readonly #stopping = new AbortController();
  readonly #driver: TransactionDriver;
  readonly #work: BranchWork;
  #accepting = true;

  constructor(log: CoordinatorLog, registry: ParticipantRegistry, options: TransactionManagerOptions, logger: Logger) {
    this.#log = log;
    this.#registry = registry;
    this.#options = options;
    this.#logger = logger;
    this.#quotas = new TokenQuotas(options.tokenQuotas);
    this.#driver = new TransactionDriver({
      log,
      registry,
      retry: options.retry,
      logger,
      stopping: this.#stopping.signal,
      ...(options.leaseHeld === undefined ? {} : { leaseHeld: options.leaseHeld }),
      hooks: {
        decided: (tx) => this.#settled(tx),
        ended: (tx) => {
          this.#settled(tx);
          this.#live.delete(tx.id);
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
    this.#assertAcceptingWork();
    const protocol = request.protocol ?? '2pc';
    if (protocol !== '2pc' && protocol !== '3pc') throw new CoordinatorError('VALIDATION_FAILED', `protocol ${String(protocol)} is not supported`);
    const timeoutMs = request.timeoutMs ?? this.#options.defaultTimeoutMs;
    if (timeoutMs > this.#options.maxTimeoutMs) {
      throw new CoordinatorError('VALIDATION_FAILED', `timeoutMs must not exceed ${this.#options.maxTimeoutMs}`);
    }
    if (this.#undecided.size >= this.#options.maxActiveTransactions) {
      throw new CoordinatorError('TOO_MANY_TRANSACTIONS', `at most ${this.#options.maxActiveTransactions} transactions may be open at once`, {
        retryAfterSeconds: 1,
      });
    }
    if (request.owner !== undefined) this.#quotas.admit(request.owner);
    // Nothing is logged yet: until a prepare-intent or decision record, the log's silence means abort.
    const tx = new LiveTransaction({ id: randomUUID(), protocol, timeoutMs, createdAt: new Date().toISOString() });
    if (request.owner !== undefined) tx.owner = request.owner;
    if (request.onePhase === false) tx.onePhaseAllowed = false;
    tx.state = initialState(protocol);
    this.#live.set(tx.id, tx);
    this.#undecided.add(tx);
    tx.timer = setTimeout(() => void this.#driver.onTimeout(tx), timeoutMs);
    tx.timer.unref();
    return tx;
  }

  /** A transaction is decided (or ended): it no longer counts against the open-transaction limits. */
  #settled(tx: LiveTransaction): void {
    if (this.#undecided.delete(tx) && tx.owner !== undefined) this.#quotas.release(tx.owner);
  }

  async enlist(id: string, request: EnlistRequest): Promise<EnlistAnswer> {
    const tx = this.#live.get(id) ?? (await this.#notLive(id, 'enlist'));
    return tx.lock.run(async () => {
      if (tx.state.phase !== 'active') throw invalidState(tx, 'enlist a branch in');
      this.#assertAcceptingWork(tx);
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
      if (request.commit && this.#onePhaseFits(tx)) {
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
    const tx = this.#live.get(id) ?? (await this.#notLive(id, 'prepare'));
    return tx.lock.run(async () => {
      if (tx.state.phase === 'active') {
        this.#assertAcceptingWork(tx);
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
    const tx = this.#live.get(id);
    if (tx === undefined) return this.#finished(id, 'commit');
    return tx.lock.run(() => this.#commitLocked(tx));
  }

  async #commitLocked(tx: LiveTransaction): Promise<TransactionView> {
    const phase = tx.state.phase;
    if (phase === 'active' || phase === 'preparing' || phase === 'prepared') {
      this.#assertAcceptingWork(tx);
      const onePhase = phase === 'active' && this.#onePhaseFits(tx);
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
    const tx = this.#live.get(id);
    if (tx === undefined) return this.#finished(id, 'abort');
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

  async get(id: string): Promise<TransactionView> {
    const live = this.#live.get(id);
    if (live !== undefined) return live.view();
    const durable = await this.#log.transaction(id);
    if (durable === undefined) {
      // The coordinator id tells a 3PC participant whether this "no record" (presumed abort)
      // comes from the coordinator that prepared it, or from another instance.
      throw new CoordinatorError('UNKNOWN_TRANSACTION', `no transaction ${id}`, { details: { coordinatorId: this.#options.coordinatorId } });
    }
    return durableView(durable, await this.#log.forgottenBranches(id));
  }

  /** A page of transactions, newest first: running ones and finished ones within retention. */
  list(filter: ListFilter): ListPage {
    return listTransactions(this.#live, this.#log.state, filter);
  }

  /** True while the transaction runs here (or is being finished after a restart). */
  isLive(id: string): boolean {
    return this.#live.has(id);
  }

  inDoubtCount(): number {
    let n = 0;
    for (const tx of this.#live.values()) if (tx.inDoubt) n++;
    return n;
  }

  activeCount(): number {
    return this.#undecided.size;
  }

  liveCount(): number {
    return this.#live.size;
  }

  /** True while the participant has a branch in a transaction that has not ended. */
  async participantInUse(name: string): Promise<boolean> {
    for (const tx of this.#live.values()) {
      for (const b of tx.branches.values()) if (b.participant === name) return true;
    }
    return (await this.#log.unfinished()).some((tx) => tx.branches.some((b) => b.participant === name));
  }

  /** Operator's "retry now" (operator-actions.ts). */
  async retryNow(id: string): Promise<TransactionView> {
    const tx = this.#live.get(id);
    if (tx === undefined) {
      await this.get(id); // 404 when unknown
      throw new CoordinatorError('INVALID_STATE_TRANSITION', `transaction ${id} has ended; there is nothing to retry`);
    }
    return retryDelivery(tx, this.#operatorDeps());
  }

  /** Operator's way out for a participant gone for good (operator-actions.ts). */
  async forgetBranch(id: string, branchId: string, request: { reason: string; actor: string }): Promise<TransactionView> {
    const tx = this.#live.get(id) ?? (await this.#notLive(id, 'forget a branch of'));
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
    const tx = this.#live.get(transactionId);
    const branch = tx === undefined ? undefined : [...tx.branches.values()].find((b) => b.gid === gid && b.participant === participant);
    if (tx === undefined || branch === undefined || !tx.onePhase) return undefined;
    return resolveOnePhase(tx, branch, request, this.#operatorDeps());
  }

  #operatorDeps(): OperatorActionDeps {
    return { log: this.#log, driver: this.#driver, logger: this.#logger, commitWaitMs: this.#options.commitWaitMs, assertAcceptingWork: (tx) => this.#assertAcceptingWork(tx) };
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

  // ---- recovery -------------------------------------------------------------------------

  /**
   * Re-drives every transaction the log saw start but not end: those with a commit
   * decision are committed, the rest (presumed abort) rolled back.
   */
  async resumeUnfinished(): Promise<number> {
    let resumed = 0;
    for (const durable of await this.#log.unfinished()) {
      if (this.#live.has(durable.id)) continue;
      const { tx, decision } = resumedTransaction(durable);
      tx.resumed = true;
      if (decision === 'one-phase') {
        // Resolved by hand before the restart, its end record lost: the operator's word stands
        // (set before anyone can reach the transaction).
        const logged = await this.#log.manualResolution(this.#options.coordinatorId, tx.id);
        if (logged !== undefined) tx.onePhaseResolution = byHand(logged);
        if (this.#live.has(durable.id)) continue;
      }
      this.#live.set(tx.id, tx);
      this.#logger.info({ txId: tx.id, decision, branches: durable.branches.length }, 'recovery: resuming transaction');
      if (decision === 'one-phase') {
        void this.#driver.resumeOnePhase(tx);
      } else {
        if (events.transactionResumed.active) events.transactionResumed.publish({ decision: decision === 'abort' ? 'abort' : 'commit' });
        this.#driver.applyInternal(tx, { type: 'decision-durable', decision });
      }
      resumed++;
    }
    return resumed;
  }

  // ---- shutdown -------------------------------------------------------------------------

  /** Stops taking new work; waits up to `deadlineMs` for in-flight phase 2 to finish. */
  /** Stops at once without another word to anyone: the lease passed to another instance. */
  halt(): void {
    this.#accepting = false;
    this.#stopping.abort();
    for (const tx of this.#live.values()) clearTimeout(tx.timer);
  }

  async drain(deadlineMs: number): Promise<void> {
    this.#accepting = false;
    const deadline = Date.now() + deadlineMs;
    // Every undecided transaction aborts at once; none waits for another, and none past the deadline.
    const aborts = [...this.#live.values()]
      .filter((tx) => tx.state.decision === undefined && tx.state.phase !== 'preparing')
      .map((tx) => this.abort(tx.id, 'coordinator shutting down').catch(() => undefined));
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([Promise.all(aborts), new Promise<void>((resolve) => (timer = setTimeout(resolve, deadlineMs)))]);
    clearTimeout(timer);
    for (const tx of [...this.#live.values()]) {
      const left = deadline - Date.now();
      if (left <= 0) break;
      await tx.waitUntil(() => isTerminal(tx.state.phase), left);
    }
    this.#stopping.abort();
    for (const tx of this.#live.values()) clearTimeout(tx.timer);
  }

  // ---- helpers --------------------------------------------------------------------------

  /**
   * One-phase commit fits a transaction the client did not keep from it, of exactly one branch
   * whose store can commit in one step and tell the outcome afterwards (the machine checks
   * the branch count again).
   */
  #onePhaseFits(tx: LiveTransaction): boolean {
    if (!tx.onePhaseAllowed || tx.branches.size !== 1) return false;
    const [branch] = tx.branches.values();
    if (branch === undefined || branch.prepareSent) return false;
    const adapter = this.#registry.adapter(branch.participant);
    return adapter.commitOnePhase !== undefined && adapter.onePhaseOutcome !== undefined;
  }

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

  async #finished(id: string, wanted: 'commit' | 'abort'): Promise<TransactionView> {
    const view = await this.get(id);
    if (view.state === 'committed' && wanted === 'abort') {
      throw new CoordinatorError('INVALID_STATE_TRANSITION', `transaction ${id} is committed and cannot be aborted`, {
        details: { transactionId: id, state: view.state },
      });
    }
    return view;
  }

  /** Throws why `what` cannot be done to a transaction that does not run here: unknown, or ended. */
  async #notLive(id: string, what: string): Promise<never> {
    const durable = await this.#log.transaction(id);
    if (durable === undefined) throw new CoordinatorError('UNKNOWN_TRANSACTION', `no transaction ${id}`);
    const view = durableView(durable);
    throw new CoordinatorError('INVALID_STATE_TRANSITION', `cannot ${what} transaction ${id}: it is ${view.state}`, {
      details: { transactionId: id, state: view.state },
    });
  }

  /** Refuses new work; about a transaction, the error says where it stands (the answer's `state`). */
  #assertAcceptingWork(tx?: LiveTransaction): void {
    const about = tx === undefined ? {} : { details: { transactionId: tx.id, state: tx.view().state } };
    if (!this.#accepting) throw new CoordinatorError('SHUTTING_DOWN', undefined, about);
    if (this.#options.leaseHeld?.() === false) {
      throw new CoordinatorError('SHUTTING_DOWN', "this instance may no longer hold its coordinator id's lease; retry against another instance", { ...about, retryAfterSeconds: 1 });
    }
    const failed = this.#log.failed;
    if (failed !== undefined) throw new CoordinatorError('LOG_UNAVAILABLE', `the write-ahead log failed: ${failed.message}`, about);
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

