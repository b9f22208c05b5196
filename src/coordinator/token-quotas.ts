/**
 * Fair use per API token: how many transactions one token may hold open (not
 * yet decided) at once, and how fast it may begin new ones (a token bucket that
 * refills `beginsPerSecond` and holds at most one second's worth). Without them
 * one client could take every slot of TCX_MAX_ACTIVE_TRANSACTIONS and hold it
 * for the maximum timeout. Keyed by a fingerprint of the token, so the maps
 * hold at most one entry per configured token.
 */

import { CoordinatorError } from '../errors.js';

export interface TokenQuotaOptions {
  /** Open (undecided) transactions per token. */
  readonly maxActive: number;
  /** Begins per second per token; 0 means no limit. */
  readonly beginsPerSecond: number;
}

interface Bucket {
  tokens: number;
  at: number;
}

export class TokenQuotas {
  readonly #options: TokenQuotaOptions;
  readonly #active = new Map<string, number>();
  readonly #buckets = new Map<string, Bucket>();
  readonly #now: () => number;

  constructor(options: TokenQuotaOptions, now: () => number = () => performance.now()) {
    this.#options = options;
    this.#now = now;
  }

  /** Counts one more open transaction for `owner`, or refuses with QUOTA_EXCEEDED (429). */
  admit(owner: string): void {
    const active = this.#active.get(owner) ?? 0;
    if (active >= this.#options.maxActive) {
      throw new CoordinatorError('QUOTA_EXCEEDED', `this token already holds ${active} open transactions, its limit (TCX_TOKEN_MAX_ACTIVE_TRANSACTIONS)`, {
        retryAfterSeconds: 1,
        details: { quota: 'active-transactions', limit: this.#options.maxActive },
      });
    }
    this.#takeBegin(owner);
    this.#active.set(owner, active + 1);
  }

  /** The transaction `owner` opened is decided (or gone): its slot is free again. */
  release(owner: string): void {
    const active = this.#active.get(owner) ?? 0;
    if (active <= 1) this.#active.delete(owner);
    else this.#active.set(owner, active - 1);
  }

  activeOf(owner: string): number {
    return this.#active.get(owner) ?? 0;
  }

  #takeBegin(owner: string): void {
    const rate = this.#options.beginsPerSecond;
    if (rate === 0) return;
    const now = this.#now();
    let bucket = this.#buckets.get(owner);
    if (bucket === undefined) {
      bucket = { tokens: rate, at: now };
      this.#buckets.set(owner, bucket);
    }
    bucket.tokens = Math.min(rate, bucket.tokens + ((now - bucket.at) / 1000) * rate);
    bucket.at = now;
    if (bucket.tokens < 1) {
      throw new CoordinatorError('QUOTA_EXCEEDED', `this token may begin at most ${rate} transactions per second (TCX_TOKEN_BEGINS_PER_SECOND)`, {
        retryAfterSeconds: Math.max(1, Math.ceil((1 - bucket.tokens) / rate)),
        details: { quota: 'begins-per-second', limit: rate },
      });
    }
    bucket.tokens -= 1;
  }
}
