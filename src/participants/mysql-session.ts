/**
 * A mysql branch's connection and what the adapter tracks around it: the open branch, the
 * connections of prepared branches kept for their phase 2, and connections given up while
 * the server may still hold the branch's XA transaction on them.
 */
import type { Session } from './mysql-connections.js';
import type { Xid } from './mysql-xid.js';

/** A branch's connection with what decides, once its transaction has ended, whether it may be pooled again. */
export interface BranchConnection {
  readonly session: Session;
  /** A KILL QUERY may be in flight to this connection: it must not run anything else. */
  readonly cancelled: boolean;
  /** The work left state on the connection beyond the transaction: closed (after a reset) instead of pooled. */
  readonly mustNotBeReused: boolean;
}

export interface OpenBranch extends BranchConnection {
  readonly xid: Xid;
  /** XA START answered: the connection holds the branch's XA transaction. */
  started: boolean;
  /** XA START's answer had SERVER_STATUS_IN_TRANS set: every statement's answer must have it too. */
  statusShowsTransaction: boolean;
  /** XA END answered (the transaction is IDLE, ready to prepare). */
  ended: boolean;
  /** Set when the branch can no longer prepare: a statement failed or the work was cancelled. */
  failure: string | undefined;
  /** Set while the branch runs (see BranchConnection). */
  cancelled: boolean;
  mustNotBeReused: boolean;
  /** Work running on the connection right now (an abort waits for it before it looks). */
  busy: Promise<unknown> | undefined;
}

/**
 * Connections the adapter closed (or lost) while they held — or may have held — a branch's XA
 * transaction, by gid. Until the server has ended that connection, XA COMMIT / XA ROLLBACK
 * from another connection answers XAER_NOTA ("unknown xid") for a transaction that still
 * exists, so phase 2 first makes sure the connection is gone.
 */
export interface Unsettled {
  readonly threadId: number;
  /** When we gave it up (a server that started later cannot still run it). */
  readonly since: number;
}

/**
 * Connections of prepared branches kept for their phase 2, which follows at once: the XA
 * COMMIT runs on the connection that holds the transaction. One not taken within the bound is
 * handed to `expire` (which closes it: the prepared transaction detaches and stays prepared).
 * A connection is kept with its branch's flags: after phase 2 they decide, as for an open
 * branch, whether it is pooled (reset) or closed.
 */
export class KeptConnections {
  readonly #kept = new Map<string, { branch: BranchConnection; since: number }>();
  readonly #boundMs: number;
  readonly #expire: (gid: string, session: Session) => void;
  #sweep: NodeJS.Timeout | undefined;

  constructor(boundMs: number, expire: (gid: string, session: Session) => void) {
    this.#boundMs = boundMs;
    this.#expire = expire;
  }

  get size(): number {
    return this.#kept.size;
  }

  has(gid: string): boolean {
    return this.#kept.has(gid);
  }

  keep(gid: string, branch: BranchConnection): void {
    // The branch itself, not a copy: a cancellation that lands after the prepare still counts.
    this.#kept.set(gid, { branch, since: Date.now() });
    this.#sweep ??= setInterval(() => this.#expireStale(Date.now() - this.#boundMs), Math.max(250, this.#boundMs / 2)).unref();
  }

  take(gid: string): BranchConnection | undefined {
    const kept = this.#kept.get(gid);
    if (kept === undefined) return undefined;
    this.#kept.delete(gid);
    return kept.branch;
  }

  /** Hands the oldest kept connection to `expire` (to free a slot); false when none is kept. */
  expireOldest(): boolean {
    const first = this.#kept.entries().next();
    if (first.done === true) return false;
    const [gid, { branch }] = first.value;
    this.#kept.delete(gid);
    this.#expire(gid, branch.session);
    return true;
  }

  expireAll(): void {
    this.#expireStale(Number.POSITIVE_INFINITY);
  }

  #expireStale(before: number): void {
    for (const [gid, kept] of this.#kept) {
      if (kept.since > before) continue;
      this.#kept.delete(gid);
      this.#expire(gid, kept.branch.session);
    }
    if (this.#kept.size === 0) {
      clearInterval(this.#sweep);
      this.#sweep = undefined;
    }
  }
}
