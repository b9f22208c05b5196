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
 */
import { randomBytes } from 'node:crypto';
import type { FaultProxyCounters } from '../../test/support/fault-proxy.js';
import { sleep } from '../../test/support/postgres-server.js';
import { checkInvariants, collectEvidence, finalOutcomes, leftoverViolations, settle } from './checks.js';
import { ensureBuild, startEnvironment, STORES, type Store } from './environment.js';
import { emptyStats, planSchedule, startScheduler, type ProxyFaultKind, type ScheduleStats } from './scheduler.js';
import { runWorkload, type Transfer } from './workload.js';

export interface ChaosOptions {
  readonly seconds: number;
  readonly seed: number;
  readonly clients: number;
  /** Progress lines (events as they happen). Default: none. */
  readonly log?: (line: string) => void;
}

export interface ChaosSummary {
  readonly seed: number;
  readonly seconds: number;
  readonly clients: number;
  readonly wallMs: number;
  readonly transactions: {
    readonly attempted: number;
    readonly committed: number;
    readonly aborted: number;
    /** The client never learned the outcome (its request died with the coordinator, or an odd answer). */
    readonly unknown: number;
    readonly unknownResolved: { committed: number; aborted: number };
    /** What the clients were told. */
    readonly seen: Record<string, number>;
    readonly byProtocol: Record<'2pc' | '3pc', { attempted: number; committed: number }>;
  };
  readonly kills: ScheduleStats['coordinatorKills'];
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
  if (!Number.isFinite(seconds) || seconds < 5 || seconds > 24 * 3600) throw new Error('chaos: seconds must be within 5..86400');
  if (!Number.isInteger(clients) || clients < 1 || clients > 64) throw new Error('chaos: clients must be within 1..64');
  if (!Number.isSafeInteger(seed)) throw new Error('chaos: seed must be an integer');
  const log = options.log ?? ((): void => undefined);
  const t0 = Date.now();
  ensureBuild(log);
  const runId = `${seed}-${randomBytes(3).toString('hex')}`;
  const env = await startEnvironment(runId, log);
  try {
    const tailMs = Math.min(10_000, Math.max(2_000, seconds * 150));
    const plan = planSchedule(seed, seconds * 1000 - tailMs);
    log(`chaos: seed ${seed}, ${clients} clients, ${seconds} s (${plan.length} planned events, quiet tail ${tailMs} ms)`);

    let stop = false;
    const stats = emptyStats();
    const startedAt = Date.now();
    const workload = runWorkload({ runId, seed, clients, coord: env.coord, stopped: () => stop });
    const scheduler = startScheduler(env, plan, { startedAt, stopped: () => stop, log, stats });
    let transfers: Transfer[];
    try {
      await sleep(Math.max(0, startedAt + seconds * 1000 - Date.now()));
      await Promise.race([scheduler.done, sleep(60_000)]); // a restart still running finishes
    } finally {
      stop = true;
      await scheduler.healAll();
      transfers = await workload;
    }
    log(`chaos: workload stopped after ${((Date.now() - startedAt) / 1000).toFixed(1)} s with ${transfers.length} transfers begun; waiting for recovery`);

    const settled = await settle(env);
    const violations = await leftoverViolations(env, settled);
    log(`chaos: ${settled.settled ? 'settled' : 'NOT settled'} after ${settled.ms} ms`);
    const finals = await finalOutcomes(env, transfers);
    const evidence = await collectEvidence(env);
    const checked = checkInvariants(transfers, finals, evidence);
    violations.push(...checked.violations);

    const seen: Record<string, number> = {};
    const unknownResolved = { committed: 0, aborted: 0 };
    const byProtocol = { '2pc': { attempted: 0, committed: 0 }, '3pc': { attempted: 0, committed: 0 } };
    for (const t of transfers) {
      seen[t.seen ?? 'none'] = (seen[t.seen ?? 'none'] ?? 0) + 1;
      const final = t.id === undefined ? undefined : finals.get(t.id);
      byProtocol[t.protocol].attempted++;
      if (final === 'committed') byProtocol[t.protocol].committed++;
      if (t.seen === 'unknown' && (final === 'committed' || final === 'aborted')) unknownResolved[final]++;
    }
    const proxies = Object.fromEntries(STORES.map((s) => [s, env.proxies[s].counters()])) as Record<Store, FaultProxyCounters>;
    return {
      seed,
      seconds,
      clients,
      wallMs: Date.now() - t0,
      transactions: {
        attempted: transfers.length,
        committed: checked.committed,
        aborted: checked.aborted,
        unknown: seen.unknown ?? 0,
        unknownResolved,
        seen,
        byProtocol,
      },
      kills: stats.coordinatorKills,
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
    log(`chaos: harness error; coordinator output:\n${env.coord.tail(40)}`);
    throw err;
  } finally {
    await env.destroy();
  }
}

const pad = (s: string | number, n: number): string => String(s).padStart(n);

/** The summary as a table (what `npm run chaos` prints). */
export function formatSummary(s: ChaosSummary): string {
  const t = s.transactions;
  const lines = [
    '',
    `chaos summary — seed ${s.seed} (reproduce: npm run chaos -- --seconds ${s.seconds} --seed ${s.seed} --clients ${s.clients})`,
    `  ${s.clients} clients, ${s.seconds} s of workload, ${(s.wallMs / 1000).toFixed(1)} s wall`,
    '',
    '  transactions                      count',
    `    attempted (begun)            ${pad(t.attempted, 9)}`,
    `    committed                    ${pad(t.committed, 9)}    2pc ${t.byProtocol['2pc'].committed}/${t.byProtocol['2pc'].attempted}, 3pc ${t.byProtocol['3pc'].committed}/${t.byProtocol['3pc'].attempted}`,
    `    aborted                      ${pad(t.aborted, 9)}`,
    `    unknown to the client        ${pad(t.unknown, 9)}    resolved: ${t.unknownResolved.committed} committed, ${t.unknownResolved.aborted} aborted`,
    `    client saw                   ${Object.entries(t.seen)
      .map(([k, v]) => `${k} ${v}`)
      .join(', ')}`,
    '',
    '  injected                          count',
    `    coordinator kills            ${pad(s.kills.total, 9)}    plain SIGKILL ${s.kills.plain}, fail points armed ${s.kills.failPointsArmed}, fired ${JSON.stringify(s.kills.failPointsFired)}`,
    `    participant restarts         ${pad(STORES.reduce((n, st) => n + s.participantRestarts[st], 0), 9)}    ${STORES.map((st) => `${st} ${s.participantRestarts[st]}`).join(', ')}`,
    ...(['delay', 'drop', 'cut', 'blackhole'] as const).map((k) => `    proxy ${k.padEnd(23)}${pad(s.faults[k], 9)}`),
    `    proxy effects                          ${STORES.map((st) => {
      const c = s.proxies[st];
      return `${st}: ${c.dropped} dropped, ${c.cut} cut, ${c.blackholed} blackholed, ${c.repliesCut} replies cut`;
    }).join('; ')}`,
    '',
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
