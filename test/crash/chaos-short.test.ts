/**
 * The chaos program's core (bench/chaos/run.ts) for 45 s with a fixed seed: the mixed
 * transfer workload over two Postgres servers, a Redis and the ledger (HTTP), 2PC and 3PC,
 * and one-phase commits of transfers within one Postgres store,
 * each participant behind a fault proxy, while the seeded schedule SIGKILLs the coordinator
 * (plainly and at fail points), kills and restarts Postgres and Redis, closes and reopens the
 * ledger, and delays, drops, cuts and blackholes connections. After healing: nothing in
 * doubt, nothing prepared/staged/locked/reserved, one outcome per transaction on every
 * branch, every answered commit kept, money conserved account by account.
 *
 * The run starts its own servers (it kills them); the suite's shared servers are not used.
 * Seed 18's plan holds every kind of event (coordinator kill, fail point, restart of A, B,
 * R and L, and all four proxy faults). Reproduce outside vitest with
 * `npm run chaos -- --seconds 45 --seed 18 --clients 6`.
 */
import { describe, expect, it } from 'vitest';
import { formatSummary, runChaos } from '../../bench/chaos/run.js';
import { planSchedule } from '../../bench/chaos/scheduler.js';

const SEED = Number(process.env.TCX_CHAOS_SEED ?? 18);
const SECONDS = 45;
const CLIENTS = 6;

describe('chaos: coordinator kills, participant restarts and network faults under a mixed workload', () => {
  it(`keeps every invariant (seed ${SEED}, ${SECONDS} s)`, { timeout: 150_000 }, async () => {
    const plan = planSchedule(SEED, SECONDS * 1000 - Math.min(10_000, Math.max(2_000, SECONDS * 150)));
    const lines: string[] = [];
    const summary = await runChaos({ seconds: SECONDS, seed: SEED, clients: CLIENTS, log: (line) => lines.push(line) });
    console.log(formatSummary(summary));
    if (summary.violations.length > 0 || summary.harnessErrors.length > 0) console.log(lines.join('\n'));

    expect(summary.harnessErrors, 'the harness itself failed').toEqual([]);
    expect(summary.violations).toEqual([]);
    expect(summary.settle.settled).toBe(true);
    // The run did what it says: work on every side of the faults, and the planned faults.
    expect(summary.transactions.committed).toBeGreaterThan(100);
    expect(summary.transactions.aborted).toBeGreaterThan(0);
    expect(summary.transactions.byProtocol['2pc'].committed).toBeGreaterThan(0);
    expect(summary.transactions.byProtocol['3pc'].committed).toBeGreaterThan(0);
    expect(summary.transactions.onePhase.committed).toBeGreaterThan(0);
    const planned = (kind: string): number => plan.filter((e) => e.kind === kind).length;
    expect(summary.kills.total).toBeGreaterThanOrEqual(planned('coordinator-kill'));
    expect(Object.values(summary.participantRestarts).reduce((a, b) => a + b, 0)).toBe(planned('participant-restart'));
    expect(Object.values(summary.faults).reduce((a, b) => a + b, 0)).toBe(planned('proxy'));
  });
});
