/**
 * The seeded fault schedule and its execution. The plan — which fault, when, for how long —
 * is a pure function of (seed, active period): the same seed gives the same plan. Timing on
 * a loaded machine can slip (a restart takes as long as it takes), so interleavings with the
 * workload differ between runs, but the faults and their order do not.
 *
 * Kinds:
 *   coordinator-kill     SIGKILL the coordinator mid-flight; restart it after a pause, in one
 *                        case out of two with a fail point armed for its N-th hit (it then
 *                        kills itself at that instant; a supervisor restarts it clean)
 *   participant-restart  A/B: SIGKILL Postgres and restart it; R: SIGKILL Redis and restart
 *                        it (AOF replay); L: close the ledger and reopen it over its files
 *   proxy fault          delay (20..600 ms for 1..4 s), drop (open connections cut, new ones
 *                        dropped for 0.5..3 s), cut open connections (instant), blackhole
 *                        (0.5..3 s)
 *
 * Process events run one at a time; proxy faults overlap them and heal by themselves.
 */
import type { CoordinatorProcess } from '../../test/support/coordinator-process.js';
import { FAIL_POINTS } from '../../src/coordinator/fail-points.js';
import { sleep } from '../../test/support/postgres-server.js';
import type { ChaosEnvironment, Store } from './environment.js';
import { STORES } from './environment.js';
import { between, choose, rng, weighted } from '../../test/support/seeded-random.js';

export type ProxyFaultKind = 'delay' | 'drop' | 'cut' | 'blackhole';

export type ChaosEvent =
  | { readonly at: number; readonly kind: 'coordinator-kill'; readonly pauseMs: number; readonly failPoint?: string }
  | { readonly at: number; readonly kind: 'participant-restart'; readonly store: Store; readonly downMs: number }
  | { readonly at: number; readonly kind: 'proxy'; readonly store: Store; readonly fault: ProxyFaultKind; readonly durationMs: number; readonly delayMs?: number };

export function describeEvent(e: ChaosEvent): string {
  switch (e.kind) {
    case 'coordinator-kill':
      return `coordinator SIGKILL, restart after ${e.pauseMs} ms${e.failPoint === undefined ? '' : ` armed with ${e.failPoint}`}`;
    case 'participant-restart':
      return `${e.store === 'L' ? 'ledger close/reopen' : `${e.store === 'R' ? 'redis' : `postgres ${e.store}`} SIGKILL/restart`}, down ${e.downMs} ms`;
    case 'proxy':
      return `proxy ${e.store}: ${e.fault}${e.fault === 'delay' ? ` ${e.delayMs} ms` : ''}${e.fault === 'cut' ? '' : ` for ${e.durationMs} ms`}`;
  }
}

/** The plan for `activeMs` of chaos: events from ~1.5 s on, every 0.6..2.5 s. */
export function planSchedule(seed: number, activeMs: number): ChaosEvent[] {
  const r = rng(seed ^ 0x5eed_c4a0);
  const events: ChaosEvent[] = [];
  for (let at = between(r, 1_200, 2_000); at < activeMs; at += between(r, 600, 2_500)) {
    const kind = weighted(r, { 'coordinator-kill': 18, 'participant-restart': 22, proxy: 60 });
    if (kind === 'coordinator-kill') {
      const armed = r() < 0.5;
      events.push({
        at,
        kind,
        pauseMs: between(r, 0, 1_500),
        ...(armed ? { failPoint: `${choose(r, FAIL_POINTS)}:${between(r, 1, 25)}` } : {}),
      });
    } else if (kind === 'participant-restart') {
      events.push({ at, kind, store: choose(r, STORES), downMs: between(r, 200, 2_500) });
    } else {
      const fault = weighted<ProxyFaultKind>(r, { delay: 30, drop: 25, cut: 25, blackhole: 20 });
      const store = choose(r, STORES);
      if (fault === 'delay') events.push({ at, kind, store, fault, durationMs: between(r, 1_000, 4_000), delayMs: between(r, 20, 600) });
      else if (fault === 'cut') events.push({ at, kind, store, fault, durationMs: 0 });
      else events.push({ at, kind, store, fault, durationMs: between(r, 500, 3_000) });
    }
  }
  return events;
}

export interface ScheduleStats {
  coordinatorKills: { plain: number; failPointsArmed: number; failPointsFired: Record<string, number>; total: number };
  participantRestarts: Record<Store, number>;
  faults: Record<ProxyFaultKind, number>;
  /** What happened, with the time since the start of the run. */
  readonly events: string[];
  /** Failures of the harness itself (a restart that failed): the run is not valid. */
  readonly harnessErrors: string[];
}

export function emptyStats(): ScheduleStats {
  return {
    coordinatorKills: { plain: 0, failPointsArmed: 0, failPointsFired: {}, total: 0 },
    participantRestarts: { A: 0, B: 0, R: 0, L: 0 },
    faults: { delay: 0, drop: 0, cut: 0, blackhole: 0 },
    events: [],
    harnessErrors: [],
  };
}

/** Serializes everything done to the coordinator process (kills, restarts, the supervisor). */
class CoordinatorControl {
  #chain: Promise<unknown> = Promise.resolve();
  /** The fail point the running generation was started with, if any. */
  armed: string | undefined;

  constructor(
    readonly coord: CoordinatorProcess,
    private readonly note: (line: string) => void,
    private readonly stats: ScheduleStats,
  ) {}

  run<T>(fn: () => Promise<T>): Promise<T> {
    const next = this.#chain.then(fn, fn);
    this.#chain = next.catch(() => undefined);
    return next;
  }

  /** Restarts; with a fail point the new process may die before it is ready (it is then restarted clean later). */
  async restart(failPoint?: string): Promise<void> {
    this.armed = failPoint;
    try {
      await this.coord.restart(failPoint === undefined ? {} : { TCX_FAIL_POINT: failPoint });
    } catch (err) {
      if (failPoint === undefined || this.coord.running) throw err;
    }
  }

  /** If the process died by itself (a fail point fired), restart it clean. */
  async supervise(): Promise<void> {
    await this.run(async () => {
      if (this.coord.running) return;
      const fired = this.armed;
      if (fired !== undefined) {
        const name = fired.split(':')[0] ?? fired;
        this.stats.coordinatorKills.failPointsFired[name] = (this.stats.coordinatorKills.failPointsFired[name] ?? 0) + 1;
        this.stats.coordinatorKills.total++;
        this.note(`coordinator killed itself at fail point ${fired}; restarting clean`);
      } else {
        this.note('coordinator is not running; restarting');
      }
      await this.restart();
    });
  }
}

export interface Scheduler {
  /** Resolves when every planned event ran (or `stopped()` cut the plan short). */
  readonly done: Promise<void>;
  /** Ends every fault, restarts whatever is down, and leaves the coordinator running without a fail point. */
  healAll(): Promise<void>;
}

export function startScheduler(
  env: ChaosEnvironment,
  plan: readonly ChaosEvent[],
  options: { readonly startedAt: number; readonly stopped: () => boolean; readonly log: (line: string) => void; readonly stats: ScheduleStats },
): Scheduler {
  const { stats } = options;
  const note = (line: string): void => {
    const now = new Date();
    const entry = `+${((now.getTime() - options.startedAt) / 1000).toFixed(1)}s (${now.toISOString().slice(11, 23)}) ${line}`;
    stats.events.push(entry);
    options.log(`chaos: ${entry}`);
  };
  const control = new CoordinatorControl(env.coord, note, stats);
  const heals = new Map<string, { timer: NodeJS.Timeout; heal: () => void }>();
  let supervising = true;

  const supervisor = (async () => {
    while (supervising) {
      if (!env.coord.running) await control.supervise().catch((err: unknown) => note(`supervisor: restart failed: ${String(err)}`));
      await sleep(100);
    }
  })();

  const faultFor = (store: Store, fault: ProxyFaultKind, durationMs: number, apply: () => void, heal: () => void): void => {
    stats.faults[fault]++;
    apply();
    if (durationMs <= 0) return;
    const key = `${store}:${fault}`;
    const previous = heals.get(key);
    if (previous !== undefined) clearTimeout(previous.timer); // the new fault's heal takes over
    const timer = setTimeout(() => {
      heals.delete(key);
      heal();
    }, durationMs);
    heals.set(key, { timer, heal });
  };

  async function runEvent(e: ChaosEvent): Promise<void> {
    note(describeEvent(e));
    switch (e.kind) {
      case 'proxy': {
        const proxy = env.proxies[e.store];
        if (e.fault === 'delay') faultFor(e.store, 'delay', e.durationMs, () => proxy.setDelay(e.delayMs ?? 0), () => proxy.setDelay(0));
        else if (e.fault === 'drop') {
          // The link goes down: open connections are reset and new ones dropped until it heals.
          faultFor(e.store, 'drop', e.durationMs, () => (proxy.dropNewConnections(true), void proxy.cutOpenConnections()), () => proxy.dropNewConnections(false));
        }
        else if (e.fault === 'blackhole') faultFor(e.store, 'blackhole', e.durationMs, () => proxy.blackhole(true), () => proxy.blackhole(false));
        else faultFor(e.store, 'cut', 0, () => void proxy.cutOpenConnections(), () => undefined);
        return;
      }
      case 'coordinator-kill':
        await control.run(async () => {
          if (env.coord.running) {
            await env.coord.kill();
            stats.coordinatorKills.total++;
            stats.coordinatorKills.plain++;
          }
          await sleep(e.pauseMs);
          if (e.failPoint !== undefined) stats.coordinatorKills.failPointsArmed++;
          await control.restart(e.failPoint);
        });
        return;
      case 'participant-restart': {
        stats.participantRestarts[e.store]++;
        if (e.store === 'L') {
          await env.ledger.stop();
          await sleep(e.downMs);
          await env.ledger.start();
          if (env.proxies.L.target.port !== env.ledger.port) env.proxies.L.setTarget({ host: '127.0.0.1', port: env.ledger.port });
          return;
        }
        const server = e.store === 'A' ? env.pgA : e.store === 'B' ? env.pgB : env.redis;
        await server.kill();
        await sleep(e.downMs);
        await server.restart();
        return;
      }
    }
  }

  const done = (async () => {
    for (const e of plan) {
      const wait = options.startedAt + e.at - Date.now();
      if (wait > 0) await sleep(wait);
      if (options.stopped()) break;
      try {
        await runEvent(e);
      } catch (err) {
        const message = `${describeEvent(e)} failed: ${err instanceof Error ? err.message : String(err)}`;
        stats.harnessErrors.push(message);
        note(`HARNESS ERROR: ${message}`);
      }
    }
  })();

  return {
    done,
    async healAll(): Promise<void> {
      await done.catch(() => undefined);
      for (const { timer, heal } of heals.values()) {
        clearTimeout(timer);
        heal();
      }
      heals.clear();
      for (const s of STORES) env.proxies[s].reset();
      if (!env.pgA.running) await env.pgA.restart();
      if (!env.pgB.running) await env.pgB.restart();
      if (!env.redis.running) await env.redis.restart();
      if (!env.ledger.running) await env.ledger.start();
      supervising = false;
      await supervisor;
      await control.run(async () => {
        if (!env.coord.running || control.armed !== undefined) {
          if (env.coord.running) {
            note(`healing: restarting the coordinator without its fail point ${control.armed ?? ''}`);
            await env.coord.kill();
            stats.coordinatorKills.total++;
            stats.coordinatorKills.plain++;
          } else if (control.armed !== undefined) {
            const name = control.armed.split(':')[0] ?? control.armed;
            stats.coordinatorKills.failPointsFired[name] = (stats.coordinatorKills.failPointsFired[name] ?? 0) + 1;
            stats.coordinatorKills.total++;
          }
          await control.restart();
        }
      });
      note('healed: every fault ended, every process running');
    },
  };
}
