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
 * Environment: TCX_BENCH_SECONDS (per cell, default 5), TCX_BENCH_ONLY (comma list of
 * scenarios), TCX_BENCH_CLIENTS (comma list of client counts), TCX_BENCH_CPU_PROF (a directory: the coordinator runs with --cpu-prof
 * there), TCX_BENCH_RESTART_TRANSACTIONS (default 1000000), TCX_BENCH_PG_URL_A/_B
 * (use these servers instead of starting two).
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createAccounts, freshDatabase } from '../test/support/databases.js';
import { PostgresServer } from '../test/support/postgres-server.js';
import { CoordinatorChild, type Health } from './perf/coordinator-child.js';
import { logForce } from './perf/log-force.js';
import { measure, processCpuSeconds, round2, SECONDS, type Cell } from './perf/measure.js';
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

export interface Row extends Cell {
  readonly scenario: string;
  readonly variant: string;
  readonly clients: number;
  /** Coordinator rows: fdatasyncs of its log per committed transaction. */
  readonly fsyncsPerTx?: number;
  /** Coordinator rows: its CPU time (user + system) per transaction, in ms. */
  readonly coordinatorCpuMsPerTx?: number;
  readonly note?: string;
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
    await warmUp(transferThroughCoordinator(coordinator, '2pc', true));
    // Like the hand-written client, the two databases' work runs at once; `-ordered` runs it in request order.
    const ops = variants.map((variant) => ({ variant, op: transferThroughCoordinator(coordinator, variant === '3pc' ? '3pc' : '2pc', variant !== '2pc-ordered') }));
    const cells: { variant: string; run: (clients: number) => Promise<Row> }[] = ops.map(({ variant, op }) => ({
      variant,
      run: (clients: number) => coordinatorCell(coordinator, scenario, variant, clients, op),
    }));
    if (options.wireFloor === true) {
      const started = (floor = await WireFloorChild.start({ postgres: [dbA, dbB] }));
      const op = transferThroughCoordinator(started, '2pc', true);
      await warmUp(op);
      cells.push({ variant: 'wire-floor', run: (clients: number) => wireFloorCell(started, scenario, clients, op) });
    }
    await interleaved(rows, scenario, levels, (clients) => measure(clients, byHand), cells);
  } finally {
    await floor?.stop();
    await coordinator.stop();
    await Promise.all([pools.a.end(), pools.b.end()]);
  }
}

/**
 * Per client count, the baseline's cell and then each variant's, so that every ratio
 * compares cells measured within seconds of each other: this VM's speed drifts over a run by
 * more than the differences measured. The order of the variants rotates with the client
 * count, so that the one measured right after the baseline changes from level to level —
 * with more variants than levels, not every one gets a turn (the transfer's wire floor,
 * listed last, never does); the rows keep the variants' order.
 */
async function interleaved(
  rows: Row[],
  scenario: string,
  levels: readonly number[],
  baseline: (clients: number) => Promise<Cell>,
  variants: readonly { variant: string; run: (clients: number) => Promise<Row> }[],
): Promise<void> {
  for (const [level, clients] of levels.entries()) {
    rows.push({ scenario, variant: 'by-hand', clients, ...(await baseline(clients)) });
    const measured = new Map<string, Row>();
    for (let i = 0; i < variants.length; i++) {
      const v = variants[(i + level) % variants.length]!;
      measured.set(v.variant, await v.run(clients));
    }
    for (const v of variants) rows.push(measured.get(v.variant)!);
  }
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
    await warmUp(localTransferThroughCoordinator(coordinator, true));
    const variants = (
      [
        ['one-phase', true],
        ['2pc', false],
      ] as const
    ).map(([variant, onePhase]) => {
      const op = localTransferThroughCoordinator(coordinator, onePhase);
      return { variant, run: (clients: number) => coordinatorCell(coordinator, 'single-db', variant, clients, op) };
    });
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
      await warmUp(emptyThroughCoordinator(coordinator));
      const floor = await WireFloorChild.start({ http: [participants.ports[0]!, participants.ports[1]!] });
      try {
        const floorOp = emptyThroughCoordinator(floor);
        await warmUp(floorOp);
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
 * as they get hot) while the baseline ran in a process warmed by its own earlier cells: a few
 * seconds of load, not measured, before its first cell.
 */
async function warmUp(op: (c: number) => Promise<void>): Promise<void> {
  const end = Date.now() + Math.min(3_000, SECONDS * 600);
  await Promise.all(Array.from({ length: 4 }, async (_, c) => {
    while (Date.now() < end) await op(c).catch(() => undefined);
  }));
}

async function startCoordinator(label: string, env: Record<string, string> = {}): Promise<{ child: CoordinatorChild }> {
  const nodeFlags: string[] = [];
  if (CPU_PROF !== undefined) {
    fs.mkdirSync(CPU_PROF, { recursive: true });
    nodeFlags.push('--cpu-prof', `--cpu-prof-dir=${path.resolve(CPU_PROF)}`, `--cpu-prof-name=coordinator-${label}-${Date.now()}.cpuprofile`);
  }
  return CoordinatorChild.start({ nodeFlags, connections: 64, env });
}

function printTable(rows: Row[]): void {
  const baseline = (r: Row): Row | undefined =>
    rows.find((b) => b.scenario === r.scenario && b.variant === 'by-hand' && b.clients === r.clients);
  console.log(`\nbench: ${SECONDS} s per cell, ${os.cpus().length} cores, node ${process.version}, ${new Date().toISOString()}`);
  console.log('ratio: tx/s against the by-hand baseline at the same clients; +p50: p50 minus the baseline\'s;');
  console.log('cpu columns: ms of CPU per transaction of the coordinator process, the load generator, and the whole machine\n');
  const header = ['scenario', 'variant', 'clients', 'tx/s', 'ratio', 'p50 ms', '+p50 ms', 'p99 ms', 'fsync/tx', 'coord cpu', 'load cpu', 'all cpu'];
  const widths = [16, 11, 8, 8, 7, 8, 8, 8, 9, 10, 9, 8];
  const line = (cells: string[]): string => cells.map((c, i) => (i < 2 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join(' ');
  console.log(line(header));
  for (const r of rows) {
    const b = r.variant === 'by-hand' ? undefined : baseline(r);
    console.log(
      line([
        r.scenario,
        r.variant,
        String(r.clients),
        String(r.perSecond),
        b === undefined ? '' : `${(r.perSecond / Math.max(1, b.perSecond)).toFixed(2)}×`,
        r.p50Ms.toFixed(2),
        b === undefined ? '' : (r.p50Ms - b.p50Ms).toFixed(2),
        r.p99Ms.toFixed(2),
        r.fsyncsPerTx === undefined ? '' : r.fsyncsPerTx.toFixed(2),
        r.coordinatorCpuMsPerTx === undefined ? '' : r.coordinatorCpuMsPerTx.toFixed(3),
        r.loadCpuMsPerOp === undefined ? '' : r.loadCpuMsPerOp.toFixed(3),
        r.machineCpuMsPerOp === undefined ? '' : r.machineCpuMsPerOp.toFixed(3),
      ]),
    );
    if (r.note !== undefined) console.log(`  ${r.note}`);
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
    JSON.stringify({ at: new Date().toISOString(), seconds: SECONDS, cores: os.cpus().length, cpu: os.cpus()[0]?.model, node: process.version, rows, restart: restartResult }, null, 2),
  );
  console.log(`\nwrote ${file}`);
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
