/**
 * runChaos({ seconds, seed, clients }): the chaos run as a function (bench/chaos.ts is its
 * command line; test/crash/chaos-short.test.ts runs it with a fixed seed).
 *
 *   1. start two Postgres servers, a Redis, the ledger, a fault proxy in front of each, and
 *      the coordinator as a child process reaching the participants through the proxies
 *   2. run the transfer workload for `seconds` while the seeded scheduler kills and restarts
 *      the coordinator and the participants and injects proxy faults (the last ~15% of the
 *      run is a quiet tail without new faults)
 *   3. heal everything, wait (bounded) until nothing is in doubt, check the invariants
 *      (checks.ts) and return the summary; every violation is listed in it
 *
 * With `instances` > 1 the coordinator is N instances over a shared Postgres log: the clients
 * spread over them, the coordinator kills become instance kills (one of them, with 3+
 * instances, for good), and the summary adds the takeover figures (takeover.ts).
 */
import { randomBytes } from 'node:crypto';
import type { FaultProxyCounters } from '../../test/support/fault-proxy.js';
import { sleep } from '../../test/support/spawned-process.js';
import { checkInvariants, collectEvidence, finalOutcomes, leftoverViolations, settle } from './checks.js';
import { ensureBuild, instanceTails, startEnvironment, STORES, type Store } from './environment.js';
import { emptyStats, planSchedule, startScheduler, type ProxyFaultKind, type ScheduleStats } from './scheduler.js';
import { TakeoverMonitor, type TakeoverSummary } from './takeover.js';
import { runWorkload, type Transfer } from './workload.js';

export interface ChaosOptions {
  readonly seconds: number;
  readonly seed: number;
  readonly clients: number;
  /** Coordinator instances; more than one share a Postgres log. Default 1. */
  readonly instances?: number;
  /** Progress lines (events as they happen). Default: none. */
  readonly log?: (line: string) => void;
}

export interface ChaosSummary {
  readonly seed: number;
  readonly seconds: number;
  readonly clients: number;
  readonly instances: number;
  readonly wallMs: number;
  readonly transactions: {
    readonly attempted: number;
    readonly committed: number;
    readonly aborted: number;
    /** The client never learned the outcome (its request died with the coordinator, or an odd answer). */
    readonly unknown: number;
    readonly unknownResolved: { committed: number; aborted: number };
    /** Why the client did not learn the outcome, most frequent first (ids and numbers masked). */
    readonly unknownWhy: readonly { why: string; count: number }[];
    /** What the clients were told. */
    readonly seen: Record<string, number>;
    readonly byProtocol: Record<'2pc' | '3pc', { attempted: number; committed: number }>;
    /** Transfers within one Postgres store (a lone branch: one-phase commit); unknownToCoordinator: killed before the end record, decided by the store's evidence. */
    readonly onePhase: { attempted: number; committed: number; unknownToCoordinator: number };
  };
  readonly kills: ScheduleStats['coordinatorKills'];
  /** Several instances only. */
  readonly cluster?: {
    readonly instanceKills: Record<string, number>;
    readonly stepDowns: Record<string, number>;
    readonly otherExits: readonly string[];
    readonly forGood?: ScheduleStats['forGood'];
    /** Transfers whose enlists and commit went through another instance than the one that began them. */
    readonly forwardedTransfers: number;
    /** Transactions an instance answered nothing definite about while another did. */
    readonly oddAnswers: readonly string[];
    readonly takeover: TakeoverSummary;
  };
  readonly participantRestarts: Record<Store, number>;
  readonly faults: Record<ProxyFaultKind, number>;
  readonly proxies: Record<Store, FaultProxyCounters>;
  readonly settle: { readonly settled: boolean; readonly ms: number };
  readonly totals: Record<Store, { actual: number; expected: number }>;
  readonly violations: readonly string[];
  /** The harness itself failed somewhere (a restart that did not work): the run proves less than it should. */
  readonly harnessErrors: readonly string[];
  readonly events: readonly string[];
}

export async function runChaos(options: ChaosOptions): Promise<ChaosSummary> {
  const { seconds, seed, clients } = options;
  const instances = options.instances ?? 1;
  if (!Number.isFinite(seconds) || seconds < 5 || seconds > 24 * 3600) throw new Error('chaos: seconds must be within 5..86400');
  if (!Number.isInteger(clients) || clients < 1 || clients > 64) throw new Error('chaos: clients must be within 1..64');
  if (!Number.isSafeInteger(seed)) throw new Error('chaos: seed must be an integer');
  if (!Number.isInteger(instances) || instances < 1 || instances > 8) throw new Error('chaos: instances must be within 1..8');
  const log = options.log ?? ((): void => undefined);
  const t0 = Date.now();
  ensureBuild(log);
  const runId = `${seed}-${randomBytes(3).toString('hex')}`;
  const env = await startEnvironment(runId, log, instances);
  let monitor: TakeoverMonitor | undefined;
  try {
    const tailMs = Math.min(10_000, Math.max(2_000, seconds * 150));
    const plan = planSchedule(seed, seconds * 1000 - tailMs, instances);
    log(
      `chaos: seed ${seed}, ${clients} clients, ${instances > 1 ? `${instances} instances, ` : ''}${seconds} s (${plan.length} planned events, quiet tail ${tailMs} ms)`,
    );

    let stop = false;
    const stats = emptyStats();
    const startedAt = Date.now();
    if (instances > 1) monitor = new TakeoverMonitor(env, startedAt);
    const progress = { begun: 0, committed: 0 };
    const progressTimer = setInterval(() => {
      const up = env.instances.filter((i) => i.proc.running).map((i) => i.id);
      log(
        `chaos: +${((Date.now() - startedAt) / 1000).toFixed(1)}s progress: ${progress.begun} transfers begun, ${progress.committed} answered committed` +
          (instances > 1 ? `; running ${up.join(', ') || 'none'}` : ''),
      );
    }, 10_000);
    const workload = runWorkload({ runId, seed, clients, instances: env.instances, progress, stopped: () => stop });
    const scheduler = startScheduler(env, plan, { startedAt, stopped: () => stop, log, stats, ...(monitor === undefined ? {} : { observer: monitor }) });
    let transfers: Transfer[];
    try {
      await sleep(Math.max(0, startedAt + seconds * 1000 - Date.now()));
      await Promise.race([scheduler.done, sleep(60_000)]); // a restart still running finishes
    } finally {
      stop = true;
      clearInterval(progressTimer);
      await scheduler.healAll();
      transfers = await workload;
    }
    log(`chaos: workload stopped after ${((Date.now() - startedAt) / 1000).toFixed(1)} s with ${transfers.length} transfers begun; waiting for recovery`);

    const settled = await settle(env);
    const violations = await leftoverViolations(env, settled);
    log(`chaos: ${settled.settled ? 'settled' : 'NOT settled'} after ${settled.ms} ms`);
    const takeover = await monitor?.stop();
    monitor = undefined;
    const oddAnswers: string[] = [];
    const disagreements: string[] = [];
    const unknownToAll = new Set<string>();
    const finals = await finalOutcomes(env, transfers, { odd: oddAnswers, disagreements, unknownToAll });
    violations.push(...disagreements.map((d) => `instances disagree about a transaction (one reports it committed, another aborted or unknown): ${d}`));
    const evidence = await collectEvidence(env);
    const checked = checkInvariants(transfers, finals, evidence, unknownToAll);
    violations.push(...checked.violations);

    const seen: Record<string, number> = {};
    const unknownResolved = { committed: 0, aborted: 0 };
    const why = new Map<string, number>();
    const byProtocol = { '2pc': { attempted: 0, committed: 0 }, '3pc': { attempted: 0, committed: 0 } };
    const onePhase = { attempted: 0, committed: 0, unknownToCoordinator: checked.onePhaseUnknown };
    for (const t of transfers) {
      seen[t.seen ?? 'none'] = (seen[t.seen ?? 'none'] ?? 0) + 1;
      const final = t.id === undefined ? undefined : finals.get(t.id);
      byProtocol[t.protocol].attempted++;
      if (final === 'committed') byProtocol[t.protocol].committed++;
      if (t.onePhase === true) {
        onePhase.attempted++;
        if (final === 'committed') onePhase.committed++;
      }
      if (t.seen === 'unknown' && (final === 'committed' || final === 'aborted')) unknownResolved[final]++;
      if (t.seen === 'unknown') {
        const key = `${t.via === undefined ? '' : 'via another instance: '}${(t.detail ?? '?').replace(/[0-9a-f]{8}-[0-9a-f-]{27}/g, '<id>').replace(/\d+/g, 'N')}`;
        why.set(key, (why.get(key) ?? 0) + 1);
      }
    }
    const proxies = Object.fromEntries(STORES.map((s) => [s, env.proxies[s].counters()])) as Record<Store, FaultProxyCounters>;
    return {
      seed,
      seconds,
      clients,
      instances,
      wallMs: Date.now() - t0,
      transactions: {
        attempted: transfers.length,
        committed: checked.committed,
        aborted: checked.aborted,
        unknown: seen.unknown ?? 0,
        unknownResolved,
        unknownWhy: [...why].sort((a, b) => b[1] - a[1]).map(([w, count]) => ({ why: w, count })),
        seen,
        byProtocol,
        onePhase,
      },
      kills: stats.coordinatorKills,
      ...(takeover === undefined
        ? {}
        : {
            cluster: {
              instanceKills: stats.instanceKills,
              stepDowns: stats.stepDowns,
              otherExits: stats.otherExits,
              ...(stats.forGood === undefined ? {} : { forGood: stats.forGood }),
              forwardedTransfers: transfers.filter((t) => t.via !== undefined).length,
              oddAnswers,
              takeover,
            },
          }),
      participantRestarts: stats.participantRestarts,
      faults: stats.faults,
      proxies,
      settle: { settled: settled.settled, ms: settled.ms },
      totals: checked.totals,
      violations,
      harnessErrors: stats.harnessErrors,
      events: stats.events,
    };
  } catch (err) {
    log(`chaos: harness error; coordinator output:\n${instanceTails(env)}`);
    throw err;
  } finally {
    await monitor?.stop().catch(() => undefined);
    await env.destroy();
  }
}

const pad = (s: string | number, n: number): string => String(s).padStart(n);

/** The summary as a table (what `npm run chaos` prints). */
export function formatSummary(s: ChaosSummary): string {
  const t = s.transactions;
  const lines = [
    '',
    `chaos summary — seed ${s.seed} (reproduce: npm run chaos -- --seconds ${s.seconds} --seed ${s.seed} --clients ${s.clients}${s.instances > 1 ? ` --instances ${s.instances}` : ''})`,
    `  ${s.clients} clients, ${s.instances > 1 ? `${s.instances} coordinator instances over a shared log, ` : ''}${s.seconds} s of workload, ${(s.wallMs / 1000).toFixed(1)} s wall`,
    '',
    '  transactions                      count',
    `    attempted (begun)            ${pad(t.attempted, 9)}`,
    `    committed                    ${pad(t.committed, 9)}    2pc ${t.byProtocol['2pc'].committed}/${t.byProtocol['2pc'].attempted}, 3pc ${t.byProtocol['3pc'].committed}/${t.byProtocol['3pc'].attempted}`,
    `    aborted                      ${pad(t.aborted, 9)}`,
    `    one-phase (one store)        ${pad(t.onePhase.attempted, 9)}    committed ${t.onePhase.committed}, unknown to the coordinator (404) ${t.onePhase.unknownToCoordinator}: the store's evidence decides`,
    `    unknown to the client        ${pad(t.unknown, 9)}    resolved: ${t.unknownResolved.committed} committed, ${t.unknownResolved.aborted} aborted`,
    ...t.unknownWhy.slice(0, 4).map((w) => `      ${pad(w.count, 4)} × ${w.why.slice(0, 140)}`),
    `    client saw                   ${Object.entries(t.seen)
      .map(([k, v]) => `${k} ${v}`)
      .join(', ')}`,
    '',
    '  injected                          count',
    `    ${s.instances > 1 ? 'instance kills   ' : 'coordinator kills'}            ${pad(s.kills.total, 9)}    plain SIGKILL ${s.kills.plain}, fail points armed ${s.kills.failPointsArmed}, fired ${JSON.stringify(s.kills.failPointsFired)}`,
    ...(s.cluster === undefined ? [] : clusterInjected(s.cluster)),
    `    participant restarts         ${pad(STORES.reduce((n, st) => n + s.participantRestarts[st], 0), 9)}    ${STORES.map((st) => `${st} ${s.participantRestarts[st]}`).join(', ')}`,
    ...(['delay', 'drop', 'cut', 'blackhole'] as const).map((k) => `    proxy ${k.padEnd(23)}${pad(s.faults[k], 9)}`),
    `    proxy effects                          ${STORES.map((st) => {
      const c = s.proxies[st];
      return `${st}: ${c.dropped} dropped, ${c.cut} cut, ${c.blackholed} blackholed, ${c.repliesCut} replies cut`;
    }).join('; ')}`,
    '',
    ...(s.cluster === undefined ? [] : takeoverLines(s.cluster.takeover)),
    `  recovery after healing: ${s.settle.settled ? 'settled' : 'NOT settled'} in ${s.settle.ms} ms`,
    `  store totals (actual/expected): ${STORES.map((st) => `${st} ${s.totals[st]?.actual}/${s.totals[st]?.expected}`).join(', ')}`,
    `  violations                     ${pad(s.violations.length, 9)}`,
    ...s.violations.slice(0, 50).map((v) => `    - ${v}`),
    ...(s.violations.length > 50 ? [`    … ${s.violations.length - 50} more`] : []),
    ...(s.harnessErrors.length === 0 ? [] : [`  HARNESS ERRORS (the run is not valid)`, ...s.harnessErrors.map((e) => `    - ${e}`)]),
    '',
  ];
  return lines.join('\n');
}

const total = (r: Record<string, number>): number => Object.values(r).reduce((a, b) => a + b, 0);
const byId = (r: Record<string, number>): string =>
  Object.entries(r)
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([k, v]) => `${k} ${v}`)
    .join(', ') || 'none';
const ms = (v: number | undefined): string => (v === undefined ? '—' : `${v} ms`);

function clusterInjected(c: NonNullable<ChaosSummary['cluster']>): string[] {
  const g = c.forGood;
  return [
    `      by instance                          ${byId(c.instanceKills)}`,
    `      killed for good                      ${g === undefined ? 'none' : `${g.id} at +${(g.atMs / 1000).toFixed(1)}s, ${g.restarted ? 'restarted after the active period' : 'left down for the checks'}`}`,
    `    step-downs (exit 3), restarted ${pad(total(c.stepDowns), 7)}    ${byId(c.stepDowns)}`,
    `    other exits by themselves    ${pad(c.otherExits.length, 9)}${c.otherExits.length === 0 ? '' : `    ${c.otherExits.join('; ')}`}`,
    `    transfers sent via another instance ${pad(c.forwardedTransfers, 3)}`,
    ...(c.oddAnswers.length === 0 ? [] : [`    odd answers at the end       ${pad(c.oddAnswers.length, 9)}    e.g. ${c.oddAnswers.slice(0, 3).join(' | ')}`]),
  ];
}

function takeoverLines(t: TakeoverSummary): string[] {
  return [
    `  takeover after an instance went (${t.losses.length}): lease live again under a new epoch (GET /v1/cluster, polled ~100 ms)`,
    `    max ${ms(t.takeover.maxMs)}, median ${ms(t.takeover.medianMs)} over ${t.takeover.count}: ${t.takeover.bySurvivor} by a survivor, ${t.takeover.byItself} by the restarted instance itself${t.takeover.notSeen > 0 ? `, ${t.takeover.notSeen} not seen` : ''}`,
    `  in doubt after an instance went: until none of its branches prepared then is prepared (A, B, R, L)`,
    `    max ${ms(t.inDoubt.maxMs)}, median ${ms(t.inDoubt.medianMs)} over ${t.inDoubt.count} that left branches prepared; ${t.inDoubt.none} left none${t.inDoubt.unresolved > 0 ? `; ${t.inDoubt.unresolved} NOT resolved by the end` : ''}`,
    ...t.losses.map(
      (l) =>
        `    +${(l.atMs / 1000).toFixed(1).padStart(5)}s ${l.id} ${l.how.padEnd(16)} taken ${l.takeoverMs === undefined ? 'over: not seen' : `by ${l.takenBy} after ${l.takeoverMs} ms`}; ${l.inDoubtBranches} branches in doubt${l.inDoubtBranches === 0 ? '' : ` for ${ms(l.inDoubtMs)}`}`,
    ),
    '',
  ];
}
