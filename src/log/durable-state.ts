/**
 * The state the write-ahead log describes: registered participants and what
 * is durably known of each transaction. A pure reducer over LogRecords; the
 * same code rebuilds it at start-up (replay) and keeps it current while the
 * coordinator runs, and its `snapshot()` is what compaction writes.
 *
 * Finished transactions are kept for `retentionMs` after they ended (so that
 * clients can still ask for the outcome), then pruned; they live in a compact
 * store (finished-transactions.ts) whose sealed buckets a snapshot includes as
 * files. Unfinished ones are ordinary objects and never pruned.
 */

import { FinishedTransactions, type SealedBucket } from './finished-transactions.js';
import type { BranchRecord, DurableTransaction, ForgottenBranch, LogRecord, ParticipantConfig, TransactionSummary } from './log-records.js';

interface MutableTransaction {
  id: string;
  protocol: DurableTransaction['protocol'];
  timeoutMs: number;
  createdAt: string;
  branches: Map<string, BranchRecord & { ackedAt?: string; precommittedAt?: string }>;
  decision?: DurableTransaction['decision'];
  decidedAt?: string;
  reason?: string;
  outcome?: DurableTransaction['outcome'];
  endedAt?: string;
  onePhase?: true;
  onePhaseInDoubt?: DurableTransaction['onePhaseInDoubt'];
}

export class DurableState {
  coordinatorId: string | undefined;
  readonly participants = new Map<string, ParticipantConfig>();
  /** Operators' resolutions of lost branches, by `<coordinatorId>:<transactionId>`. */
  readonly manualResolutions = new Map<string, Extract<LogRecord, { t: 'manual-resolution' }>>();
  /** Branches operators gave up on, by transaction id: the audit trail, kept like manual resolutions. */
  readonly forgottenBranches = new Map<string, ForgottenBranch[]>();
  /** Transactions the log has not seen end. */
  readonly #transactions = new Map<string, MutableTransaction>();
  readonly finished = new FinishedTransactions();

  apply(record: LogRecord): void {
    switch (record.t) {
      case 'coordinator':
        this.coordinatorId = record.coordinatorId;
        return;
      case 'participant-registered':
        this.participants.set(record.participant.name, record.participant);
        return;
      case 'participant-removed':
        this.participants.delete(record.name);
        return;
      case 'tx-begun':
        if (!this.#transactions.has(record.id)) {
          this.#transactions.set(record.id, {
            id: record.id,
            protocol: record.protocol,
            timeoutMs: record.timeoutMs,
            createdAt: record.at,
            branches: new Map(),
          });
        }
        return;
      case 'branch-enlisted': {
        const tx = this.#ensure(record.id, record.at);
        if (tx === undefined) return;
        mergeBranches(tx, [record.branch]);
        return;
      }
      case 'prepare-intent': {
        const tx = this.#ensure(record.id, record.createdAt, record);
        if (tx === undefined) return;
        mergeBranches(tx, record.branches);
        return;
      }
      case 'decision': {
        const tx = this.#ensure(record.id, record.at, record);
        if (tx === undefined) return;
        mergeBranches(tx, record.branches);
        // A decision is final. The one step allowed is 3PC's pre-commit → commit: a durable
        // pre-commit already means commit, so nothing may turn it into an abort.
        if (tx.decision === undefined || (tx.decision === 'precommit' && record.decision === 'commit')) {
          tx.decision = record.decision;
          tx.decidedAt = record.at;
          if (record.reason !== undefined) tx.reason = record.reason;
        }
        return;
      }
      case 'one-phase-in-doubt': {
        const tx = this.#ensure(record.id, record.createdAt, record);
        if (tx === undefined) return;
        mergeBranches(tx, [record.branch]);
        tx.onePhaseInDoubt = { evidence: record.evidence, reason: record.reason, at: record.at };
        return;
      }
      case 'branch-acked': {
        const tx = this.#transactions.get(record.id);
        const branch = tx?.branches.get(record.branchId);
        if (tx !== undefined && branch !== undefined) {
          tx.branches.set(
            record.branchId,
            record.verdict === 'precommit' ? { ...branch, precommittedAt: record.at } : { ...branch, ackedAt: record.at },
          );
        }
        return;
      }
      case 'ended': {
        const summary = record.summary;
        const tx = this.#ensure(record.id, summary?.createdAt ?? record.at, summary);
        if (tx === undefined) return; // ended already
        if (summary !== undefined) {
          mergeBranches(tx, summary.branches);
          if (summary.reason !== undefined) tx.reason ??= summary.reason;
        }
        tx.outcome = record.outcome;
        tx.endedAt = record.at;
        if (record.onePhase === true) tx.onePhase = true;
        delete tx.onePhaseInDoubt;
        this.#transactions.delete(record.id);
        this.finished.add(withoutWork(freeze(tx)));
        return;
      }
      case 'manual-resolution': {
        // Remembered per (coordinator id, transaction): every branch of one lost transaction
        // must be resolved the same way. The transactions of this log are not touched.
        const parsed = /^tcx:([^:]+):([^:]+):/.exec(record.gid);
        if (parsed !== null) this.manualResolutions.set(`${parsed[1]}:${parsed[2]}`, record);
        return;
      }
      case 'branch-forgotten': {
        const audit = this.forgottenBranches.get(record.id) ?? [];
        if (!audit.some((f) => f.branchId === record.branchId)) this.forgottenBranches.set(record.id, [...audit, record]);
        // It stands for the branch's abort acknowledgement — never under a commit decision,
        // whose prepared branches must commit whatever an operator said.
        const tx = this.#transactions.get(record.id);
        const branch = tx?.branches.get(record.branchId);
        if (tx !== undefined && branch !== undefined && tx.decision !== 'commit' && tx.decision !== 'precommit') {
          tx.branches.set(record.branchId, { ...branch, ackedAt: branch.ackedAt ?? record.at });
        }
        return;
      }
      case 'tx-state': {
        const t = record.tx;
        if (t.endedAt !== undefined) {
          this.#transactions.delete(t.id);
          this.finished.add(withoutWork(t));
          return;
        }
        this.finished.delete(t.id);
        this.#transactions.set(t.id, { ...t, branches: new Map(t.branches.map((b) => [b.branchId, { ...b }])) });
        return;
      }
    }
  }

  /**
   * The entry of a transaction that has not ended, created by the first record that names it
   * (with its summary when the record has one); undefined once it ended (the outcome is final).
   */
  #ensure(id: string, at: string, summary?: Partial<TransactionSummary>): MutableTransaction | undefined {
    let tx = this.#transactions.get(id);
    if (tx === undefined) {
      // The outcome of a finished transaction is final: a later record about it changes nothing.
      // (Recent ones only, cheaply: see FinishedTransactions.hasRecent; unfinished() checks all.)
      if (this.finished.hasRecent(id)) return undefined;
      tx = {
        id,
        protocol: summary?.protocol ?? '2pc',
        timeoutMs: summary?.timeoutMs ?? 0,
        createdAt: summary?.createdAt ?? at,
        branches: new Map(),
      };
      this.#transactions.set(id, tx);
    }
    return tx;
  }

  transaction(id: string): DurableTransaction | undefined {
    const tx = this.#transactions.get(id);
    return tx === undefined ? this.finished.get(id) : freeze(tx);
  }

  /** Transactions the log has not seen end: the work of recovery. */
  unfinished(): DurableTransaction[] {
    // Never one that ended: a stray record about a sealed transaction must not revive it.
    return [...this.#transactions.values()].filter((tx) => this.finished.get(tx.id) === undefined).map(freeze);
  }

  get size(): number {
    return this.#transactions.size + this.finished.size;
  }

  /** Drops finished transactions past the retention window, or beyond `maxFinished` (oldest first). */
  prune(now: number, retentionMs: number, maxFinished: number): number {
    return this.finished.prune(now, retentionMs, maxFinished);
  }

  /**
   * The whole state as records, and the sealed buckets of finished transactions as files;
   * replaying them into an empty DurableState (with the buckets loaded) rebuilds it. Seals the
   * finished transactions first (FinishedTransactions.seal: the bucket prepared ahead, if any,
   * and the rest unless only a few finished since).
   */
  snapshot(): { records: Generator<LogRecord>; buckets: readonly SealedBucket[] } {
    this.finished.seal(SEAL_AHEAD_MINIMUM);
    return { records: this.#snapshotRecords(), buckets: this.finished.sealedBuckets() };
  }

  /**
   * The slow part of the next snapshot, done beforehand with the event loop free: sealing the
   * finished transactions (see FinishedTransactions.sealAhead). The log calls it when a
   * compaction is due and goes on writing meanwhile; snapshot() then seals only the rest.
   */
  async prepareSnapshot(): Promise<void> {
    await this.finished.sealAhead(SEAL_AHEAD_MINIMUM);
  }

  *#snapshotRecords(): Generator<LogRecord> {
    if (this.coordinatorId !== undefined) {
      yield { t: 'coordinator', coordinatorId: this.coordinatorId, at: new Date().toISOString() };
    }
    for (const participant of this.participants.values()) yield { t: 'participant-registered', participant };
    for (const resolution of this.manualResolutions.values()) yield resolution;
    for (const audit of this.forgottenBranches.values()) yield* audit;
    for (const tx of this.#transactions.values()) yield { t: 'tx-state', tx: freeze(tx) };
    for (const tx of this.finished.unsealed()) yield { t: 'tx-state', tx };
  }
}

/**
 * Fewer finished transactions than this are not worth a pass ahead of a compaction, and when one
 * ran, fewer than this finished since are left recent (written as records) rather than sealed
 * into a bucket of their own.
 */
const SEAL_AHEAD_MINIMUM = 2_000;

/** What a record says of branches adds to what earlier records said of them. */
function mergeBranches(tx: MutableTransaction, branches: readonly BranchRecord[]): void {
  for (const b of branches) tx.branches.set(b.branchId, { ...tx.branches.get(b.branchId), ...b });
}

/**
 * A finished transaction without the work its branches kept in the log (http payloads, nats
 * messages): nothing needs them once it ended, and they would stay in memory (and in
 * snapshots) for the whole retention window.
 */
function withoutWork(tx: DurableTransaction): DurableTransaction {
  if (!tx.branches.some((b) => b.payload !== undefined)) return tx;
  return { ...tx, branches: tx.branches.map(({ payload: _payload, ...rest }) => rest) };
}

function freeze(tx: MutableTransaction): DurableTransaction {
  const out: {
    -readonly [K in keyof DurableTransaction]: DurableTransaction[K];
  } = {
    id: tx.id,
    protocol: tx.protocol,
    timeoutMs: tx.timeoutMs,
    createdAt: tx.createdAt,
    branches: [...tx.branches.values()],
  };
  if (tx.decision !== undefined) out.decision = tx.decision;
  if (tx.decidedAt !== undefined) out.decidedAt = tx.decidedAt;
  if (tx.reason !== undefined) out.reason = tx.reason;
  if (tx.outcome !== undefined) out.outcome = tx.outcome;
  if (tx.endedAt !== undefined) out.endedAt = tx.endedAt;
  if (tx.onePhase === true) out.onePhase = true;
  if (tx.onePhaseInDoubt !== undefined) out.onePhaseInDoubt = tx.onePhaseInDoubt;
  return out;
}
