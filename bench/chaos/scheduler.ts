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
 * With several coordinator instances (a shared log) the coordinator kills become instance
 * faults; every other event of the plan stays what the same seed plans for one instance:
 *
 *   instance-kill        SIGKILL one seeded instance; restart it after the pause, with the
 *                        fail point (if any) armed, as coordinator-kill does
 *   instance-kill-for-good  at most once per run (3+ instances), while at least two others
 *                        are up: SIGKILL one and keep it down for the rest of the active
 *                        period; then it is restarted before the checks, or left down (the
 *                        survivors must have adopted its id), as the plan says
 *
 * The run also supervises: an instance that exited by itself (a fail point fired, or it lost
 * its own lease and stepped down with exit code 3) is restarted after a short pause.
 *
 * Process events run one at a time; proxy faults overlap them and heal by themselves.
 */
import type { CoordinatorProcess } from '../../test/support/coordinator-process.js';
import { FAIL_POINTS } from '../../src/coordinator/fail-points.js';
import { sleep } from '../../test/support/spawned-process.js';
import type { ChaosEnvironment, ChaosInstance, Store } from './environment.js';
import { CLUSTER_READY_MS, instanceId, STORES } from './environment.js';
import { between, choose, rng, weighted } from '../../test/support/seeded-random.js';

export type ProxyFaultKind = 'delay' | 'drop' | 'cut' | 'blackhole';

export type ChaosEvent =
  | { readonly at: number; readonly kind: 'coordinator-kill'; readonly pauseMs: number; readonly failPoint?: string }
  /** `instance`: index into the instances (0 = inst-1). */
  | { readonly at: number; readonly kind: 'instance-kill'; readonly instance: number; readonly pauseMs: number; readonly failPoint?: string }
  | { readonly at: number; readonly kind: 'instance-kill-for-good'; readonly instance: number; readonly restartAtEnd: boolean }
  | { readonly at: number; readonly kind: 'participant-restart'; readonly store: Store; readonly downMs: number }
  | { readonly at: number; readonly kind: 'proxy'; readonly store: Store; readonly fault: ProxyFaultKind; readonly durationMs: number; readonly delayMs?: number };

export function describeEvent(e: ChaosEvent): string {
  switch (e.kind) {
    case 'coordinator-kill':
      return `coordinator SIGKILL, restart after ${e.pauseMs} ms${e.failPoint === undefined ? '' : ` armed with ${e.failPoint}`}`;
    case 'instance-kill':
      return `${instanceId(e.instance)} SIGKILL, restart after ${e.pauseMs} ms${e.failPoint === undefined ? '' : ` armed with ${e.failPoint}`}`;
    case 'instance-kill-for-good':
      return `${instanceId(e.instance)} SIGKILL for good (${e.restartAtEnd ? 'restarted after the active period' : 'left down for the checks'})`;
    case 'participant-restart':
      return `${e.store === 'L' ? 'ledger close/reopen' : `${e.store === 'R' ? 'redis' : `postgres ${e.store}`} SIGKILL/restart`}, down ${e.downMs} ms`;
    case 'proxy':
      return `proxy ${e.store}: ${e.fault}${e.fault === 'delay' ? ` ${e.delayMs} ms` : ''}${e.fault === 'cut' ? '' : ` for ${e.durationMs} ms`}`;
  }
}

/**
 * The plan for `activeMs` of chaos: events from ~1.5 s on, every 0.6..2.5 s. With several
 * `instances`, the same plan with each coordinator kill turned into an instance fault (a
 * second seeded stream picks the instances, so everything else is what one instance gets).
 */
export function planSchedule(seed: number, activeMs: number, instances = 1): ChaosEvent[] {
  const events = planSingle(seed, activeMs);
  return instances > 1 ? withInstances(seed, activeMs, instances, events) : events;
}

function planSingle(seed: number, activeMs: number): ChaosEvent[] {
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

/**
 * Coordinator kills become instance kills of seeded instances; with 3+ instances one kill in the
 * first 60% of the active period is for good (the others then target the instances still up).
 */
function withInstances(seed: number, activeMs: number, instances: number, base: readonly ChaosEvent[]): ChaosEvent[] {
  const r = rng((seed ^ 0x1257_a9c3) + instances * 7_919);
  const kills = base.flatMap((e, i) => (e.kind === 'coordinator-kill' ? [i] : []));
  const candidates = instances >= 3 ? kills.filter((i) => (base[i] as ChaosEvent).at <= activeMs * 0.6) : [];
  const forGood = candidates.length > 0 ? choose(r, candidates) : -1;
  let gone: number | undefined;
  return base.map((e, i): ChaosEvent => {
    if (e.kind !== 'coordinator-kill') return e;
    const instance = choose(
      r,
      Array.from({ length: instances }, (_, k) => k).filter((k) => k !== gone),
    );
    if (i === forGood) {
      gone = instance;
      return { at: e.at, kind: 'instance-kill-for-good', instance, restartAtEnd: r() < 0.5 };
    }
    return { at: e.at, kind: 'instance-kill', instance, pauseMs: e.pauseMs, ...(e.failPoint === undefined ? {} : { failPoint: e.failPoint }) };
  });
}

/** How an instance went away (for the takeover figures). */
export type Loss = 'SIGKILL' | 'SIGKILL for good' | 'fail point' | 'step-down' | 'exit';

/** Told of every instance that went away (killed, or found dead by the supervisor). */
export interface LossObserver {
  lost(id: string, how: Loss): void;
}

export interface ScheduleStats {
  coordinatorKills: { plain: number; failPointsArmed: number; failPointsFired: Record<string, number>; total: number };
  /** Several instances: kills (SIGKILL and fail points) by instance id. */
  instanceKills: Record<string, number>;
  /** Several instances: exits with code 3 (lost its own lease, stepped down), restarted by the run. */
  stepDowns: Record<string, number>;
  /** Several instances: exits that were neither a kill, a fail point nor a step-down. */
  readonly otherExits: string[];
  /** The instance killed for good, if any. */
  forGood?: { id: string; atMs: number; restartAtEnd: boolean; restarted: boolean };
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
    instanceKills: {},
    stepDowns: {},
    otherExits: [],
    participantRestarts: { A: 0, B: 0, R: 0, L: 0 },
    faults: { delay: 0, drop: 0, cut: 0, blackhole: 0 },
    events: [],
    harnessErrors: [],
  };
}

/** Serializes everything done to one coordinator process (kills, restarts, the supervisor). */
class InstanceControl {
  #chain: Promise<unknown> = Promise.resolve();
  /** The fail point the running generation was started with, if any. */
  armed: string | undefined;
  /** Killed for good: the supervisor leaves it down. */
  downForGood = false;

  constructor(
    readonly instance: ChaosInstance,
    /** Several instances over a shared log (exit code 3 means a step-down; restarts may wait for a hand-over). */
    readonly cluster: boolean,
    private readonly note: (line: string) => void,
    private readonly stats: ScheduleStats,
    private readonly observer: LossObserver | undefined,
  ) {}

  get proc(): CoordinatorProcess {
    return this.instance.proc;
  }

  /** How the notes name it: "coordinator" alone, else its id. */
  get name(): string {
    return this.cluster ? this.instance.id : 'coordinator';
  }

  run<T>(fn: () => Promise<T>): Promise<T> {
    const next = this.#chain.then(fn, fn);
    this.#chain = next.catch(() => undefined);
    return next;
  }

  /** SIGKILL (when running), counted as a plain kill. */
  async kill(how: Loss = 'SIGKILL'): Promise<void> {
    if (!this.proc.running) return;
    await this.proc.kill();
    this.stats.coordinatorKills.total++;
    this.stats.coordinatorKills.plain++;
    this.#lost(how);
  }

  #lost(how: Loss): void {
    if (!this.cluster) return;
    if (how !== 'step-down' && how !== 'exit') this.stats.instanceKills[this.instance.id] = (this.stats.instanceKills[this.instance.id] ?? 0) + 1;
    this.observer?.lost(this.instance.id, how);
  }

  #firedFailPoint(): void {
    const fired = this.armed ?? '';
    const name = fired.split(':')[0] ?? fired;
    this.stats.coordinatorKills.failPointsFired[name] = (this.stats.coordinatorKills.failPointsFired[name] ?? 0) + 1;
    this.stats.coordinatorKills.total++;
    this.#lost('fail point');
  }

  /**
   * Restarts. The new process may die before it is ready — with a fail point armed, or (several
   * instances) by stepping down with exit code 3 when it cannot hold its lease — and is then
   * restarted clean by the supervisor.
   */
  async restart(failPoint?: string): Promise<void> {
    this.armed = failPoint;
    try {
      const env: Record<string, string> = failPoint === undefined ? {} : { TCX_FAIL_POINT: failPoint };
      if (this.cluster) await this.proc.restart(env, CLUSTER_READY_MS);
      else await this.proc.restart(env);
    } catch (err) {
      if (this.proc.running) throw err;
      if (failPoint !== undefined) return;
      if (this.cluster && (await this.proc.exited.catch(() => undefined))?.code === 3) return;
      throw err;
    }
  }

  /** If the process died by itself (a fail point fired, it stepped down), restart it clean. */
  async supervise(): Promise<void> {
    await this.run(async () => {
      if (this.proc.running || this.downForGood) return;
      const fired = this.armed;
      const exit = this.cluster ? await this.proc.exited.catch(() => undefined) : undefined;
      if (fired !== undefined && (!this.cluster || exit?.signal === 'SIGKILL')) {
        this.#firedFailPoint();
        this.note(`${this.name} killed itself at fail point ${fired}; restarting clean`);
      } else if (!this.cluster) {
        this.note('coordinator is not running; restarting');
      } else if (exit?.code === 3) {
        this.stats.stepDowns[this.instance.id] = (this.stats.stepDowns[this.instance.id] ?? 0) + 1;
        this.#lost('step-down');
        this.note(`${this.name} stepped down (exit code 3: its own lease was no longer safely held); restarting after ${SUPERVISOR_PAUSE_MS} ms`);
      } else {
        const what = `${this.name} exited by itself (code ${String(exit?.code)}, signal ${String(exit?.signal)}${fired === undefined ? '' : `, armed with ${fired}`})`;
        this.stats.otherExits.push(what);
        this.#lost('exit');
        this.note(`${what}; restarting after ${SUPERVISOR_PAUSE_MS} ms; its last output:\n${this.proc.tail(15)}`);
      }
      if (this.cluster) await sleep(SUPERVISOR_PAUSE_MS);
      await this.restart();
    });
  }
}

/** With several instances, the supervisor restarts an instance that exited by itself after this pause. */
const SUPERVISOR_PAUSE_MS = 500;

export interface Scheduler {
  /** Resolves when every planned event ran (or `stopped()` cut the plan short). */
  readonly done: Promise<void>;
  /**
   * Ends every fault, restarts whatever is down — except an instance killed for good whose plan
   * leaves it down — and leaves every instance running without a fail point.
   */
  healAll(): Promise<void>;
}

export function startScheduler(
  env: ChaosEnvironment,
  plan: readonly ChaosEvent[],
  options: {
    readonly startedAt: number;
    readonly stopped: () => boolean;
    readonly log: (line: string) => void;
    readonly stats: ScheduleStats;
    /** Several instances: told of every instance that went away. */
    readonly observer?: LossObserver;
  },
): Scheduler {
  const { stats } = options;
  const note = (line: string): void => {
    const now = new Date();
    const entry = `+${((now.getTime() - options.startedAt) / 1000).toFixed(1)}s (${now.toISOString().slice(11, 23)}) ${line}`;
    stats.events.push(entry);
    options.log(`chaos: ${entry}`);
  };
  const cluster = env.instances.length > 1;
  const controls = env.instances.map((i) => new InstanceControl(i, cluster, note, stats, options.observer));
  const heals = new Map<string, { timer: NodeJS.Timeout; heal: () => void }>();
  let supervising = true;

  const supervisors = Promise.all(
    controls.map(async (control) => {
      while (supervising) {
        if (!control.proc.running && !control.downForGood) {
          await control.supervise().catch((err: unknown) => note(`supervisor: restarting ${control.name} failed: ${String(err).split('\n')[0]}\n${control.proc.tail(12)}`));
        }
        await sleep(cluster ? 50 : 100);
      }
    }),
  );

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

  const control = (index: number): InstanceControl => {
    const c = controls[index];
    if (c === undefined) throw new Error(`chaos: the plan names instance ${index + 1} of ${controls.length}`);
    return c;
  };

  /** A kill and, after the pause, a restart (with the fail point armed, if any). */
  const killAndRestart = (c: InstanceControl, pauseMs: number, failPoint: string | undefined): Promise<void> =>
    c.run(async () => {
      await c.kill();
      await sleep(pauseMs);
      if (failPoint !== undefined) stats.coordinatorKills.failPointsArmed++;
      await c.restart(failPoint);
    });

  async function killForGood(e: Extract<ChaosEvent, { kind: 'instance-kill-for-good' }>): Promise<void> {
    const c = control(e.instance);
    const othersUp = (): number => controls.filter((o) => o !== c && o.proc.running).length;
    // At least two others must be up (one may be restarting after a fail point or a step-down).
    for (const deadline = Date.now() + 10_000; othersUp() < 2 && Date.now() < deadline; ) await sleep(100);
    if (othersUp() < 2) {
      note(`${c.name}: only ${othersUp()} other instance(s) up; a kill with a restart after 1000 ms instead of one for good`);
      await killAndRestart(c, 1_000, undefined);
      return;
    }
    await c.run(async () => {
      c.downForGood = true;
      c.armed = undefined;
      await c.kill('SIGKILL for good');
      stats.forGood = { id: c.instance.id, atMs: Date.now() - options.startedAt, restartAtEnd: e.restartAtEnd, restarted: false };
    });
  }

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
        await killAndRestart(control(0), e.pauseMs, e.failPoint);
        return;
      case 'instance-kill': {
        const c = control(e.instance);
        if (c.downForGood) {
          note(`${c.name} is down for good; nothing to kill`); // the plan never asks this
          return;
        }
        await killAndRestart(c, e.pauseMs, e.failPoint);
        return;
      }
      case 'instance-kill-for-good':
        await killForGood(e);
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
      await supervisors;
      const leftDown: string[] = [];
      for (const c of controls) {
        if (c.downForGood) {
          await c.run(async () => {
            if (stats.forGood?.restartAtEnd !== true) {
              leftDown.push(c.instance.id);
              return;
            }
            note(`healing: restarting ${c.name}, down for good since +${(stats.forGood.atMs / 1000).toFixed(1)}s`);
            c.downForGood = false;
            await c.restart();
            stats.forGood.restarted = true;
          });
          continue;
        }
        if (!c.proc.running) await c.supervise(); // a fail point fired, or it stepped down: counted, restarted clean
        await c.run(async () => {
          if (c.proc.running && c.armed === undefined) return;
          if (c.proc.running) {
            note(`healing: restarting ${c.cluster ? c.name : 'the coordinator'} without its fail point ${c.armed ?? ''}`);
            await c.kill();
          }
          await c.restart();
        });
      }
      note(`healed: every fault ended, every process running${leftDown.length === 0 ? '' : ` but ${leftDown.join(', ')} (left down for good)`}`);
    },
  };
}
