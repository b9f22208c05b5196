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
 * three quarters of a lease ago). Renewal runs on its own timer and never waits
 * for slow work (a recovery, a participant check, a halt): adoption and the
 * registry run on a second loop, halts in the background while their lease is
 * still renewed. An instance that loses the lease on its own id — paused past
 * it, partitioned, or its log failed — stops calling anyone and steps down
 * (`onHomeLost`: the process exits; a supervisor restarts it, and it asks for
 * its id back). A restarted instance gets its id back only through the lease:
 * its adopter hands it over; and when it takes its id from a process that may
 * still run (a lease that had not lapsed), it waits until that lease would have
 * lapsed before it recovers (the earlier process acts only on what it listed
 * while it still held the lease by its own clock).
 */

import pg from 'pg';
import type { Logger } from 'pino';
import type { Config } from '../config.js';
import { errorMessage } from '../errors.js';
import { Coordinator } from '../coordinator/coordinator.js';
import { mergePages, type ListFilter, type ListPage } from '../coordinator/transaction-listing.js';
import { migrateWhenReachable } from './log-database.js';
import { Forwarder, type ForwardResult, type ForwardedRequest } from './forwarding.js';
import { LeaseStore, type Lease } from './lease-store.js';
import { LeaseView } from './lease-view.js';
import { SharedLogReader, type LoggedTransaction } from './shared-log-reader.js';
import { SharedParticipants } from './shared-participants.js';

interface Held {
  readonly epoch: string;
  /** performance.now() until which the lease is safely ours; 0 once we let it go. */
  validUntil: number;
  coordinator?: Coordinator;
  /** Being halted (handed over, or lost): renewed until the halt is done, used for nothing. */
  halting?: boolean;
  /**
   * Halted, and its lease may still be live in the database (not released: lost, or the release
   * failed): no longer renewed, but its log is still read here for requests that reach this
   * instance, until the lease must have lapsed.
   */
  gone?: boolean;
}

export interface ClusterView {
  readonly mode: 'cluster';
  readonly instance: string;
  readonly leaseMs: number;
  readonly leases: readonly (Lease & { readonly adoptedBy?: string })[];
  readonly adopted: readonly string[];
}

export class Cluster {
  #home: Coordinator | undefined;
  readonly #config: Config;
  readonly #logger: Logger;
  readonly #pool: pg.Pool;
  readonly #leases: LeaseStore;
  readonly #shared: SharedParticipants;
  readonly #held = new Map<string, Held>();
  readonly #onHomeLost: (reason: string) => void;
  readonly #forwarder: Forwarder;
  /** The other live instances and every live lease, as of the last look. */
  readonly #view: LeaseView;
  readonly #reader: SharedLogReader;
  readonly #readPool: pg.Pool;
  readonly #background = new Set<Promise<void>>();
  #renewTimer: NodeJS.Timeout | undefined;
  #workTimer: NodeJS.Timeout | undefined;
  #renewing: Promise<void> | undefined;
  #working: Promise<void> | undefined;
  #stopped = false;
  #syncing: Promise<void> | undefined;

  private constructor(config: Config, logger: Logger, pool: pg.Pool, onHomeLost: (reason: string) => void) {
    this.#config = config;
    this.#logger = logger;
    this.#pool = pool;
    this.#leases = new LeaseStore(pool, config.leaseMs);
    this.#view = new LeaseView(this.#leases, config.coordinatorId ?? '');
    this.#shared = new SharedParticipants(pool, config.coordinatorId ?? '');
    // Reads of other ids' logs have connections of their own: they never delay a renewal.
    const readTimeoutMs = Math.max(10_000, config.leaseMs);
    this.#readPool = new pg.Pool({
      connectionString: config.logUrl,
      max: 2,
      connectionTimeoutMillis: readTimeoutMs,
      statement_timeout: readTimeoutMs,
      query_timeout: readTimeoutMs + 1_000,
      keepAlive: true,
      application_name: `tcx-reader:${config.coordinatorId ?? ''}`,
    });
    this.#readPool.on('error', () => undefined); // a broken idle connection: the next read fails and answers 503
    this.#reader = new SharedLogReader(this.#readPool, logger);
    this.#onHomeLost = onHomeLost;
    const hop = Math.max(1_000, config.participantTimeoutMs);
    // A state change may wait for votes and acknowledgements at the owner: its hop is that long.
    const change = config.statementTimeoutMs + config.participantTimeoutMs + config.connectTimeoutMs + 5_000 + config.commitWaitMs + 1_000;
    this.#forwarder = new Forwarder(config.coordinatorId ?? '', { readMs: hop, changeMs: change });
  }

  get home(): Coordinator {
    if (this.#home === undefined) throw new Error('the cluster has not started');
    return this.#home;
  }

  get #me(): string {
    return this.#config.coordinatorId ?? '';
  }

  /** Takes the lease on this instance's id (waiting, bounded, while another holds it), recovers, and keeps renewing. */
  static async start(config: Config, logger: Logger, onHomeLost: (reason: string) => void): Promise<Cluster> {
    const me = config.coordinatorId ?? '';
    const timeoutMs = Math.max(2_000, config.leaseMs);
    const pool = new pg.Pool({
      connectionString: config.logUrl,
      max: 4,
      connectionTimeoutMillis: timeoutMs,
      statement_timeout: timeoutMs,
      query_timeout: timeoutMs + 1_000,
      // Never queue behind a paused writer's row lock for long: try again at the next tick.
      lock_timeout: Math.max(200, Math.floor(config.leaseMs / 5)),
      keepAlive: true,
      application_name: `tcx-cluster:${me}`,
    });
    pool.on('error', (err) => logger.warn({ err: errorMessage(err) }, 'cluster: log database connection failed'));
    const cluster = new Cluster(config, logger, pool, onHomeLost);
    try {
      await migrateWhenReachable(pool, config.logWaitMs, logger);
      const lease = await cluster.#acquireOwn();
      const home = await Coordinator.start(config, logger, {
        lease: { epoch: lease.epoch, held: () => performance.now() < lease.validUntil },
        shared: cluster.#shared,
        liveElsewhere: (id) => cluster.#liveElsewhere(id),
      });
      lease.coordinator = home;
      cluster.#home = home;
      await cluster.syncParticipants();
      await cluster.#view.look(); // the other instances are known before the first request
      cluster.#scheduleWork();
      logger.info({ coordinatorId: me, epoch: lease.epoch, leaseMs: config.leaseMs }, "cluster: holding the lease on this instance's id");
      return cluster;
    } catch (err) {
      await cluster.stop(1_000).catch(() => undefined);
      throw err;
    }
  }

  /** True when a coordinator run here (its own, or adopted) runs or knows the transaction. */
  async knows(transactionId: string): Promise<boolean> {
    for (const h of this.#held.values()) if (h.halting !== true && h.coordinator !== undefined && (await h.coordinator.knows(transactionId))) return true;
    return false;
  }

  /**
   * Asks the other live instances about a transaction this one does not know. When none knows
   * it, the leases are read again and, if any changed hands since the last look (an id handed
   * back to its restarted instance, or adopted), the new holders are asked too: the look every
   * third of a lease may not have seen the change yet, and "unknown" would mean presumed abort.
   */
  async forward(req: ForwardedRequest): Promise<ForwardResult> {
    // The view the first round goes by, taken before it: a look meanwhile must count as a change.
    const before = this.#view.holders;
    const asked = this.#view.peers;
    const startedAt = performance.now();
    const first = await this.#forwarder.forward(asked, req);
    if (first.answer !== undefined || first.unreachable.length > 0) return first;
    try {
      await this.#view.lookSince(startedAt);
    } catch {
      return { ...first, unsure: true };
    }
    const askedHolders = new Set(asked.map((p) => p.holder));
    const moved = this.#view.newHoldersSince(before);
    const again = this.#view.peers.filter((p) => !askedHolders.has(p.holder) || moved.has(p.holder));
    return again.length === 0 ? first : this.#forwarder.forward(again, req);
  }

  /**
   * A transaction no running coordinator answers for, as the shared log holds it: looked up in
   * the logs of the ids held by instances that did not answer (`unreachable`), of lapsed ids not
   * adopted yet, and of ids adopted here whose recovery is still running. With `onlyHere`
   * (a forwarded request: the instance that forwarded it looks at the others) just the last.
   * Undefined when none of those logs holds it; without a view when it is not decided yet.
   */
  async fromLog(transactionId: string, unreachable: readonly string[], onlyHere: boolean): Promise<LoggedTransaction | undefined> {
    const ids = new Set<string>();
    // Starting (its recovery runs), or being handed back or let go (its coordinator stopped answering).
    for (const [id, h] of this.#held) if (h.coordinator === undefined || h.halting === true) ids.add(id);
    if (!onlyHere) {
      for (const [id, holder] of this.#view.holders) if (unreachable.includes(holder)) ids.add(id);
      for (const id of this.#view.lapsed) if (!this.#held.has(id)) ids.add(id);
    }
    return ids.size === 0 ? undefined : this.#reader.transaction(ids, transactionId);
  }

  /**
   * A page of the listing over every instance: this one's own and adopted coordinators, and
   * (unless the request was itself forwarded) every other live instance's, merged newest first.
   * Instances that did not answer are named; the page then may miss their transactions.
   */
  async list(filter: ListFilter, req: ForwardedRequest, forwarded: boolean): Promise<ListPage & { unreachable?: string[] }> {
    const pages: ListPage[] = [];
    for (const h of this.#held.values()) if (h.halting !== true && h.coordinator !== undefined) pages.push(h.coordinator.transactions.list(filter));
    if (forwarded) return mergePages(pages, filter.limit);
    const { answers, unreachable } = await this.#forwarder.askAll(this.#view.peers, req);
    const merged = mergePages([...pages, ...(answers as ListPage[])], filter.limit);
    return unreachable.length === 0 ? merged : { ...merged, unreachable };
  }

  /** The coordinator that runs or knows the transaction: this instance's own, or one it adopted. */
  async coordinatorFor(transactionId: string): Promise<Coordinator> {
    if (await this.home.knows(transactionId)) return this.home;
    for (const h of this.#held.values()) if (h.halting !== true && h.coordinator !== undefined && (await h.coordinator.knows(transactionId))) return h.coordinator;
    return this.home;
  }

  /** The coordinator run here for a coordinator id: this instance's own, or one it adopted (and still holds). */
  coordinatorOfId(coordinatorId: string): Coordinator | undefined {
    if (coordinatorId === this.#me) return this.home;
    const h = this.#held.get(coordinatorId);
    return h === undefined || h.halting === true ? undefined : h.coordinator;
  }

  async view(): Promise<ClusterView> {
    const leases = await this.#leases.list();
    const adopted = [...this.#held].filter(([id, h]) => id !== this.#me && h.halting !== true).map(([id]) => id);
    return {
      mode: 'cluster',
      instance: this.#me,
      leaseMs: this.#config.leaseMs,
      leases: leases.map((l) => (l.holder !== l.coordinatorId ? { ...l, adoptedBy: l.holder } : l)),
      adopted,
    };
  }

  /** Graceful stop: every coordinator run here stops, then their leases are given up at once. */
  async stop(deadlineMs: number): Promise<void> {
    this.#stopped = true;
    clearTimeout(this.#renewTimer);
    clearTimeout(this.#workTimer);
    await this.#working;
    await Promise.all(this.#background);
    // Stopping runs while the leases still hold (renewed here if it takes long).
    const renewing = setInterval(() => void this.#renew().catch(() => undefined), Math.floor(this.#config.leaseMs / 3));
    try {
      await Promise.all([...this.#held.values()].filter((h) => h.gone !== true).map((h) => h.coordinator?.stop(deadlineMs)));
    } finally {
      clearInterval(renewing);
      await this.#renewing;
    }
    for (const [id, h] of this.#held) {
      await this.#leases.release(id, this.#me, h.epoch).catch((err: unknown) => this.#logger.warn({ coordinatorId: id, err: errorMessage(err) }, 'cluster: releasing a lease failed'));
    }
    this.#held.clear();
    await this.#forwarder.close().catch(() => undefined);
    await this.#pool.end().catch(() => undefined);
    await this.#readPool.end().catch(() => undefined);
  }

  /**
   * Takes every participant the shared registry holds into this instance's coordinator (its own
   * log records it, after checking it from here), and removes those removed elsewhere. One that
   * cannot be taken is tried again only after a while. Concurrent callers share one pass.
   */
  syncParticipants(): Promise<void> {
    const home = this.#home;
    if (home === undefined) return Promise.resolve();
    this.#syncing ??= this.#shared.syncInto(home, this.#logger).finally(() => {
      this.#syncing = undefined;
    });
    return this.#syncing;
  }

  // ---- leases -----------------------------------------------------------------------------

  /** The instance holding the lease on another live coordinator id, or undefined. */
  #liveElsewhere(coordinatorId: string): string | undefined {
    const holder = this.#view.holders.get(coordinatorId);
    return holder === undefined || (holder === this.#me && coordinatorId === this.#me) ? undefined : holder;
  }

  /** This instance's own id: taken at once when it held it last or it lapsed; otherwise asked back from its adopter. */
  async #acquireOwn(): Promise<Held> {
    const me = this.#me;
    const leaseMs = this.#config.leaseMs;
    const deadline = Date.now() + 6 * leaseMs;
    for (let asked = false; ; ) {
      const sent = performance.now();
      const got = await this.#leases.acquire(me, me, this.#config.publicUrl, true);
      if (got !== undefined) {
        const held: Held = { epoch: got.epoch, validUntil: sent + safeFor(leaseMs) };
        this.#held.set(me, held);
        this.#scheduleRenewal(); // from now on, whatever recovery takes
        if (got.stillLiveMs > 0) {
          // The lease had not lapsed: the process that held it (a crash just now, or a duplicate
          // with the same id) may still act on what it listed until its own clock says the lease is
          // gone — which is before the lease would have lapsed. Create nothing new before then:
          // it then cannot have listed (and rolled back) a branch of this process.
          const waitMs = got.stillLiveMs + Math.ceil(leaseMs / 10);
          this.#logger.warn({ coordinatorId: me, waitMs }, 'cluster: took this id from a lease that had not lapsed (a restart, or another process with the same TCX_COORDINATOR_ID); waiting before recovery');
          await new Promise((r) => setTimeout(r, waitMs));
          if (held.halting === true) throw new Error(`lost the lease on ${me} while waiting to start`);
        }
        return held;
      }
      if (Date.now() > deadline) throw new Error(`the lease on ${me} is held by another instance and was not handed back within ${6 * leaseMs} ms`);
      if (!asked) this.#logger.warn({ coordinatorId: me }, 'cluster: this id is held by another instance; asking for it back');
      asked = true;
      await this.#leases.claim(me, me);
      await new Promise((r) => setTimeout(r, Math.max(50, Math.floor(leaseMs / 10))));
    }
  }

  #scheduleRenewal(): void {
    if (this.#stopped) return;
    this.#renewTimer = setTimeout(() => {
      this.#renewing = this.#renew()
        .catch((err: unknown) => this.#logger.error({ err: errorMessage(err) }, 'cluster: renewal failed'))
        .finally(() => {
          this.#renewing = undefined;
          this.#scheduleRenewal();
        });
    }, Math.floor(this.#config.leaseMs / 3));
    this.#renewTimer.unref();
  }

  /** Renews every lease held; decides (never waits for) hand-overs and step-downs. */
  async #renew(): Promise<void> {
    const started = performance.now();
    const epochs = new Map([...this.#held].filter(([, h]) => h.gone !== true).map(([id, h]) => [id, h.epoch]));
    if (epochs.size === 0) return;
    let renewed: Map<string, string | null> | undefined;
    try {
      renewed = (await this.#leases.renew(this.#me, epochs)).renewed;
    } catch (err) {
      this.#logger.warn({ err: errorMessage(err) }, 'cluster: renewing leases failed; retrying');
    }
    for (const [id, h] of [...this.#held]) {
      if (h.halting === true || h.gone === true) continue; // renewed (or lapsing) until its halt is done
      const failed = h.coordinator?.logFailed;
      if (failed !== undefined) {
        // Fail-stopped: it decides nothing more, and must not keep the id from a healthy instance.
        this.#letGo(id, h, `its write-ahead log failed: ${failed.message}`, true);
        continue;
      }
      if (renewed?.has(id) === true) {
        h.validUntil = started + safeFor(this.#config.leaseMs);
        const wantedBy = renewed.get(id);
        if (id !== this.#me && wantedBy !== null && wantedBy !== undefined) this.#letGo(id, h, `handed back to ${wantedBy}`, true);
        continue;
      }
      // Not renewed: lost for sure (renewal answered without it), or unknown until the local validity runs out.
      if (renewed === undefined && performance.now() < h.validUntil) continue;
      this.#letGo(id, h, renewed === undefined ? 'the log database could not be reached for most of a lease' : 'the lease lapsed or passed to another instance', false);
    }
  }

  /**
   * Stops driving an id at once (nothing more is sent), halts its coordinator in the background
   * while the lease is still renewed, then releases the lease (when it is still ours). Losing the
   * own id steps the instance down.
   */
  #letGo(id: string, h: Held, reason: string, release: boolean | 'settle'): void {
    h.validUntil = 0;
    h.halting = true;
    const home = id === this.#me;
    this.#logger[home ? 'error' : 'warn']({ coordinatorId: id, epoch: h.epoch, reason }, home ? "cluster: stepping down: this instance's own id is no longer safely held" : 'cluster: letting an adopted id go');
    const job = (async () => {
      await h.coordinator?.halt().catch((err: unknown) => this.#logger.error({ coordinatorId: id, err: errorMessage(err) }, 'cluster: halting failed'));
      let released = false;
      if (release !== false) {
        released = await (release === 'settle' ? this.#leases.settle(id, this.#me, h.epoch) : this.#leases.release(id, this.#me, h.epoch)).then(
          () => true,
          (err: unknown) => {
            this.#logger.warn({ coordinatorId: id, err: errorMessage(err) }, 'cluster: releasing a lease failed');
            return false;
          },
        );
      }
      if (released || home) {
        this.#held.delete(id);
      } else {
        // Its lease may stay live for up to a lease: its log is still read here meanwhile.
        h.gone = true;
        const forget = setTimeout(() => {
          if (this.#held.get(id) === h) this.#held.delete(id);
        }, this.#config.leaseMs);
        forget.unref();
      }
      if (home) {
        this.#stopped = true;
        this.#onHomeLost(reason);
      }
    })();
    this.#background.add(job);
    void job.finally(() => this.#background.delete(job));
  }

  // ---- adoption and the registry (a loop of its own: it may take long) --------------------

  #scheduleWork(): void {
    if (this.#stopped) return;
    this.#workTimer = setTimeout(() => {
      this.#working = this.#work().finally(() => {
        this.#working = undefined;
        this.#scheduleWork();
      });
    }, Math.floor(this.#config.leaseMs / 3));
    this.#workTimer.unref();
  }

  async #work(): Promise<void> {
    await this.#adoptLapsed().catch((err: unknown) => this.#logger.warn({ err: errorMessage(err) }, 'cluster: looking for lapsed leases failed'));
    if (!this.#stopped) await this.syncParticipants();
    if (!this.#stopped) this.#settleIdle();
  }

  /**
   * An adopted id with nothing left to do (nothing running or unfinished, nothing retained for
   * queries, a clean sweep) is given up for good: no survivor adopts it again, so a dead
   * instance's id costs nothing once its work is done. Its own instance can still take it.
   */
  #settleIdle(): void {
    for (const [id, h] of this.#held) {
      if (id === this.#me || h.halting === true || h.coordinator?.settled() !== true) continue;
      this.#letGo(id, h, 'nothing is left to do under it: settled', 'settle');
    }
  }

  /** Looks at every lease: who else is live (where requests are forwarded), and which lapsed. */
  async #adoptLapsed(): Promise<void> {
    const leases = await this.#view.look();
    for (const lease of leases) {
      const here = this.#held.get(lease.coordinatorId);
      if (this.#stopped || !lease.expired || lease.settled || (here !== undefined && here.gone !== true)) continue;
      if (lease.wantedBy !== null && lease.wantedBy !== this.#me) continue; // its own instance is taking it back
      const sent = performance.now();
      const got = await this.#leases.acquire(lease.coordinatorId, this.#me, this.#config.publicUrl, false);
      if (got === undefined) continue; // another survivor was faster
      await this.#adopt(lease.coordinatorId, { epoch: got.epoch, validUntil: sent + safeFor(this.#config.leaseMs) });
    }
  }

  async #adopt(id: string, h: Held): Promise<void> {
    this.#held.set(id, h);
    this.#logger.warn({ coordinatorId: id, epoch: h.epoch }, 'cluster: adopting a lapsed coordinator id; running its recovery');
    try {
      const config: Config = { ...this.#config, coordinatorId: id, failPoint: undefined };
      h.coordinator = await Coordinator.start(config, this.#logger.child({ adopted: id }), {
        lease: { epoch: h.epoch, held: () => performance.now() < h.validUntil },
        liveElsewhere: (other) => this.#liveElsewhere(other),
      });
    } catch (err) {
      this.#logger.error({ coordinatorId: id, err: errorMessage(err) }, 'cluster: recovery of an adopted id failed; giving the lease up');
      this.#letGo(id, h, 'its recovery failed', true);
    }
  }
}

/** How long after a renewal was sent the lease is safely ours by the local clock: most of it, not all. */
function safeFor(leaseMs: number): number {
  return Math.floor(leaseMs * 0.75);
}
