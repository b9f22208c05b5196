/**
 * Takeover figures of a chaos run over several instances. For every instance that went away
 * (a SIGKILL, a fail point, a step-down), from the moment it went:
 *
 *   takeover   until GET /v1/cluster on a survivor (polled every ~100 ms) shows that id's
 *              lease live under a newer epoch than the dead process held: adopted by another
 *              instance, or taken again by its own restarted process, whichever came first
 *   in doubt   until no branch of that id that was prepared when it went is prepared any more:
 *              Postgres A and B (pg_prepared_xacts, gid prefix tcx:<id>:), Redis (the staged
 *              index tcx:staged:<id>) and the ledger (branches prepared or precommitted), read
 *              directly every ~250 ms (Redis: an index entry whose staged record exists). The branches counted are those seen in the first
 *              ~500 ms after the loss (longer while a store did not answer, never after the
 *              instance runs again); a loss that left none has an in-doubt time of 0.
 */
import { Redis } from 'ioredis';
import pg from 'pg';
import { sleep } from '../../test/support/spawned-process.js';
import { runningInstances, type ChaosEnvironment } from './environment.js';
import type { Loss, LossObserver } from './scheduler.js';

interface LossRecord {
  readonly id: string;
  readonly how: Loss;
  /** Date.now() of the loss. */
  readonly at: number;
  /** The epoch of the id's lease when it went (read from the log database); undefined until read. */
  epoch?: bigint;
  takeoverMs?: number;
  takenBy?: string;
  /** Branches (store:gid) of the id prepared right after the loss. */
  readonly inDoubt: Set<string>;
  /** Stores that answered at least once while the branches were being collected. */
  readonly answered: Set<string>;
  collecting: boolean;
  inDoubtMs?: number;
}

export interface LossFigures {
  /** Since the start of the run. */
  readonly atMs: number;
  readonly id: string;
  readonly how: Loss;
  readonly takeoverMs?: number;
  readonly takenBy?: string;
  readonly inDoubtBranches: number;
  readonly inDoubtMs?: number;
}

export interface Figures {
  readonly count: number;
  readonly maxMs?: number;
  readonly medianMs?: number;
}

export interface TakeoverSummary {
  readonly losses: readonly LossFigures[];
  /** Over every loss whose takeover was seen. */
  readonly takeover: Figures & { readonly bySurvivor: number; readonly byItself: number; readonly notSeen: number };
  /** Over every loss that left branches prepared; `none`: losses that left none; `unresolved`: still prepared at the end. */
  readonly inDoubt: Figures & { readonly none: number; readonly unresolved: number };
}

const STORE_KEYS = ['A', 'B', 'R', 'L'] as const;
const COLLECT_MS = 500;
const COLLECT_MAX_MS = 3_000;

export function figures(values: readonly number[]): Figures {
  if (values.length === 0) return { count: 0 };
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  const median = sorted.length % 2 === 1 ? (sorted[mid] as number) : Math.round(((sorted[mid - 1] as number) + (sorted[mid] as number)) / 2);
  return { count: sorted.length, maxMs: sorted[sorted.length - 1] as number, medianMs: median };
}

/** One lazily (re)connected Postgres client with short deadlines, one query at a time: a store may be down at any time. */
class Probe {
  #client: pg.Client | undefined;
  #chain: Promise<unknown> = Promise.resolve();
  constructor(private readonly url: string) {}

  query<R extends pg.QueryResultRow>(sql: string, params: unknown[] = []): Promise<R[]> {
    const next = this.#chain.then(() => this.#query<R>(sql, params));
    this.#chain = next.catch(() => undefined);
    return next;
  }

  async #query<R extends pg.QueryResultRow>(sql: string, params: unknown[]): Promise<R[]> {
    try {
      if (this.#client === undefined) {
        const c = new pg.Client({ connectionString: this.url, connectionTimeoutMillis: 1_000, query_timeout: 2_000 });
        c.on('error', () => undefined);
        await c.connect().catch(async (err: unknown) => {
          await c.end().catch(() => undefined);
          throw err;
        });
        this.#client = c;
      }
      return (await this.#client.query<R>(sql, params)).rows;
    } catch (err) {
      const c = this.#client;
      this.#client = undefined;
      await c?.end().catch(() => undefined);
      throw err;
    }
  }

  async close(): Promise<void> {
    await this.#chain;
    await this.#client?.end().catch(() => undefined);
    this.#client = undefined;
  }
}

export class TakeoverMonitor implements LossObserver {
  readonly #env: ChaosEnvironment;
  readonly #startedAt: number;
  readonly #losses: LossRecord[] = [];
  readonly #log: Probe;
  readonly #a: Probe;
  readonly #b: Probe;
  readonly #redis: Redis;
  #running = true;
  readonly #wakers = new Set<() => void>();
  readonly #loops: Promise<void>[];

  constructor(env: ChaosEnvironment, startedAt: number) {
    if (env.logUrl === undefined) throw new Error('chaos: takeover figures need the shared log');
    this.#env = env;
    this.#startedAt = startedAt;
    this.#log = new Probe(env.logUrl);
    this.#a = new Probe(env.dbA);
    this.#b = new Probe(env.dbB);
    this.#redis = new Redis(env.redis.url, { maxRetriesPerRequest: 1, connectTimeout: 1_000, commandTimeout: 2_000, lazyConnect: true, enableOfflineQueue: true });
    this.#redis.on('error', () => undefined);
    this.#loops = [this.#watchLeases(), this.#watchBranches()];
  }

  lost(id: string, how: Loss): void {
    const loss: LossRecord = { id, how, at: Date.now(), inDoubt: new Set(), answered: new Set(), collecting: true };
    this.#losses.push(loss);
    void this.#log
      .query<{ epoch: string }>('SELECT epoch::text AS epoch FROM tcx_lease WHERE coordinator_id = $1', [id])
      .then((rows) => {
        loss.epoch = rows[0] === undefined ? 0n : BigInt(rows[0].epoch);
      })
      .catch(() => {
        loss.epoch = 0n; // unknown: the first live lease seen counts
      });
    this.#wakeAll();
  }

  #wakeAll(): void {
    for (const wake of this.#wakers) wake();
  }

  /** Stops polling (call after the checks' wait, so late losses get their figures). */
  async stop(): Promise<TakeoverSummary> {
    this.#running = false;
    this.#wakeAll();
    await Promise.all(this.#loops);
    await Promise.all([this.#log.close(), this.#a.close(), this.#b.close()]);
    this.#redis.disconnect();
    return this.summary();
  }

  summary(): TakeoverSummary {
    const losses = this.#losses.map(
      (l): LossFigures => ({
        atMs: l.at - this.#startedAt,
        id: l.id,
        how: l.how,
        ...(l.takeoverMs === undefined ? {} : { takeoverMs: l.takeoverMs, takenBy: l.takenBy }),
        inDoubtBranches: l.inDoubt.size,
        ...(l.inDoubtMs === undefined ? {} : { inDoubtMs: l.inDoubtMs }),
      }),
    );
    const seen = losses.filter((l) => l.takeoverMs !== undefined);
    const withBranches = losses.filter((l) => l.inDoubtBranches > 0);
    return {
      losses,
      takeover: {
        ...figures(seen.map((l) => l.takeoverMs as number)),
        bySurvivor: seen.filter((l) => l.takenBy !== l.id).length,
        byItself: seen.filter((l) => l.takenBy === l.id).length,
        notSeen: losses.length - seen.length,
      },
      inDoubt: {
        ...figures(withBranches.filter((l) => l.inDoubtMs !== undefined).map((l) => l.inDoubtMs as number)),
        none: losses.length - withBranches.length,
        unresolved: withBranches.filter((l) => l.inDoubtMs === undefined).length,
      },
    };
  }

  /** Sleeps `ms`, or less when a loss is reported or polling stops. */
  async #pause(ms: number): Promise<void> {
    let wake: (() => void) | undefined;
    await Promise.race([sleep(ms), new Promise<void>((r) => this.#wakers.add((wake = r)))]);
    if (wake !== undefined) this.#wakers.delete(wake);
  }

  /** Every ~100 ms: a survivor's GET /v1/cluster; a loss is taken over once its id's lease is live under a newer epoch. */
  async #watchLeases(): Promise<void> {
    let turn = 0;
    while (this.#running) {
      const open = this.#losses.filter((l) => l.takeoverMs === undefined);
      if (open.length === 0) {
        await this.#pause(100);
        continue;
      }
      const lostIds = new Set(open.map((l) => l.id));
      const running = runningInstances(this.#env);
      const survivors = running.filter((i) => !lostIds.has(i.id));
      const pool = survivors.length > 0 ? survivors : running;
      const asked = pool[turn++ % Math.max(1, pool.length)];
      if (asked !== undefined) {
        try {
          const view = await asked.proc.request('GET', '/v1/cluster', undefined, 1_000);
          const now = Date.now();
          const leases = (view.body?.leases ?? []) as { coordinatorId: string; holder: string; epoch: string; expired: boolean }[];
          for (const l of open) {
            if (l.epoch === undefined) continue;
            const lease = leases.find((x) => x.coordinatorId === l.id);
            if (lease === undefined || lease.expired || BigInt(lease.epoch) <= l.epoch) continue;
            l.takeoverMs = now - l.at;
            l.takenBy = lease.holder;
          }
        } catch {
          // that instance did not answer: ask another one next time
        }
      }
      await sleep(100);
    }
  }

  /** Every ~250 ms while a loss has branches in doubt: which branches of which ids are prepared. */
  async #watchBranches(): Promise<void> {
    while (this.#running) {
      const open = this.#losses.filter((l) => l.collecting || (l.inDoubtMs === undefined && l.inDoubt.size > 0));
      if (open.length === 0) {
        await this.#pause(250);
        continue;
      }
      const ids = [...new Set(open.map((l) => l.id))];
      const prepared = await this.#prepared(ids);
      const t = Date.now();
      for (const l of open) {
        const prefix = `tcx:${l.id}:`;
        if (l.collecting) {
          for (const s of STORE_KEYS) {
            const gids = prepared[s];
            if (gids === undefined) continue;
            l.answered.add(s);
            for (const gid of gids) if (gid.startsWith(prefix)) l.inDoubt.add(`${s}:${gid}`);
          }
          const back = runningInstances(this.#env).some((i) => i.id === l.id);
          const elapsed = t - l.at;
          if ((elapsed >= COLLECT_MS && l.answered.size === STORE_KEYS.length) || elapsed >= COLLECT_MAX_MS || (back && elapsed >= COLLECT_MS)) {
            l.collecting = false;
            if (l.inDoubt.size === 0) l.inDoubtMs = 0;
          }
          if (l.collecting) continue;
        }
        // Resolved when no counted branch is still prepared on a store that answered (a store that did not keeps its own).
        const left = [...l.inDoubt].filter((key) => {
          const s = key.slice(0, 1) as (typeof STORE_KEYS)[number];
          const gids = prepared[s];
          return gids === undefined || gids.has(key.slice(2));
        });
        if (left.length === 0 && l.inDoubtMs === undefined) l.inDoubtMs = t - l.at;
      }
      await sleep(250);
    }
  }

  /** The prepared gids of the given ids on each store; undefined for a store that did not answer. */
  async #prepared(ids: readonly string[]): Promise<Partial<Record<(typeof STORE_KEYS)[number], Set<string>>>> {
    const pgGids = (probe: Probe): Promise<Set<string> | undefined> =>
      probe
        .query<{ gid: string }>("SELECT gid FROM pg_prepared_xacts WHERE starts_with(gid, 'tcx:')")
        .then((rows) => new Set(rows.map((r) => r.gid)))
        .catch(() => undefined);
    const redisGids = async (): Promise<Set<string> | undefined> => {
      try {
        if (this.#redis.status === 'wait' || this.#redis.status === 'end') await this.#redis.connect().catch(() => undefined);
        // The index names every branch prepared or possibly prepared; the staged record is the durable yes.
        const out = new Set<string>();
        for (const id of ids) {
          const index = await this.#redis.hgetall(`tcx:staged:${id}`);
          for (const [gid, record] of Object.entries(index)) if ((await this.#redis.exists(record)) === 1) out.add(gid);
        }
        return out;
      } catch {
        return undefined;
      }
    };
    const ledgerGids = async (): Promise<Set<string> | undefined> => {
      if (!this.#env.ledger.running) return undefined;
      try {
        const branches = await this.#env.ledger.branches();
        return new Set(branches.filter((b) => (b.status === 'prepared' || b.status === 'precommitted') && b.gid !== undefined).map((b) => b.gid as string));
      } catch {
        return undefined;
      }
    };
    const [A, B, R, L] = await Promise.all([pgGids(this.#a), pgGids(this.#b), redisGids(), ledgerGids()]);
    return { ...(A && { A }), ...(B && { B }), ...(R && { R }), ...(L && { L }) };
  }
}
