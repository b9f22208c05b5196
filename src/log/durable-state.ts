/**
 * The state the write-ahead log describes: registered participants and what
 * is durably known of each transaction. A pure reducer over LogRecords; the
 * same code rebuilds it at start-up (replay) and keeps it current while the
 * coordinator runs, and its `snapshot()` is what compaction writes.
 *
 * Finished transactions are kept for `retentionMs` after they ended (so that
 * clients can still ask for the outcome), then pruned. Unfinished ones are
 * never pruned.
 */

import type { BranchRecord, DurableTransaction, LogRecord, ParticipantConfig, TransactionSummary } from './log-records.js';

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
}

export class DurableState {
  coordinatorId: string | undefined;
  readonly participants = new Map<string, ParticipantConfig>();
  /** Operators' resolutions of lost branches, by `<coordinatorId>:<transactionId>`. */
  readonly manualResolutions = new Map<string, Extract<LogRecord, { t: 'manual-resolution' }>>();
  readonly #transactions = new Map<string, MutableTransaction>();
  /** Ended transactions in the order they ended (for pruning). */
  readonly #ended = new Map<string, number>();

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
        tx.branches.set(record.branch.branchId, { ...tx.branches.get(record.branch.branchId), ...record.branch });
        return;
      }
      case 'prepare-intent': {
        const tx = this.#ensure(record.id, record.createdAt, record);
        for (const b of record.branches) tx.branches.set(b.branchId, { ...tx.branches.get(b.branchId), ...b });
        return;
      }
      case 'decision': {
        const tx = this.#ensure(record.id, record.at, record);
        for (const b of record.branches) tx.branches.set(b.branchId, { ...tx.branches.get(b.branchId), ...b });
        // A decision is final. The one step allowed is 3PC's pre-commit → commit: a durable
        // pre-commit already means commit, so nothing may turn it into an abort.
        if (tx.decision === undefined || (tx.decision === 'precommit' && record.decision === 'commit')) {
          tx.decision = record.decision;
          tx.decidedAt = record.at;
          if (record.reason !== undefined) tx.reason = record.reason;
        }
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
        if (summary !== undefined) {
          for (const b of summary.branches) tx.branches.set(b.branchId, { ...tx.branches.get(b.branchId), ...b });
          if (summary.reason !== undefined) tx.reason ??= summary.reason;
        }
        tx.outcome = record.outcome;
        tx.endedAt = record.at;
        this.#ended.delete(record.id);
        this.#ended.set(record.id, Date.parse(record.at));
        return;
      }
      case 'manual-resolution': {
        // Remembered per (coordinator id, transaction): every branch of one lost transaction
        // must be resolved the same way. The transactions of this log are not touched.
        const parsed = /^tcx:([^:]+):([^:]+):/.exec(record.gid);
        if (parsed !== null) this.manualResolutions.set(`${parsed[1]}:${parsed[2]}`, record);
        return;
      }
      case 'tx-state': {
        const t = record.tx;
        const tx: MutableTransaction = {
          ...t,
          branches: new Map(t.branches.map((b) => [b.branchId, { ...b }])),
        };
        this.#transactions.set(t.id, tx);
        if (t.endedAt !== undefined) {
          this.#ended.delete(t.id);
          this.#ended.set(t.id, Date.parse(t.endedAt));
        }
        return;
      }
    }
  }

  /** The transaction's entry, created by the first record that names it (with its summary when the record has one). */
  #ensure(id: string, at: string, summary?: Partial<TransactionSummary>): MutableTransaction {
    let tx = this.#transactions.get(id);
    if (tx === undefined) {
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
    return tx === undefined ? undefined : freeze(tx);
  }

  /** Transactions the log has not seen end: the work of recovery. */
  unfinished(): DurableTransaction[] {
    const out: DurableTransaction[] = [];
    for (const tx of this.#transactions.values()) if (tx.endedAt === undefined) out.push(freeze(tx));
    return out;
  }

  get size(): number {
    return this.#transactions.size;
  }

  /** Drops finished transactions that ended before `now - retentionMs`, or beyond `maxFinished`. */
  prune(now: number, retentionMs: number, maxFinished: number): number {
    let removed = 0;
    for (const [id, endedAt] of this.#ended) {
      if (endedAt >= now - retentionMs && this.#ended.size <= maxFinished) break;
      this.#ended.delete(id);
      this.#transactions.delete(id);
      removed++;
    }
    return removed;
  }

  /** The whole state as records; replaying them into an empty DurableState rebuilds it. */
  *snapshot(): Generator<LogRecord> {
    if (this.coordinatorId !== undefined) {
      yield { t: 'coordinator', coordinatorId: this.coordinatorId, at: new Date().toISOString() };
    }
    for (const participant of this.participants.values()) yield { t: 'participant-registered', participant };
    for (const resolution of this.manualResolutions.values()) yield resolution;
    for (const tx of this.#transactions.values()) yield { t: 'tx-state', tx: freeze(tx) };
  }
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
  return out;
}
