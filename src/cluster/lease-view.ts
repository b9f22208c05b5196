/**
 * An instance's view of every lease, as of its last look at tcx_lease: the other live
 * instances (to forward to), who holds each live id, and the ids that lapsed and nobody has
 * settled (a survivor is about to adopt them). Looked at every third of a lease by the work
 * loop, and again on demand when a request found nobody who knows its transaction — the view
 * may predate a hand-over, and "unknown" would mean presumed abort.
 */

import type { Peer } from './forwarding.js';
import type { Lease, LeaseStore } from './lease-store.js';

export class LeaseView {
  readonly #leases: LeaseStore;
  readonly #me: string;
  #peers: readonly Peer[] = [];
  #holders: ReadonlyMap<string, string> = new Map();
  #lapsed: ReadonlySet<string> = new Set();
  /** When the look the view comes from began; the look under way, and when it began. */
  #viewSince = 0;
  #looking: Promise<void> | undefined;
  #lookingSince = 0;

  constructor(leases: LeaseStore, me: string) {
    this.#leases = leases;
    this.#me = me;
  }

  /** The other instances holding a live lease. */
  get peers(): readonly Peer[] {
    return this.#peers;
  }

  /** Coordinator id → the instance holding its live lease. */
  get holders(): ReadonlyMap<string, string> {
    return this.#holders;
  }

  /** Lapsed ids nobody has settled. */
  get lapsed(): ReadonlySet<string> {
    return this.#lapsed;
  }

  /** Reads every lease and updates the view (unless a newer look finished first); returns them. */
  async look(): Promise<Lease[]> {
    const began = performance.now();
    const listing = this.#leases.list();
    const done = listing.then(() => undefined);
    this.#looking = done;
    this.#lookingSince = began;
    void done
      .catch(() => undefined)
      .finally(() => {
        if (this.#looking === done) this.#looking = undefined;
      });
    const leases = await listing;
    if (began < this.#viewSince) return leases;
    this.#viewSince = began;
    const peers = new Map<string, Peer>();
    for (const l of leases) if (!l.expired && l.holder !== this.#me) peers.set(l.holder, { holder: l.holder, publicUrl: l.publicUrl });
    this.#peers = [...peers.values()];
    this.#holders = new Map(leases.filter((l) => !l.expired).map((l) => [l.coordinatorId, l.holder]));
    this.#lapsed = new Set(leases.filter((l) => l.expired && !l.settled).map((l) => l.coordinatorId));
    return leases;
  }

  /** A view from a look begun after `since`: the current one if it is, the look under way if it is, or a new look (concurrent callers share it). */
  async lookSince(since: number): Promise<void> {
    if (this.#viewSince >= since) return;
    if (this.#looking !== undefined && this.#lookingSince >= since) return this.#looking;
    await this.look();
  }

  /** Instances that hold an id now that they did not hold in `before` (an earlier `holders`). */
  newHoldersSince(before: ReadonlyMap<string, string>): Set<string> {
    return new Set([...this.#holders].filter(([id, holder]) => before.get(id) !== holder).map(([, holder]) => holder));
  }
}
