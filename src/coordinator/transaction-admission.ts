/**
 * Who may begin a transaction, and whether this instance takes work at all:
 * a begin's protocol and timeout, the bound on open (undecided) transactions,
 * the per-token quotas, and the refusals that apply to every request (shutting
 * down, a lease no longer held, a failed log). Counting is O(1): a transaction
 * counts from its begin until it is decided.
 */

import { randomUUID } from 'node:crypto';
import { CoordinatorError } from '../errors.js';
import { isoNow } from '../lib/iso-clock.js';
import type { ProtocolName } from '../log/log-records.js';
import { initialState } from '../protocol/commit-protocol.js';
import { LiveTransaction } from './live-transaction.js';
import { TokenQuotas, type TokenQuotaOptions } from './token-quotas.js';

export interface BeginRequest {
  readonly protocol?: ProtocolName;
  readonly timeoutMs?: number;
  /** Who begins it (a fingerprint of the API token): its quotas apply. */
  readonly owner?: string;
  /** False: never one-phase commit, even with a single branch (the full protocol and its forced decision). */
  readonly onePhase?: boolean;
}

export interface AdmissionOptions {
  readonly defaultTimeoutMs: number;
  readonly maxTimeoutMs: number;
  readonly maxActiveTransactions: number;
  /** Fair use per API token (requests that name an owner). */
  readonly tokenQuotas: TokenQuotaOptions;
  /** False once this instance may no longer hold the coordinator id (a shared log's lease). */
  readonly leaseHeld?: () => boolean;
}

export class TransactionAdmission {
  readonly #options: AdmissionOptions;
  readonly #log: { readonly failed: Error | undefined };
  readonly #quotas: TokenQuotas;
  /** Live transactions without a decision yet: what TCX_MAX_ACTIVE_TRANSACTIONS bounds. */
  readonly #undecided = new Set<LiveTransaction>();
  #accepting = true;

  constructor(options: AdmissionOptions, log: { readonly failed: Error | undefined }) {
    this.#options = options;
    this.#log = log;
    this.#quotas = new TokenQuotas(options.tokenQuotas);
  }

  /** A new transaction for `request`, counted as open; or the refusal (400, 429, 503). Nothing is logged. */
  admit(request: BeginRequest): LiveTransaction {
    this.assertAcceptingWork();
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
    const tx = new LiveTransaction({ id: randomUUID(), protocol, timeoutMs, createdAt: isoNow() });
    if (request.owner !== undefined) tx.owner = request.owner;
    if (request.onePhase === false) tx.onePhaseAllowed = false;
    tx.state = initialState(protocol);
    this.#undecided.add(tx);
    return tx;
  }

  /** A transaction is decided (or ended): it no longer counts against the open-transaction limits. */
  settled(tx: LiveTransaction): void {
    if (this.#undecided.delete(tx) && tx.owner !== undefined) this.#quotas.release(tx.owner);
  }

  /** Open transactions: begun, not decided. */
  get openCount(): number {
    return this.#undecided.size;
  }

  /** From now on every request for new work is refused with SHUTTING_DOWN. */
  stopAccepting(): void {
    this.#accepting = false;
  }

  /** Refuses new work; about a transaction, the error says where it stands (the answer's `state`). */
  assertAcceptingWork(tx?: LiveTransaction): void {
    // The view is built only for a refusal: this check runs several times in every transaction.
    const about = (): { details?: Record<string, unknown> } => (tx === undefined ? {} : { details: { transactionId: tx.id, state: tx.view().state } });
    if (!this.#accepting) throw new CoordinatorError('SHUTTING_DOWN', undefined, about());
    if (this.#options.leaseHeld?.() === false) {
      throw new CoordinatorError('SHUTTING_DOWN', "this instance may no longer hold its coordinator id's lease; retry against another instance", {
        ...about(),
        retryAfterSeconds: 1,
      });
    }
    const failed = this.#log.failed;
    if (failed !== undefined) throw new CoordinatorError('LOG_UNAVAILABLE', `the write-ahead log failed: ${failed.message}`, about());
  }
}
