/**
 * Runs transactions: takes client requests, feeds events to the pure 2PC/3PC
 * machine (src/protocol) and performs the actions it returns — prepares (3PC:
 * can-commit) in parallel, the decision (3PC: the pre-commit) forced to the log
 * before any of it leaves (rule 2), phase-2
 * delivery retried with backoff until every branch acknowledges (rule 5),
 * timeouts that abort abandoned transactions (rule 7).
 *
 * Client requests on one transaction run one at a time (its mutex); the
 * machine's own events (votes, acknowledgements, a durable decision) are
 * applied as they arrive — each step is synchronous, so no two interleave.
 */

import { randomUUID } from 'node:crypto';
import type { Logger } from 'pino';
import { CoordinatorError, errorMessage } from '../errors.js';
import type { BranchRecord, ProtocolName } from '../log/log-records.js';
import type { BranchRef, EnlistResult } from '../participants/participant.js';
import {
  isTerminal,
  step,
  initialState,
  type Decision,
  type TwoPhaseAction,
  type TwoPhaseEvent,
  type TwoPhaseState,
  type Verdict,
} from '../protocol/commit-protocol.js';
import { backoffDelay, sleep, type BackoffPolicy } from './backoff.js';
import type { CoordinatorLog } from './coordinator-log.js';
import { hitFailPoint } from './fail-points.js';
import { makeGid } from './gid.js';
import { durableView, LiveTransaction, type LiveBranch, type TransactionView } from './live-transaction.js';
import type { ParticipantRegistry } from './participant-registry.js';

export interface TransactionManagerOptions {
  readonly coordinatorId: string;
  readonly defaultTimeoutMs: number;
  readonly maxTimeoutMs: number;
  readonly maxActiveTransactions: number;
  readonly commitWaitMs: number;
  /** Upper bound for a prepare round; every adapter call is bounded well below it. */
  readonly prepareWaitMs: number;
  readonly retry: BackoffPolicy;
}

export interface EnlistRequest {
  readonly participant: string;
  readonly operations?: unknown;
  readonly payload?: unknown;
}

export interface EnlistAnswer {
  readonly transactionId: string;
  readonly branchId: string;
  readonly participant: string;
  readonly state: string;
  readonly results?: EnlistResult['results'];
}

export interface Outcome {
  readonly view: TransactionView;
  /** HTTP status the API answers with. */
  readonly status: number;
}

export class TransactionManager {
  readonly #live = new Map<string, LiveTransaction>();
  readonly #log: CoordinatorLog;
  readonly #registry: ParticipantRegistry;
  readonly #options: TransactionManagerOptions;
  readonly #logger: Logger;
  readonly #stopping = new AbortController();
  #accepting = true;

  constructor(log: CoordinatorLog, registry: ParticipantRegistry, options: TransactionManagerOptions, logger: Logger) {
    this.#log = log;
    this.#registry = registry;
    this.#options = options;
    this.#logger = logger;
  }

  // ---- client requests ------------------------------------------------------------------

  begin(request: { protocol?: ProtocolName; timeoutMs?: number }): TransactionView {
    this.#assertAcceptingWork();
    const protocol = request.protocol ?? '2pc';
    if (protocol !== '2pc' && protocol !== '3pc') throw new CoordinatorError('VALIDATION_FAILED', `protocol ${String(protocol)} is not supported`);
    const timeoutMs = request.timeoutMs ?? this.#options.defaultTimeoutMs;
    if (timeoutMs > this.#options.maxTimeoutMs) {
      throw new CoordinatorError('VALIDATION_FAILED', `timeoutMs must not exceed ${this.#options.maxTimeoutMs}`);
    }
    if (this.activeCount() >= this.#options.maxActiveTransactions) {
      throw new CoordinatorError('TOO_MANY_TRANSACTIONS', `at most ${this.#options.maxActiveTransactions} transactions may be open at once`);
    }
    const tx = new LiveTransaction({ id: randomUUID(), protocol, timeoutMs, createdAt: new Date().toISOString() });
    tx.state = initialState(protocol);
    this.#live.set(tx.id, tx);
    this.#log.record({ t: 'tx-begun', id: tx.id, protocol, timeoutMs, at: tx.createdAt });
    tx.timer = setTimeout(() => void this.#onTimeout(tx), timeoutMs);
    tx.timer.unref();
    return tx.view();
  }

  async enlist(id: string, request: EnlistRequest): Promise<EnlistAnswer> {
    const tx = this.#liveOrThrow(id, 'enlist');
    return tx.lock.run(async () => {
      if (tx.state.phase !== 'active') throw invalidState(tx, 'enlist a branch in');
      const adapter = this.#registry.adapterForNewBranch(request.participant);
      const [work, misplaced] = adapter.kind === 'http' ? [request.payload, request.operations] : [request.operations, request.payload];
      if (misplaced !== undefined) {
        throw new CoordinatorError(
          'VALIDATION_FAILED',
          adapter.kind === 'http' ? 'an http branch takes a payload, not operations' : `a ${adapter.kind} branch takes operations, not a payload`,
        );
      }
      adapter.validateWork(work);
      const branch = this.#branchFor(tx, request.participant, adapter.kind, work);
      let result: EnlistResult;
      try {
        result = await adapter.enlist(this.#ref(tx, branch), work, tx.cancelWork.signal);
      } catch (err) {
        const cancelled = tx.cancelWork.signal.aborted ? errorMessage(tx.cancelWork.signal.reason) : undefined;
        const reason = cancelled ?? `branch ${branch.branchId} on ${branch.participant} failed: ${errorMessage(err)}`;
        this.#apply(tx, { type: 'abort', reason });
        await tx.waitUntil(() => isTerminal(tx.state.phase), this.#options.commitWaitMs);
        const code = err instanceof CoordinatorError ? err.code : 'OPERATION_FAILED';
        throw new CoordinatorError(code, errorMessage(err), {
          cause: err,
          details: { ...(err instanceof CoordinatorError ? err.details : {}), transactionId: tx.id, state: tx.state.phase, reason },
        });
      }
      return {
        transactionId: tx.id,
        branchId: branch.branchId,
        participant: branch.participant,
        state: tx.state.phase,
        ...(result.results === undefined ? {} : { results: result.results }),
      };
    });
  }

  #branchFor(tx: LiveTransaction, participant: string, kind: LiveBranch['kind'], work: unknown): LiveBranch {
    if (kind === 'postgres' || kind === 'redis') {
      // All work for one store runs in one branch: two branches of one transaction would
      // deadlock each other (postgres) or collide on each other's key locks (redis).
      for (const b of tx.branches.values()) if (b.participant === participant) return b;
    }
    const branchNo = tx.nextBranchNo++;
    const branch: LiveBranch = {
      branchId: `b${branchNo}`,
      participant,
      kind,
      gid: makeGid(this.#options.coordinatorId, tx.id, branchNo),
      prepareSent: false,
      attempts: 0,
      ...(kind === 'http' ? { payload: work } : {}),
    };
    tx.branches.set(branch.branchId, branch);
    this.#apply(tx, { type: 'enlist', branchId: branch.branchId });
    this.#log.record({ t: 'branch-enlisted', id: tx.id, branch: branchRecord(branch), at: new Date().toISOString() });
    return branch;
  }

  async prepare(id: string): Promise<Outcome> {
    const tx = this.#liveOrThrow(id, 'prepare');
    return tx.lock.run(async () => {
      if (tx.state.phase === 'active') {
        this.#assertAcceptingWork();
        await this.#makeEnlistmentsDurable(tx);
        this.#apply(tx, { type: 'prepare' });
      } else if (tx.state.phase !== 'preparing' && tx.state.phase !== 'prepared') {
        throw invalidState(tx, 'prepare');
      }
      await tx.waitUntil(() => tx.state.phase !== 'preparing', this.#options.prepareWaitMs);
      return this.#outcome(tx);
    });
  }

  async commit(id: string): Promise<Outcome> {
    const live = this.#live.get(id);
    if (live === undefined) return this.#finishedOutcome(id, 'commit');
    const tx = live;
    return tx.lock.run(async () => {
      const phase = tx.state.phase;
      if (phase === 'active' || phase === 'preparing' || phase === 'prepared') {
        this.#assertAcceptingWork();
        if (phase === 'active') await this.#makeEnlistmentsDurable(tx);
        this.#apply(tx, { type: 'commit' });
      } else if (tx.state.decision !== 'commit' || tx.logFailure !== undefined) {
        return this.#outcome(tx);
      }
      // Votes (bounded by the participants' own deadlines), then the forced decision, then up to
      // commitWaitMs for acknowledgements; past that the answer is 202 and delivery goes on.
      const decided = (): boolean =>
        tx.logFailure !== undefined || (tx.state.phase !== 'preparing' && tx.state.phase !== 'deciding');
      await tx.waitUntil(decided, this.#options.prepareWaitMs);
      await tx.waitUntil(() => isTerminal(tx.state.phase) || tx.logFailure !== undefined, this.#options.commitWaitMs);
      return this.#outcome(tx);
    });
  }

  async abort(id: string, reason = 'aborted by the client'): Promise<Outcome> {
    const live = this.#live.get(id);
    if (live === undefined) return this.#finishedOutcome(id, 'abort');
    const tx = live;
    if (tx.state.decision === undefined) tx.cancelWork.abort(new Error(reason));
    return tx.lock.run(async () => {
      if (tx.state.decision === 'commit' && tx.state.phase !== 'deciding') throw invalidState(tx, 'abort');
      this.#apply(tx, { type: 'abort', reason });
      await tx.waitUntil(() => isTerminal(tx.state.phase) || tx.logFailure !== undefined, this.#options.prepareWaitMs);
      const view = tx.view();
      return { view, status: 200 };
    });
  }

  get(id: string): TransactionView {
    const live = this.#live.get(id);
    if (live !== undefined) return live.view();
    const durable = this.#log.state.transaction(id);
    if (durable === undefined) {
      // The coordinator id tells a 3PC participant whether this "no record" (presumed abort)
      // comes from the coordinator that prepared it, or from another instance.
      throw new CoordinatorError('UNKNOWN_TRANSACTION', `no transaction ${id}`, { details: { coordinatorId: this.#options.coordinatorId } });
    }
    return durableView(durable);
  }

  list(filter: { state?: string; limit: number }): TransactionView[] {
    const out: TransactionView[] = [];
    for (const tx of this.#live.values()) {
      if (out.length >= filter.limit) break;
      const matches =
        filter.state === undefined || (filter.state === 'in-doubt' ? tx.inDoubt : tx.state.phase === filter.state);
      if (matches) out.push(tx.view());
    }
    return out;
  }

  activeCount(): number {
    let n = 0;
    for (const tx of this.#live.values()) if (tx.state.decision === undefined) n++;
    return n;
  }

  liveCount(): number {
    return this.#live.size;
  }

  /** True while the participant has a branch in a transaction that has not ended. */
  participantInUse(name: string): boolean {
    for (const tx of this.#live.values()) {
      for (const b of tx.branches.values()) if (b.participant === name) return true;
    }
    for (const tx of this.#log.state.unfinished()) if (tx.branches.some((b) => b.participant === name)) return true;
    return false;
  }

  /** Operator's "retry now": every pending phase-2 delivery of the transaction retries at once. */
  retryNow(id: string): TransactionView {
    const tx = this.#live.get(id);
    if (tx === undefined) {
      this.get(id); // 404 when unknown
      throw new CoordinatorError('INVALID_STATE_TRANSITION', `transaction ${id} has ended; there is nothing to retry`);
    }
    if (!tx.inDoubt) throw invalidState(tx, 'retry delivery of');
    const woken = tx.wake;
    tx.wake = new AbortController();
    woken.abort();
    this.#logger.info({ txId: id }, 'operator: retry now');
    return tx.view();
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
   * Re-drives every transaction the log saw begin but not end: those with a
   * commit decision are committed, the rest (presumed abort) rolled back.
   */
  resumeUnfinished(): number {
    let resumed = 0;
    for (const durable of this.#log.state.unfinished()) {
      if (this.#live.has(durable.id)) continue;
      const tx = new LiveTransaction({
        id: durable.id,
        protocol: durable.protocol,
        timeoutMs: durable.timeoutMs,
        createdAt: durable.createdAt,
      });
      // A durable 3PC pre-commit means commit, exactly like a commit decision.
      const decision: Decision = durable.decision === 'commit' || durable.decision === 'precommit' ? 'commit' : 'abort';
      const reason = durable.reason ?? 'presumed abort: the log holds no commit decision for this transaction';
      if (durable.decision === undefined) {
        this.#log.record({ t: 'decision', id: tx.id, decision: 'abort', branches: durable.branches, reason, at: new Date().toISOString() });
      }
      const is3pc = durable.protocol === '3pc';
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
        const done = b.ackedAt !== undefined;
        branches[b.branchId] = {
          phase: b.vote === 'read-only' ? 'read-only' : done ? (decision === 'commit' ? 'committed' : 'aborted') : pending,
        };
      }
      tx.state = {
        protocol: durable.protocol,
        // 3PC resumes as if every pre-commit was acknowledged: commit goes to every branch.
        phase: decision === 'commit' && is3pc ? 'precommitted' : 'deciding',
        branches,
        commitRequested: decision === 'commit',
        decision,
        abortReason: decision === 'abort' ? reason : undefined,
      };
      tx.decidedAt = durable.decidedAt ?? new Date().toISOString();
      this.#live.set(tx.id, tx);
      this.#logger.info({ txId: tx.id, decision, branches: durable.branches.length }, 'recovery: resuming transaction');
      this.#applyInternal(tx, { type: 'decision-durable', decision });
      resumed++;
    }
    return resumed;
  }

  // ---- shutdown -------------------------------------------------------------------------

  /** Stops taking new work; waits up to `deadlineMs` for in-flight phase 2 to finish. */
  async drain(deadlineMs: number): Promise<void> {
    this.#accepting = false;
    const deadline = Date.now() + deadlineMs;
    for (const tx of this.#live.values()) {
      if (tx.state.decision === undefined && tx.state.phase !== 'preparing') {
        await this.abort(tx.id, 'coordinator shutting down').catch(() => undefined);
      }
    }
    for (const tx of [...this.#live.values()]) {
      const left = deadline - Date.now();
      if (left <= 0) break;
      await tx.waitUntil(() => isTerminal(tx.state.phase), left);
    }
    this.#stopping.abort();
    for (const tx of this.#live.values()) clearTimeout(tx.timer);
  }

  // ---- the machine and its actions ------------------------------------------------------

  #apply(tx: LiveTransaction, event: TwoPhaseEvent): void {
    const { state, actions } = step(tx.state, event);
    tx.state = state;
    tx.changed();
    for (const action of actions) this.#perform(tx, action);
  }

  /** For the machine's own events: a rejected transition here is a bug to report, not a crash. */
  #applyInternal(tx: LiveTransaction, event: TwoPhaseEvent): void {
    try {
      this.#apply(tx, event);
    } catch (err) {
      this.#logger.error({ txId: tx.id, event: event.type, phase: tx.state.phase, err: errorMessage(err) }, 'protocol event rejected');
    }
  }

  #perform(tx: LiveTransaction, action: TwoPhaseAction): void {
    switch (action.type) {
      case 'prepare-branches':
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
    }
  }

  async #prepareBranch(tx: LiveTransaction, branchId: string): Promise<void> {
    const branch = tx.branches.get(branchId);
    if (branch === undefined) return;
    branch.prepareSent = true;
    let vote: 'yes' | 'no' | 'read-only';
    let reason: string | undefined;
    try {
      const adapter = this.#registry.adapter(branch.participant);
      const ref = this.#ref(tx, branch);
      // 3PC can-commit: stores with one durable "yes" state prepare here (design rule 3).
      const answer = tx.protocol === '3pc' && adapter.canCommit !== undefined ? await adapter.canCommit(ref) : await adapter.prepare(ref);
      vote = answer.vote;
      reason = answer.reason;
    } catch (err) {
      vote = 'no';
      reason = `prepare on ${branch.participant} failed: ${errorMessage(err)}`;
    }
    branch.vote = vote;
    if (reason !== undefined) branch.voteReason = reason;
    if (vote === 'yes') hitFailPoint('after-prepare');
    else if (vote === 'no') this.#logger.info({ txId: tx.id, branchId, participant: branch.participant, reason }, 'branch voted no');
    this.#applyInternal(tx, { type: 'vote', branchId, vote, ...(reason === undefined ? {} : { reason }) });
  }

  async #logDecision(tx: LiveTransaction, decision: Verdict, force: boolean): Promise<void> {
    const at = new Date().toISOString();
    // Payloads stay in the branch-enlisted records: the decision record is small and forced.
    const branches = [...tx.branches.values()].map((b) => withoutPayload(branchRecord(b)));
    const reason = tx.state.abortReason;
    const record = {
      t: 'decision' as const,
      id: tx.id,
      decision,
      branches,
      ...(decision === 'abort' && reason !== undefined ? { reason } : {}),
      at,
    };
    if (force) {
      try {
        await this.#log.force(record);
      } catch (err) {
        // Fail-stop: without a durable decision no commit may leave. The branches stay
        // prepared; recovery after a restart rolls them back (presumed abort).
        tx.logFailure = err instanceof Error ? err : new Error(String(err));
        this.#logger.error({ txId: tx.id, err: errorMessage(err) }, 'forcing the commit decision failed; transaction left undecided');
        tx.changed();
        return;
      }
      hitFailPoint('after-decision-logged');
    } else {
      if (decision === 'commit') hitFailPoint('before-commit-record'); // 3PC: every pre-commit acknowledged
      this.#log.record(record);
    }
    tx.decidedAt ??= at;
    this.#logger.info({ txId: tx.id, decision, branches: branches.length, ...(reason === undefined ? {} : { reason }) }, 'decision');
    this.#applyInternal(tx, { type: 'decision-durable', decision });
  }

  async #deliver(tx: LiveTransaction, branchId: string, decision: Verdict): Promise<void> {
    const branch = tx.branches.get(branchId);
    if (branch === undefined) return;
    const adapter = this.#registry.has(branch.participant) ? this.#registry.adapter(branch.participant) : undefined;
    // An http service that never received a prepare holds nothing for this branch; a store
    // without a pre-commit step is marked by the coordinator's own log.
    const needsCall =
      !(branch.kind === 'http' && !branch.prepareSent) && !(decision === 'precommit' && adapter !== undefined && adapter.preCommit === undefined);
    for (let attempt = 0; needsCall; attempt++) {
      if (this.#stopping.signal.aborted) return; // recovery after restart finishes it
      branch.attempts = attempt + 1;
      branch.lastAttemptAt = new Date().toISOString();
      try {
        const current = this.#registry.adapter(branch.participant);
        const ref = this.#ref(tx, branch);
        if (decision === 'precommit') await current.preCommit?.(ref);
        else await (decision === 'commit' ? current.commit(ref) : current.abort(ref));
        break;
      } catch (err) {
        branch.lastError = errorMessage(err);
        const delay = backoffDelay(this.#options.retry, attempt);
        this.#logger.warn(
          { txId: tx.id, branchId, participant: branch.participant, decision, attempt: attempt + 1, retryInMs: delay, err: branch.lastError },
          'phase-2 delivery failed; retrying',
        );
        tx.changed();
        await sleep(delay, this.#stopping.signal, tx.wake.signal);
      }
    }
    delete branch.lastError;
    this.#log.record({
      t: 'branch-acked',
      id: tx.id,
      branchId,
      ...(decision === 'precommit' ? { verdict: 'precommit' as const } : {}),
      at: new Date().toISOString(),
    });
    if (decision === 'commit') hitFailPoint('between-commits');
    if (decision === 'precommit') hitFailPoint('between-precommits');
    this.#applyInternal(tx, { type: 'ack', branchId, verdict: decision });
  }

  #end(tx: LiveTransaction, outcome: Decision): void {
    hitFailPoint('before-end-record');
    this.#log.record({ t: 'ended', id: tx.id, outcome, at: new Date().toISOString() });
    clearTimeout(tx.timer);
    this.#live.delete(tx.id);
    this.#logger.info({ txId: tx.id, outcome }, 'transaction ended');
    tx.changed();
  }

  async #onTimeout(tx: LiveTransaction): Promise<void> {
    if (tx.state.decision === undefined && tx.state.phase === 'active') tx.cancelWork.abort(new Error('transaction timed out'));
    await tx.lock.run(async () => {
      if (tx.state.decision !== undefined || isTerminal(tx.state.phase)) return;
      this.#logger.warn({ txId: tx.id, phase: tx.state.phase, timeoutMs: tx.timeoutMs }, 'transaction timed out; aborting');
      this.#applyInternal(tx, { type: 'timeout' });
    });
  }

  // ---- helpers --------------------------------------------------------------------------

  /** Before any prepare leaves, the branches recovery cannot find by itself must be durable. */
  async #makeEnlistmentsDurable(tx: LiveTransaction): Promise<void> {
    if ([...tx.branches.values()].some((b) => b.kind === 'http')) await this.#log.flush();
  }

  #ref(tx: LiveTransaction, branch: LiveBranch): BranchRef {
    return {
      transactionId: tx.id,
      protocol: tx.protocol,
      branchId: branch.branchId,
      gid: branch.gid,
      ...(branch.payload === undefined ? {} : { payload: branch.payload }),
    };
  }

  #outcome(tx: LiveTransaction): Outcome {
    const view = tx.view();
    if (tx.logFailure !== undefined) {
      throw new CoordinatorError('LOG_UNAVAILABLE', `the commit decision could not be made durable: ${tx.logFailure.message}`, {
        details: { transactionId: tx.id, state: view.state },
      });
    }
    if (view.state === 'aborted' || view.state === 'aborting' || (view.state === 'deciding' && tx.state.decision === 'abort')) {
      return { view, status: 409 };
    }
    // Decided but not yet delivered everywhere, or still deciding: the outcome is not final yet.
    if (['precommitted', 'committing', 'preparing', 'deciding'].includes(view.state)) return { view, status: 202 };
    return { view, status: 200 };
  }

  #finishedOutcome(id: string, wanted: Decision): Outcome {
    const view = this.get(id);
    if (view.state === 'committed') {
      if (wanted === 'commit') return { view, status: 200 };
      throw new CoordinatorError('INVALID_STATE_TRANSITION', `transaction ${id} is committed and cannot be aborted`, {
        details: { transactionId: id, state: view.state },
      });
    }
    return { view, status: wanted === 'commit' ? 409 : 200 };
  }

  #liveOrThrow(id: string, what: string): LiveTransaction {
    const tx = this.#live.get(id);
    if (tx !== undefined) return tx;
    const durable = this.#log.state.transaction(id);
    if (durable === undefined) throw new CoordinatorError('UNKNOWN_TRANSACTION', `no transaction ${id}`);
    const view = durableView(durable);
    throw new CoordinatorError('INVALID_STATE_TRANSITION', `cannot ${what} transaction ${id}: it is ${view.state}`, {
      details: { transactionId: id, state: view.state },
    });
  }

  #assertAcceptingWork(): void {
    if (!this.#accepting) throw new CoordinatorError('SHUTTING_DOWN');
    const failed = this.#log.failed;
    if (failed !== undefined) throw new CoordinatorError('LOG_UNAVAILABLE', `the write-ahead log failed: ${failed.message}`);
  }
}

function branchRecord(b: LiveBranch): BranchRecord {
  return {
    branchId: b.branchId,
    participant: b.participant,
    kind: b.kind,
    gid: b.gid,
    ...(b.payload === undefined ? {} : { payload: b.payload }),
    ...(b.vote === undefined ? {} : { vote: b.vote }),
  };
}

function withoutPayload(record: BranchRecord): BranchRecord {
  if (record.payload === undefined) return record;
  const { payload: _payload, ...rest } = record;
  return rest;
}

function invalidState(tx: LiveTransaction, what: string): CoordinatorError {
  return new CoordinatorError('INVALID_STATE_TRANSITION', `cannot ${what} transaction ${tx.id}: it is ${tx.state.phase}`, {
    details: { transactionId: tx.id, state: tx.state.phase },
  });
}

