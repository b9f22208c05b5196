/**
 * A coordinator instance on a shared Postgres log (TCX_LOG_URL): it holds the
 * lease on its own coordinator id and runs that id's Coordinator; it renews
 * every lease it holds each third of TCX_LEASE_MS; and when another instance's
 * lease lapses it tries to adopt that id — one survivor wins — and runs, under
 * a new epoch, exactly the recovery the dead instance would run on restart
 * (Coordinator.start: re-drive logged decisions, presumed abort for the rest,
 * sweep every participant for that id's gids).
 *
 * Leases are checked twice: the database's clock decides whose writes commit
 * (every log write checks the epoch and expiry), and this process's own clock
 * decides whether it may still call participants (`held`: renewed less than
 * a lease ago, minus a safety margin). An instance that loses the lease on its
 * own id — paused past it, partitioned — stops calling anyone at once and
 * steps down (`onHomeLost`: the process exits; a supervisor restarts it and it
 * asks for its id back). A restarted instance gets its id back only through
 * the lease: its adopter hands it over at its next renewal.
 */

import pg from 'pg';
import type { Logger } from 'pino';
import type { Config } from '../config.js';
import { errorMessage } from '../errors.js';
import { Coordinator } from '../coordinator/coordinator.js';
import { migrate } from '../log/postgres-log-schema.js';
import { Forwarder, type ForwardedAnswer, type ForwardedRequest, type Peer } from './forwarding.js';
import { LeaseStore, type Lease } from './lease-store.js';
import { SharedParticipants } from './shared-participants.js';

interface Held {
  readonly epoch: string;
  /** performance.now() until which the lease is safely ours. */
  validUntil: number;
  coordinator?: Coordinator;
}

export interface ClusterView {
  readonly mode: 'cluster';
  readonly instance: string;
  readonly leaseMs: number;
  readonly leases: readonly (Lease & { readonly adoptedBy?: string })[];
  readonly adopted: readonly string[];
}

export class Cluster {
  readonly home: Coordinator;
  readonly #config: Config;
  readonly #logger: Logger;
  readonly #pool: pg.Pool;
  readonly #leases: LeaseStore;
  readonly #held: Map<string, Held>;
  readonly #onHomeLost: (reason: string) => void;
  readonly #forwarder: Forwarder;
  readonly #shared: SharedParticipants;
  /** Shared registrations this instance could not take (unreachable from here, refused): when to try again. */
  readonly #retryAt = new Map<string, number>();
  /** The other live instances, as of the last look at the leases. */
  #peers: Peer[] = [];
  #timer: NodeJS.Timeout | undefined;
  #ticking: Promise<void> | undefined;
  #stopped = false;

  private constructor(
    config: Config,
    logger: Logger,
    pool: pg.Pool,
    leases: LeaseStore,
    shared: SharedParticipants,
    held: Map<string, Held>,
    home: Coordinator,
    onHomeLost: (reason: string) => void,
  ) {
    this.#shared = shared;
    this.#config = config;
    this.#logger = logger;
    this.#pool = pool;
    this.#leases = leases;
    this.#held = held;
    this.home = home;
    this.#onHomeLost = onHomeLost;
    this.#forwarder = new Forwarder(config.coordinatorId ?? '', Math.max(1_000, config.participantTimeoutMs));
  }

  get #me(): string {
    return this.#config.coordinatorId ?? '';
  }

  /** Takes the lease on this instance's id (waiting, bounded, while another holds it), recovers, and starts renewing. */
  static async start(config: Config, logger: Logger, onHomeLost: (reason: string) => void): Promise<Cluster> {
    const me = config.coordinatorId ?? '';
    const timeoutMs = Math.max(2_000, config.leaseMs);
    const pool = new pg.Pool({
      connectionString: config.logUrl,
      max: 4,
      connectionTimeoutMillis: timeoutMs,
      statement_timeout: timeoutMs,
      query_timeout: timeoutMs + 1_000,
      application_name: `tcx-cluster:${me}`,
    });
    pool.on('error', (err) => logger.warn({ err: errorMessage(err) }, 'cluster: log database connection failed'));
    try {
      const client = await pool.connect();
      try {
        await migrate(client);
      } finally {
        client.release();
      }
      const leases = new LeaseStore(pool, config.leaseMs);
      const held = new Map<string, Held>();
      const epoch = await acquireOwn(leases, config, logger);
      const lease: Held = { epoch, validUntil: performance.now() + safeFor(config.leaseMs) };
      held.set(me, lease);
      const shared = new SharedParticipants(pool, me);
      const home = await Coordinator.start(config, logger, { lease: { epoch, held: () => performance.now() < lease.validUntil }, shared });
      lease.coordinator = home;
      const cluster = new Cluster(config, logger, pool, leases, shared, held, home, onHomeLost);
      await cluster.syncParticipants();
      cluster.#schedule();
      logger.info({ coordinatorId: me, epoch, leaseMs: config.leaseMs }, 'cluster: holding the lease on this instance\'s id');
      return cluster;
    } catch (err) {
      await pool.end().catch(() => undefined);
      throw err;
    }
  }

  /** True when a coordinator run here (its own, or adopted) runs or knows the transaction. */
  knows(transactionId: string): boolean {
    for (const h of this.#held.values()) if (h.coordinator?.knows(transactionId) === true) return true;
    return false;
  }

  /** Asks the other live instances about a transaction this one does not know. */
  forward(req: ForwardedRequest): Promise<ForwardedAnswer | undefined> {
    return this.#forwarder.forward(this.#peers, req);
  }

  /** The coordinator that runs or knows the transaction: this instance's own, or one it adopted. */
  coordinatorFor(transactionId: string): Coordinator {
    if (this.home.knows(transactionId)) return this.home;
    for (const h of this.#held.values()) if (h.coordinator !== undefined && h.coordinator !== this.home && h.coordinator.knows(transactionId)) return h.coordinator;
    return this.home;
  }

  async view(): Promise<ClusterView> {
    const leases = await this.#leases.list();
    const adopted = [...this.#held.keys()].filter((id) => id !== this.#me);
    return { mode: 'cluster', instance: this.#me, leaseMs: this.#config.leaseMs, leases: leases.map((l) => (l.holder !== l.coordinatorId ? { ...l, adoptedBy: l.holder } : l)), adopted };
  }

  /** Graceful stop: every coordinator run here stops, then their leases are given up at once. */
  async stop(deadlineMs: number): Promise<void> {
    this.#stopped = true;
    clearTimeout(this.#timer);
    await this.#ticking;
    for (const [id, h] of this.#held) {
      await h.coordinator?.stop(deadlineMs);
      await this.#leases.release(id, this.#me, h.epoch).catch((err: unknown) => this.#logger.warn({ coordinatorId: id, err: errorMessage(err) }, 'cluster: releasing a lease failed'));
    }
    this.#held.clear();
    await this.#forwarder.close().catch(() => undefined);
    await this.#pool.end().catch(() => undefined);
  }

  #schedule(): void {
    if (this.#stopped) return;
    this.#timer = setTimeout(() => {
      this.#ticking = this.#tick().finally(() => {
        this.#ticking = undefined;
        this.#schedule();
      });
    }, Math.floor(this.#config.leaseMs / 3));
    this.#timer.unref();
  }

  async #tick(): Promise<void> {
    await this.#renew();
    if (!this.#stopped) await this.#adoptLapsed().catch((err: unknown) => this.#logger.warn({ err: errorMessage(err) }, 'cluster: looking for lapsed leases failed'));
    if (!this.#stopped) await this.syncParticipants();
  }

  /**
   * Takes every participant the shared registry holds into this instance's coordinator (its own
   * log records it, after checking it from here), and removes those removed elsewhere. Bounded:
   * one that cannot be taken is tried again only after a while.
   */
  async syncParticipants(): Promise<void> {
    let entries;
    try {
      entries = await this.#shared.list();
    } catch (err) {
      this.#logger.warn({ err: errorMessage(err) }, 'cluster: reading the shared participant registry failed');
      return;
    }
    const now = Date.now();
    // This instance's own coordinator takes new work; an adopted id's recovery needs only what its log holds.
    for (const c of [this.home]) {
      for (const { request, removed } of entries) {
        const key = `${c.coordinatorId}/${request.name}`;
        if ((this.#retryAt.get(key) ?? 0) > now || removed !== c.hasParticipant(request.name)) continue;
        try {
          if (removed) await c.removeParticipant(request.name);
          else await c.registerHere(request);
          this.#retryAt.delete(key);
          this.#logger.info({ coordinatorId: c.coordinatorId, participant: request.name, removed }, 'cluster: participant registry synchronised');
        } catch (err) {
          this.#retryAt.set(key, now + 30_000);
          this.#logger.warn({ coordinatorId: c.coordinatorId, participant: request.name, removed, err: errorMessage(err) }, 'cluster: could not synchronise a participant; trying again later');
        }
      }
    }
  }

  async #renew(): Promise<void> {
    const started = performance.now();
    const epochs = new Map([...this.#held].map(([id, h]) => [id, h.epoch]));
    let renewed: Map<string, string | null> | undefined;
    try {
      renewed = (await this.#leases.renew(this.#me, epochs)).renewed;
    } catch (err) {
      this.#logger.warn({ err: errorMessage(err) }, 'cluster: renewing leases failed; retrying');
    }
    for (const [id, h] of [...this.#held]) {
      if (renewed?.has(id) === true) {
        h.validUntil = started + safeFor(this.#config.leaseMs);
        const wantedBy = renewed.get(id);
        if (id !== this.#me && wantedBy !== null && wantedBy !== undefined) await this.#handOver(id, h, wantedBy);
        continue;
      }
      // Not renewed: lost for sure (renewal answered without it), or unknown until the local validity runs out.
      if (renewed === undefined && performance.now() < h.validUntil) continue;
      await this.#lost(id, h, renewed === undefined ? 'the log database could not be reached for a whole lease' : 'the lease lapsed or passed to another instance');
    }
  }

  async #lost(id: string, h: Held, reason: string): Promise<void> {
    h.validUntil = 0;
    this.#held.delete(id);
    this.#logger.error({ coordinatorId: id, epoch: h.epoch, reason }, 'cluster: lease lost; stepping down for this id');
    await h.coordinator?.halt();
    if (id === this.#me) {
      this.#stopped = true;
      this.#onHomeLost(reason);
    }
  }

  /** The instance whose id this is came back and asks for it: stop here (nothing more is written or sent), then let go. */
  async #handOver(id: string, h: Held, to: string): Promise<void> {
    h.validUntil = 0;
    this.#held.delete(id);
    await h.coordinator?.halt();
    await this.#leases.release(id, this.#me, h.epoch);
    this.#logger.info({ coordinatorId: id, to }, 'cluster: adopted id handed back');
  }

  async #adoptLapsed(): Promise<void> {
    const leases = await this.#leases.list();
    const peers = new Map<string, Peer>();
    for (const l of leases) if (!l.expired && l.holder !== this.#me) peers.set(l.holder, { holder: l.holder, publicUrl: l.publicUrl });
    this.#peers = [...peers.values()];
    for (const lease of leases) {
      if (this.#stopped || !lease.expired || this.#held.has(lease.coordinatorId)) continue;
      if (lease.wantedBy !== null && lease.wantedBy !== this.#me) continue; // its own instance is taking it back
      const epoch = await this.#leases.acquire(lease.coordinatorId, this.#me, this.#config.publicUrl, false);
      if (epoch === undefined) continue; // another survivor was faster
      await this.#adopt(lease.coordinatorId, epoch);
    }
  }

  async #adopt(id: string, epoch: string): Promise<void> {
    const h: Held = { epoch, validUntil: performance.now() + safeFor(this.#config.leaseMs) };
    this.#held.set(id, h);
    this.#logger.warn({ coordinatorId: id, epoch }, 'cluster: adopting a lapsed coordinator id; running its recovery');
    try {
      const config: Config = { ...this.#config, coordinatorId: id, failPoint: undefined };
      h.coordinator = await Coordinator.start(config, this.#logger.child({ adopted: id }), { lease: { epoch, held: () => performance.now() < h.validUntil } });
    } catch (err) {
      this.#held.delete(id);
      this.#logger.error({ coordinatorId: id, err: errorMessage(err) }, 'cluster: recovery of an adopted id failed; giving the lease up');
      await this.#leases.release(id, this.#me, epoch).catch(() => undefined);
    }
  }
}

/** How long after a renewal began the lease is safely ours by the local clock: most of it, not all. */
function safeFor(leaseMs: number): number {
  return Math.floor(leaseMs * 0.75);
}

/** This instance's own id: taken at once when it held it last or it lapsed; otherwise asked back from its adopter. */
async function acquireOwn(leases: LeaseStore, config: Config, logger: Logger): Promise<string> {
  const me = config.coordinatorId ?? '';
  const deadline = Date.now() + 6 * config.leaseMs;
  for (let asked = false; ; ) {
    const epoch = await leases.acquire(me, me, config.publicUrl, true);
    if (epoch !== undefined) return epoch;
    if (Date.now() > deadline) throw new Error(`the lease on ${me} is held by another instance and was not handed back within ${6 * config.leaseMs} ms`);
    if (!asked) logger.warn({ coordinatorId: me }, 'cluster: this id is held by another instance; asking for it back');
    asked = true;
    await leases.claim(me, me);
    await new Promise((r) => setTimeout(r, Math.max(50, Math.floor(config.leaseMs / 10))));
  }
}
