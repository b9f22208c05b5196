/**
 * Reads another coordinator id's transactions straight from the shared log, for the moments
 * when no running coordinator answers for that id: its instance died and its lease has not
 * lapsed yet, or it lapsed and nobody has adopted it yet, or its adopter is still recovering
 * it. What the log holds is exactly what the adopter will recover from, so a dead instance's
 * transactions stay visible — and a 3PC participant asking about one is never told "unknown"
 * (presumed abort) while a decision for it sits in the log.
 *
 * Each id's log is read in one REPEATABLE READ, READ ONLY transaction (a compaction running
 * meanwhile cannot make the snapshot and the records after it disagree) and replayed into a
 * fresh durable state, kept for a second so that a burst of such reads costs one load; one
 * load per id runs at a time. It reads through a pool of its own: reads never keep the lease
 * renewals waiting for a connection.
 */

import type pg from 'pg';
import type { Logger } from 'pino';
import { replayInto } from '../coordinator/coordinator-log.js';
import { durableView, type TransactionView } from '../coordinator/live-transaction.js';
import { asError } from '../errors.js';
import { DurableState } from '../log/durable-state.js';
import { stateReads, type LogReads } from '../log/log-reads.js';
import { readLogContent } from '../log/postgres-log.js';

/** A transaction found in a shared log; `view` only when it is decided. */
export interface LoggedTransaction {
  readonly view?: TransactionView;
}

const KEEP_MS = 1_000;
/** Ids whose loaded state is kept at once; more evict the oldest. */
const MAX_KEPT = 16;

export class SharedLogReader {
  readonly #pool: pg.Pool;
  readonly #logger: Logger;
  /** Loaded states, each dropped KEEP_MS after its load finished; and the loads under way. */
  readonly #loaded = new Map<string, DurableState>();
  readonly #loading = new Map<string, Promise<DurableState>>();

  constructor(pool: pg.Pool, logger: Logger) {
    this.#pool = pool;
    this.#logger = logger;
  }

  /**
   * The transaction as the first of these ids' logs that holds it has it; undefined when none
   * does. Only a decided one has a view: an undecided one may still be decided by an instance
   * that is merely unreachable from here (its lease has not lapsed), so nothing can be said yet.
   */
  async transaction(coordinatorIds: Iterable<string>, transactionId: string): Promise<LoggedTransaction | undefined> {
    for (const id of coordinatorIds) {
      const log = this.reads(id);
      const tx = await log.transaction(transactionId);
      if (tx === undefined) continue;
      const decided = tx.outcome !== undefined || tx.decision !== undefined;
      return decided ? { view: durableView(tx, await log.forgottenBranches(transactionId)) } : {};
    }
    return undefined;
  }

  /**
   * One coordinator id's log as the database holds it, through the same reads its owner
   * answers (src/log/log-reads.ts). Each read uses the id's loaded state (loaded when none is
   * kept, or when the kept one is older than KEEP_MS).
   */
  reads(coordinatorId: string): LogReads {
    const loaded = async (): Promise<LogReads> => stateReads(await this.#state(coordinatorId));
    return {
      coordinatorId: async () => (await loaded()).coordinatorId(),
      transaction: async (id) => (await loaded()).transaction(id),
      forgottenBranches: async (id) => (await loaded()).forgottenBranches(id),
      unfinished: async () => (await loaded()).unfinished(),
      participants: async () => (await loaded()).participants(),
      manualResolution: async (c, t) => (await loaded()).manualResolution(c, t),
    };
  }

  /** One load per id at a time; a loaded state serves for KEEP_MS after its load finished. */
  async #state(coordinatorId: string): Promise<DurableState> {
    const kept = this.#loaded.get(coordinatorId);
    if (kept !== undefined) return kept;
    let loading = this.#loading.get(coordinatorId);
    if (loading === undefined) {
      loading = this.#load(coordinatorId).finally(() => this.#loading.delete(coordinatorId));
      this.#loading.set(coordinatorId, loading);
      const state = await loading;
      if (this.#loaded.size >= MAX_KEPT) this.#loaded.delete(this.#loaded.keys().next().value as string);
      this.#loaded.set(coordinatorId, state);
      setTimeout(() => {
        if (this.#loaded.get(coordinatorId) === state) this.#loaded.delete(coordinatorId);
      }, KEEP_MS).unref();
      return state;
    }
    return loading;
  }

  async #load(coordinatorId: string): Promise<DurableState> {
    const client = await this.#pool.connect();
    let failed: Error | undefined;
    try {
      await client.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
      const content = await readLogContent(client, coordinatorId);
      await client.query('COMMIT');
      const state = new DurableState();
      replayInto(state, content.records, content.files, this.#logger);
      return state;
    } catch (err) {
      failed = asError(err);
      throw err;
    } finally {
      client.release(failed); // a failed session is closed, not pooled (its transaction may still be open)
    }
  }
}
