/**
 * `npm run bench`: the coordinator measured side by side with baselines taken
 * in the same run, on the same servers, with the load coming from this process
 * and the coordinator running as its own process (`node dist/main.js`), as a
 * client and a deployment would have it. Prints a table and writes JSON to
 * bench-results/.
 *
 *   log-force   forced appends to the file log alone: how many share one fdatasync
 *   transfer    one UPDATE in each of two durable Postgres servers (fsync on), atomically:
 *                 by-hand      a hand-written 2PC client (PREPARE TRANSACTION + COMMIT PREPARED,
 *                              both databases at once)
 *                 2pc, 3pc     one request to the coordinator per transfer (`parallel: true`:
 *                              both databases at once, like the hand-written client)
 *                 2pc-ordered  the same in request order (the default: a consistent lock order)
 *                 wire-floor   reference, not a product: a minimal HTTP service doing the same wire
 *                              and disk work (pipelined BEGIN/UPDATE/PREPARE, a group-committed
 *                              decision record, COMMIT PREPARED) and nothing else — what the
 *                              coordinator's own layers cost is the gap between it and 2pc
 *   transfer-pg-log  the transfer with the coordinator's log in a third durable Postgres
 *                    server (TCX_LOG_URL) instead of its data directory
 *   transfer-fast-pg  the same on Postgres with fsync off: the coordinator's own cost stands out
 *   single-db   a transfer inside one durable Postgres (two UPDATEs):
 *                 by-hand      BEGIN, UPDATE, UPDATE, COMMIT (no coordinator at all)
 *                 one-phase    one request to the coordinator (one branch: one-phase commit)
 *                 2pc          the same with onePhase: false (PREPARE, forced decision, COMMIT PREPARED)
 *   empty-http  two HTTP participants in another process that answer at once:
 *                 baseline    a client making the same four calls (prepare ×2, commit ×2)
 *                 2pc         one request to the coordinator per transaction
 *                 wire-floor  reference: the same four calls and two forced records, nothing else
 *   restart     start-up time and memory with many finished transactions in the log
 *
 * Environment: TCX_BENCH_SECONDS (per cell, default 3), TCX_BENCH_ROUNDS (rounds of cells per
 * client count, default 3), TCX_BENCH_ONLY (comma list of scenarios), TCX_BENCH_CLIENTS (comma
 * list of client counts), TCX_BENCH_NODE_FLAGS (space-separated flags for the coordinator's
 * node, e.g. --trace-deopt or --import ./dist-bench/bench/perf/loop-gaps.js; its output is then
 * kept), TCX_BENCH_CPU_PROF (a directory: the coordinator runs with --cpu-prof there),
 * TCX_BENCH_RESTART_TRANSACTIONS (default 1000000), TCX_BENCH_PG_URL_A/_B (use these servers
 * instead of starting two).
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createAccounts, freshDatabase } from '../test/support/databases.js';
import { PostgresServer } from '../test/support/postgres-server.js';
import { CoordinatorChild, type Health } from './perf/coordinator-child.js';
import { logForce } from './perf/log-force.js';
import { measure, processCpuSeconds, round2, round3, SECONDS, type Cell } from './perf/measure.js';
import { restart, type RestartResult } from './perf/restart.js';
import { WireFloorChild } from './perf/wire-floor.js';
import {
  emptyByHand,
  emptyThroughCoordinator,
  localTransferByHand,
  localTransferThroughCoordinator,
  pgPools,
  startHttpParticipants,
  transferByHand,
  transferThroughCoordinator,
} from './perf/scenarios.js';

const ONLY = new Set((process.env.TCX_BENCH_ONLY ?? 'log-force,transfer,single-db,transfer-pg-log,transfer-fast-pg,empty-http,restart').split(',').map((s) => s.trim()));
const CPU_PROF = process.env.TCX_BENCH_CPU_PROF;
/** Client counts per scenario, e.g. TCX_BENCH_CLIENTS=1 for a profile of the single-client path. */
const CLIENTS = process.env.TCX_BENCH_CLIENTS?.split(',').map(Number);
/** Rounds of baseline-then-variants per client count (each row is the median of its rounds). */
const ROUNDS = Math.max(1, Math.floor(Number(process.env.TCX_BENCH_ROUNDS ?? 3)));

export interface Row extends Cell {
  readonly scenario: string;
  readonly variant: string;
  readonly clients: number;
  /** Coordinator rows: fdatasyncs of its log per committed transaction. */
  readonly fsyncsPerTx?: number;
  /** Coordinator rows: its CPU time (user + system) per transaction, in ms. */
  readonly coordinatorCpuMsPerTx?: number;
  readonly note?: string;
  /** Cells this row is the median of (ROUNDS). */
  readonly rounds?: number;
  /** Variant rows: the median of the per-round ratios of tx/s to the baseline of the same round, and their range. */
  readonly ratio?: number;
  readonly ratioRange?: readonly [number, number];
  /** Variant rows: the median of the per-round differences of p50 to the baseline's, in ms. */
  readonly p50OverheadMs?: number;
  /** A variant measured head to head with another of the same rounds (3pc against 2pc): tx/s ratio and p50 difference, medians of the rounds. */
  readonly versus?: { readonly variant: string; readonly ratio: number; readonly ratioRange: readonly [number, number]; readonly p50DeltaMs: number };
}

/** A cell of load on the process `pid`, with that process's CPU time (user + system) per transaction, in ms. */
async function cellWithCpu(
  pid: number,
  clients: number,
  op: (c: number) => Promise<void>,
  afterWarmup: () => Promise<void> = () => Promise.resolve(),
): Promise<{ cell: Cell; cpu: { coordinatorCpuMsPerTx?: number } }> {
  let cpuBefore: number | undefined;
  const cell = await measure(clients, op, {
    afterWarmup: async () => {
      await afterWarmup();
      cpuBefore = processCpuSeconds(pid);
    },
  });
  const cpuAfter = processCpuSeconds(pid);
  const cpu = cpuBefore === undefined || cpuAfter === undefined ? {} : { coordinatorCpuMsPerTx: round2(((cpuAfter - cpuBefore) * 1000) / Math.max(1, cell.ops)) };
  return { cell, cpu };
}

async function coordinatorCell(
  coordinator: CoordinatorChild,
  scenario: string,
  variant: string,
  clients: number,
  op: (c: number) => Promise<void>,
): Promise<Row> {
  let before: Health | undefined;
  const { cell, cpu } = await cellWithCpu(coordinator.pid, clients, op, async () => {
    before = await coordinator.health();
  });
  const after = await coordinator.health();
  const fsyncs = after.log.fsyncs - (before?.log.fsyncs ?? 0);
  return { scenario, variant, clients, ...cell, fsyncsPerTx: round2(fsyncs / Math.max(1, cell.ops)), ...cpu };
}

/** The wire floor's cell: its CPU per transaction like a coordinator's (it has no health endpoint to count fsyncs). */
async function wireFloorCell(floor: WireFloorChild, scenario: string, clients: number, op: (c: number) => Promise<void>): Promise<Row> {
  const { cell, cpu } = await cellWithCpu(floor.pid, clients, op);
  return { scenario, variant: 'wire-floor', clients, ...cell, ...cpu, note: WIRE_FLOOR_NOTE };
}

const WIRE_FLOOR_NOTE = 'reference, not a product: the same wire and disk work with nothing else (bench/perf/wire-floor-process.ts)';

type TransferVariant = '2pc' | '2pc-ordered' | '3pc';

async function transfer(
  rows: Row[],
  scenario: string,
  urlA: string,
  urlB: string,
  variants: readonly TransferVariant[],
  options: { coordinatorEnv?: Record<string, string>; wireFloor?: boolean } = {},
): Promise<void> {
  const dbA = await freshDatabase(urlA, 'bench');
  const dbB = await freshDatabase(urlB, 'bench');
  const accounts = Object.fromEntries(Array.from({ length: 64 }, (_, i) => [`acct${i}`, 1_000_000_000]));
  await createAccounts(dbA, accounts);
  await createAccounts(dbB, accounts);
  const levels = CLIENTS ?? [1, 8, 32];
  const pools = pgPools(dbA, dbB, Math.max(...levels) + 2);
  const byHand = transferByHand(pools);
  const { child: coordinator } = await startCoordinator(scenario, options.coordinatorEnv);
  let floor: WireFloorChild | undefined;
  try {
    for (const [name, connectionString] of [['a', dbA], ['b', dbB]] as const) {
      const res = await coordinator.request('POST', '/v1/participants', { name, kind: 'postgres', connectionString });
      if (res.status !== 201) throw new Error(`registering ${name}: ${res.status} ${JSON.stringify(res.json)}`);
    }
    // Like the hand-written client, the two databases' work runs at once; `-ordered` runs it in request order.
    const ops = variants.map((variant) => ({ variant, op: transferThroughCoordinator(coordinator, variant === '3pc' ? '3pc' : '2pc', variant !== '2pc-ordered') }));
    await warmUp(ops.map((o) => o.op), Math.max(...levels));
    const cells: { variant: string; run: (clients: number) => Promise<Row> }[] = ops.map(({ variant, op }) => ({
      variant,
      run: (clients: number) => coordinatorCell(coordinator, scenario, variant, clients, op),
    }));
    if (options.wireFloor === true) {
      const started = (floor = await WireFloorChild.start({ postgres: [dbA, dbB] }));
      const op = transferThroughCoordinator(started, '2pc', true);
      await warmUp([op], Math.max(...levels));
      cells.push({ variant: 'wire-floor', run: (clients: number) => wireFloorCell(started, scenario, clients, op) });
    }
    // Target 5 (3PC within 10 % of 2PC) is read off these: 3pc's cells against 2pc's of the same rounds.
    const headToHead = variants.includes('3pc') && variants.includes('2pc') ? [['3pc', '2pc'] as const] : [];
    await interleaved(rows, scenario, levels, (clients) => measure(clients, byHand), cells, headToHead);
  } finally {
    await floor?.stop();
    await coordinator.stop();
    await Promise.all([pools.a.end(), pools.b.end()]);
  }
}

/**
 * Per client count, ROUNDS rounds of the baseline's cell and then each variant's, so that
 * every ratio compares cells measured within seconds of each other: this VM's speed drifts
 * over a run by more than the differences measured. A variant's ratio is the median of its
 * per-round ratios (each against the baseline of the same round), shown with their range; its
 * other figures are medians across the rounds. The order of the variants rotates with the
 * client count and the round, so that the one measured right after the baseline changes; the
 * rows keep the variants' order.
 */
async function interleaved(
  rows: Row[],
  scenario: string,
  levels: readonly number[],
  baseline: (clients: number) => Promise<Cell>,
  variants: readonly { variant: string; run: (clients: number) => Promise<Row> }[],
  /** [variant, reference]: the variant's cells also against the reference's cells of the same rounds. */
  headToHead: readonly (readonly [string, string])[] = [],
): Promise<void> {
  for (const [level, clients] of levels.entries()) {
    const baselines: Cell[] = [];
    const measured = new Map<string, Row[]>(variants.map((v) => [v.variant, []]));
    for (let round = 0; round < ROUNDS; round++) {
      baselines.push(await baseline(clients));
      for (let i = 0; i < variants.length; i++) {
        const v = variants[(i + level + round) % variants.length]!;
        measured.get(v.variant)!.push(await v.run(clients));
      }
    }
    rows.push({ scenario, variant: 'by-hand', clients, ...medianCell(baselines), rounds: ROUNDS });
    for (const v of variants) {
      const row = againstBaselines(measured.get(v.variant)!, baselines);
      const reference = headToHead.find(([variant]) => variant === v.variant)?.[1];
      // Against the other variant's cells of the same rounds (the cells of a round are seconds apart).
      rows.push(reference === undefined ? row : { ...row, versus: { variant: reference, ...perRound(measured.get(v.variant)!, measured.get(reference)!) } });
    }
  }
}

function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

function medianOf<T>(items: readonly T[], field: (item: T) => number | undefined): number | undefined {
  const values = items.map(field).filter((v): v is number => v !== undefined);
  return values.length === 0 ? undefined : round3(median(values));
}

/** The rounds' cells as one: counts summed, every other figure the median across the rounds. */
function medianCell(cells: readonly Cell[]): Cell {
  const machine = medianOf(cells, (c) => c.machineCpuMsPerOp);
  const load = medianOf(cells, (c) => c.loadCpuMsPerOp);
  return {
    ops: cells.reduce((n, c) => n + c.ops, 0),
    errors: cells.reduce((n, c) => n + c.errors, 0),
    perSecond: Math.round(median(cells.map((c) => c.perSecond))),
    p50Ms: round2(median(cells.map((c) => c.p50Ms))),
    p99Ms: round2(median(cells.map((c) => c.p99Ms))),
    ...(machine === undefined ? {} : { machineCpuMsPerOp: machine }),
    ...(load === undefined ? {} : { loadCpuMsPerOp: load }),
  };
}

/** Cells against the cells of the same rounds: the median tx/s ratio, its range, and the median p50 difference. */
function perRound(cells: readonly Cell[], references: readonly Cell[]): { ratio: number; ratioRange: [number, number]; p50DeltaMs: number } {
  const ratios = cells.map((c, i) => c.perSecond / Math.max(1, references[i]!.perSecond));
  return {
    ratio: round2(median(ratios)),
    ratioRange: [round2(Math.min(...ratios)), round2(Math.max(...ratios))],
    p50DeltaMs: round2(median(cells.map((c, i) => c.p50Ms - references[i]!.p50Ms))),
  };
}

/** A variant's rounds against the baselines of the same rounds. */
function againstBaselines(rounds: readonly Row[], baselines: readonly Cell[]): Row {
  const { ratio, ratioRange, p50DeltaMs } = perRound(rounds, baselines);
  const first = rounds[0]!;
  const fsyncs = medianOf(rounds, (r) => r.fsyncsPerTx);
  const cpu = medianOf(rounds, (r) => r.coordinatorCpuMsPerTx);
  return {
    scenario: first.scenario,
    variant: first.variant,
    clients: first.clients,
    ...medianCell(rounds),
    ...(fsyncs === undefined ? {} : { fsyncsPerTx: round2(fsyncs) }),
    ...(cpu === undefined ? {} : { coordinatorCpuMsPerTx: cpu }),
    ratio,
    ratioRange,
    p50OverheadMs: p50DeltaMs,
    rounds: rounds.length,
    ...(first.note === undefined ? {} : { note: first.note }),
  };
}

/** A transfer inside one database: plain commit by hand against the coordinator's one-phase commit (and its full 2PC). */
async function singleDb(rows: Row[], url: string): Promise<void> {
  const db = await freshDatabase(url, 'bench');
  await createAccounts(db, Object.fromEntries(Array.from({ length: 64 }, (_, i) => [`acct${i}`, 1_000_000_000])));
  const levels = CLIENTS ?? [1, 8, 32];
  const pools = pgPools(db, db, Math.max(...levels) + 2);
  const byHand = localTransferByHand(pools.a);
  const { child: coordinator } = await startCoordinator('single-db');
  try {
    const res = await coordinator.request('POST', '/v1/participants', { name: 'a', kind: 'postgres', connectionString: db });
    if (res.status !== 201) throw new Error(`registering a: ${res.status} ${JSON.stringify(res.json)}`);
    const variants = (
      [
        ['one-phase', true],
        ['2pc', false],
      ] as const
    ).map(([variant, onePhase]) => {
      const op = localTransferThroughCoordinator(coordinator, onePhase);
      return { variant, op, run: (clients: number) => coordinatorCell(coordinator, 'single-db', variant, clients, op) };
    });
    await warmUp(variants.map((v) => v.op), Math.max(...levels));
    await interleaved(rows, 'single-db', levels, (clients) => measure(clients, byHand), variants);
  } finally {
    await coordinator.stop();
    await Promise.all([pools.a.end(), pools.b.end()]);
  }
}

/** Two Postgres servers, durable (as deployed) or with fsync off (the coordinator's own cost stands out). */
async function withPostgresPair(durable: boolean, fn: (urlA: string, urlB: string) => Promise<void>): Promise<void> {
  const urlA = process.env.TCX_BENCH_PG_URL_A;
  const urlB = process.env.TCX_BENCH_PG_URL_B;
  if (urlA !== undefined && urlB !== undefined) return fn(urlA, urlB);
  const servers = await Promise.all([
    PostgresServer.start({ name: 'bench-a', durable }),
    PostgresServer.start({ name: 'bench-b', durable }),
  ]);
  try {
    await fn(servers[0].url(), servers[1].url());
  } finally {
    await Promise.all(servers.map((s) => s.destroy()));
  }
}

async function emptyHttp(rows: Row[]): Promise<void> {
  const participants = await startHttpParticipants();
  const levels = CLIENTS ?? [1, 16, 64];
  try {
    const { child: coordinator } = await startCoordinator('empty-http');
    try {
      for (const [i, port] of participants.ports.entries()) {
        const res = await coordinator.request('POST', '/v1/participants', { name: `h${i + 1}`, kind: 'http', baseUrl: `http://127.0.0.1:${port}` });
        if (res.status !== 201) throw new Error(`registering h${i + 1}: ${res.status} ${JSON.stringify(res.json)}`);
      }
      await warmUp([emptyThroughCoordinator(coordinator)], Math.max(...levels));
      const floor = await WireFloorChild.start({ http: [participants.ports[0]!, participants.ports[1]!] });
      try {
        const floorOp = emptyThroughCoordinator(floor);
        await warmUp([floorOp], Math.max(...levels));
        // The baseline's pools are sized per client count: made and closed around its cell.
        const byHand = async (clients: number): Promise<Cell> => {
          const baseline = emptyByHand(participants.ports, clients);
          try {
            return await measure(clients, baseline.op);
          } finally {
            await baseline.close();
          }
        };
        const coordinatorOp = emptyThroughCoordinator(coordinator);
        await interleaved(rows, 'empty-http', levels, byHand, [
          { variant: '2pc', run: (clients) => coordinatorCell(coordinator, 'empty-http', '2pc', clients, coordinatorOp) },
          { variant: 'wire-floor', run: (clients) => wireFloorCell(floor, 'empty-http', clients, floorOp) },
        ]);
      } finally {
        await floor.stop();
      }
    } finally {
      await coordinator.stop();
    }
  } finally {
    participants.stop();
  }
}

/**
 * A freshly started coordinator runs its first seconds unoptimised (V8 compiles its hot paths
 * as they get hot) while the baseline ran in a process warmed by its own earlier cells. Load,
 * not measured, before the first cell: every variant at once (client c runs ops[c % n]) at the
 * highest client count, so the type feedback of all of them and of the busy paths (queued
 * sessions, group commits of many records) is in before anything is timed. With one variant
 * at four clients, V8 went on recompiling (deoptimised by the next variant's shapes) for
 * seconds into every cell: about 7 % of the coordinator's CPU in a cell (perf, 7 Dec).
 */
async function warmUp(ops: readonly ((c: number) => Promise<void>)[], clients: number): Promise<void> {
  const end = Date.now() + Math.min(6_000, SECONDS * 2_000);
  await Promise.all(Array.from({ length: clients }, async (_, c) => {
    const op = ops[c % ops.length]!;
    while (Date.now() < end) await op(c).catch(() => undefined);
  }));
}

async function startCoordinator(label: string, env: Record<string, string> = {}): Promise<{ child: CoordinatorChild }> {
  const nodeFlags = (process.env.TCX_BENCH_NODE_FLAGS ?? '').split(' ').filter((f) => f !== '');
  if (CPU_PROF !== undefined) {
    fs.mkdirSync(CPU_PROF, { recursive: true });
    nodeFlags.push('--cpu-prof', `--cpu-prof-dir=${path.resolve(CPU_PROF)}`, `--cpu-prof-name=coordinator-${label}-${Date.now()}.cpuprofile`);
  }
  return CoordinatorChild.start({ nodeFlags, connections: 64, env });
}

function printTable(rows: Row[]): void {
  console.log(`\nbench: ${ROUNDS} rounds of ${SECONDS} s cells, ${os.cpus().length} cores, node ${process.version}, ${new Date().toISOString()}`);
  console.log('ratio: tx/s against the by-hand baseline of the same round, the median of the rounds (range: lowest and highest);');
  console.log('+p50: p50 minus the baseline\'s (median of the rounds); the other figures are medians of the rounds;');
  console.log('cpu columns: ms of CPU per transaction of the coordinator process, the load generator, and the whole machine\n');
  const header = ['scenario', 'variant', 'clients', 'tx/s', 'ratio', 'range', 'p50 ms', '+p50 ms', 'p99 ms', 'fsync/tx', 'coord cpu', 'load cpu', 'all cpu'];
  const widths = [16, 11, 8, 8, 7, 10, 8, 8, 8, 9, 10, 9, 8];
  const line = (cells: string[]): string => cells.map((c, i) => (i < 2 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join(' ');
  console.log(line(header));
  for (const r of rows) {
    console.log(
      line([
        r.scenario,
        r.variant,
        String(r.clients),
        String(r.perSecond),
        r.ratio === undefined ? '' : `${r.ratio.toFixed(2)}×`,
        r.ratioRange === undefined ? '' : `${r.ratioRange[0].toFixed(2)}–${r.ratioRange[1].toFixed(2)}`,
        r.p50Ms.toFixed(2),
        r.p50OverheadMs === undefined ? '' : r.p50OverheadMs.toFixed(2),
        r.p99Ms.toFixed(2),
        r.fsyncsPerTx === undefined ? '' : r.fsyncsPerTx.toFixed(2),
        r.coordinatorCpuMsPerTx === undefined ? '' : r.coordinatorCpuMsPerTx.toFixed(3),
        r.loadCpuMsPerOp === undefined ? '' : r.loadCpuMsPerOp.toFixed(3),
        r.machineCpuMsPerOp === undefined ? '' : r.machineCpuMsPerOp.toFixed(3),
      ]),
    );
    if (r.note !== undefined) console.log(`  ${r.note}`);
  }
  const versus = rows.filter((r) => r.versus !== undefined);
  if (versus.length > 0) console.log('\nhead to head, against the other variant\'s cells of the same rounds (tx/s ratio, median and range; p50 difference):');
  for (const r of versus) {
    const v = r.versus!;
    console.log(
      `  ${r.scenario} ${r.variant} against ${v.variant}, ${r.clients} client${r.clients === 1 ? '' : 's'}: ${v.ratio.toFixed(2)}× (${v.ratioRange[0].toFixed(2)}–${v.ratioRange[1].toFixed(2)}), p50 ${v.p50DeltaMs >= 0 ? '+' : ''}${v.p50DeltaMs.toFixed(2)} ms`,
    );
  }
}

async function main(): Promise<void> {
  const rows: Row[] = [];
  let restartResult: RestartResult | undefined;
  if (ONLY.has('log-force')) rows.push(...(await logForce()));
  if (ONLY.has('transfer')) await withPostgresPair(true, (a, b) => transfer(rows, 'transfer', a, b, ['2pc', '2pc-ordered', '3pc'], { wireFloor: true }));
  if (ONLY.has('single-db')) await withPostgresPair(true, (a) => singleDb(rows, a));
  if (ONLY.has('transfer-pg-log')) {
    // The same transfer with the coordinator's log in a third (durable) Postgres server (TCX_LOG_URL).
    const logServer = await PostgresServer.start({ name: 'bench-log', durable: true });
    try {
      const logUrl = await freshDatabase(logServer.url(), 'wal');
      await withPostgresPair(true, (a, b) => transfer(rows, 'transfer-pg-log', a, b, ['2pc'], { coordinatorEnv: { TCX_LOG_URL: logUrl, TCX_COORDINATOR_ID: 'bench' } }));
    } finally {
      await logServer.destroy();
    }
  }
  if (ONLY.has('transfer-fast-pg')) await withPostgresPair(false, (a, b) => transfer(rows, 'transfer-fast-pg', a, b, ['2pc', '3pc']));
  if (ONLY.has('empty-http')) await emptyHttp(rows);
  if (ONLY.has('restart')) restartResult = await restart();
  printTable(rows);
  if (restartResult !== undefined) {
    const r = restartResult;
    console.log(
      `\nrestart: ${r.finishedTransactions} finished transactions in the log (${(r.logBytes / 1e6).toFixed(1)} MB, ` +
        `${r.tailTransactions} of them after the last compaction): ` +
        `serving after ${r.readyMs.toFixed(0)} ms (empty log: ${r.emptyReadyMs.toFixed(0)} ms)`,
    );
    console.log(
      `  memory per retained finished transaction: ${r.bytesPerFinished.toFixed(0)} B (heap + buffers), ${r.rssBytesPerFinished.toFixed(0)} B RSS; ` +
        `per active transaction (one http branch, ${r.activeTransactions} open): ${r.bytesPerActive.toFixed(0)} B`,
    );
  }
  fs.mkdirSync('bench-results', { recursive: true });
  const file = path.join('bench-results', `bench-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
  fs.writeFileSync(
    file,
    JSON.stringify({ at: new Date().toISOString(), seconds: SECONDS, rounds: ROUNDS, cores: os.cpus().length, cpu: os.cpus()[0]?.model, node: process.version, rows, restart: restartResult }, null, 2),
  );
  console.log(`\nwrote ${file}`);
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
