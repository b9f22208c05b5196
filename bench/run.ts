/**
 * `npm run bench`: the coordinator measured side by side with baselines taken
 * in the same run, on the same servers, with the load coming from this process
 * and the coordinator running as its own process (`node dist/main.js`), as a
 * client and a deployment would have it. Prints a table and writes JSON to
 * bench-results/.
 *
 *   log-force   forced appends to the file log alone: how many share one fdatasync
 *   transfer    one UPDATE in each of two Postgres databases, atomically:
 *                 baseline  a hand-written 2PC client (PREPARE TRANSACTION + COMMIT PREPARED)
 *                 2pc, 3pc  one request to the coordinator per transfer
 *   empty-http  two HTTP participants in another process that answer at once:
 *                 baseline  a client making the same four calls (prepare ×2, commit ×2)
 *                 2pc       one request to the coordinator per transaction
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
import { CoordinatorChild } from './perf/coordinator-child.js';
import { logForce } from './perf/log-force.js';
import { measure, processCpuSeconds, round2, SECONDS, type Cell } from './perf/measure.js';
import { restart, type RestartResult } from './perf/restart.js';
import {
  emptyByHand,
  emptyThroughCoordinator,
  pgPools,
  startHttpParticipants,
  transferByHand,
  transferThroughCoordinator,
} from './perf/scenarios.js';

const ONLY = new Set((process.env.TCX_BENCH_ONLY ?? 'log-force,transfer,empty-http,restart').split(',').map((s) => s.trim()));
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

async function coordinatorCell(
  coordinator: CoordinatorChild,
  scenario: string,
  variant: string,
  clients: number,
  op: (c: number) => Promise<void>,
): Promise<Row> {
  const before = await coordinator.health();
  const cpuBefore = processCpuSeconds(coordinator.pid);
  const cell = await measure(clients, op);
  const cpuAfter = processCpuSeconds(coordinator.pid);
  const after = await coordinator.health();
  // The warm-up's transactions count in the fsyncs too; measure() reports only the timed ones.
  const fsyncs = after.log.fsyncs - before.log.fsyncs;
  const total = cell.ops + (await warmupOps(cell));
  return {
    scenario,
    variant,
    clients,
    ...cell,
    fsyncsPerTx: round2(fsyncs / Math.max(1, total)),
    ...(cpuBefore === undefined || cpuAfter === undefined ? {} : { coordinatorCpuMsPerTx: round2(((cpuAfter - cpuBefore) * 1000) / Math.max(1, total)) }),
  };
}

/** measure() runs a warm-up of min(1 s, 20 % of the cell) before timing: estimate its transactions. */
async function warmupOps(cell: Cell): Promise<number> {
  return Math.round(cell.perSecond * Math.min(1, SECONDS * 0.2));
}

async function transfer(rows: Row[], urlA: string, urlB: string): Promise<void> {
  const dbA = await freshDatabase(urlA, 'bench');
  const dbB = await freshDatabase(urlB, 'bench');
  const accounts = Object.fromEntries(Array.from({ length: 64 }, (_, i) => [`acct${i}`, 1_000_000_000]));
  await createAccounts(dbA, accounts);
  await createAccounts(dbB, accounts);
  const levels = CLIENTS ?? [1, 8, 32];
  const pools = pgPools(dbA, dbB, Math.max(...levels) + 2);
  const byHand = transferByHand(pools);
  for (const clients of levels) rows.push({ scenario: 'transfer', variant: 'by-hand', clients, ...(await measure(clients, byHand)) });
  await Promise.all([pools.a.end(), pools.b.end()]);

  const { child: coordinator } = await startCoordinator('transfer');
  try {
    for (const [name, connectionString] of [['a', dbA], ['b', dbB]] as const) {
      const res = await coordinator.request('POST', '/v1/participants', { name, kind: 'postgres', connectionString });
      if (res.status !== 201) throw new Error(`registering ${name}: ${res.status} ${JSON.stringify(res.json)}`);
    }
    for (const protocol of ['2pc', '3pc'] as const) {
      for (const clients of levels) {
        rows.push(await coordinatorCell(coordinator, 'transfer', protocol, clients, transferThroughCoordinator(coordinator, protocol)));
      }
    }
  } finally {
    await coordinator.stop();
  }
}

async function emptyHttp(rows: Row[]): Promise<void> {
  const participants = await startHttpParticipants();
  const levels = CLIENTS ?? [1, 16, 64];
  try {
    for (const clients of levels) {
      const baseline = emptyByHand(participants.ports, clients);
      rows.push({ scenario: 'empty-http', variant: 'by-hand', clients, ...(await measure(clients, baseline.op)) });
      await baseline.close();
    }
    const { child: coordinator } = await startCoordinator('empty-http');
    try {
      for (const [i, port] of participants.ports.entries()) {
        const res = await coordinator.request('POST', '/v1/participants', { name: `h${i + 1}`, kind: 'http', baseUrl: `http://127.0.0.1:${port}` });
        if (res.status !== 201) throw new Error(`registering h${i + 1}: ${res.status} ${JSON.stringify(res.json)}`);
      }
      for (const clients of levels) rows.push(await coordinatorCell(coordinator, 'empty-http', '2pc', clients, emptyThroughCoordinator(coordinator)));
    } finally {
      await coordinator.stop();
    }
  } finally {
    participants.stop();
  }
}

async function startCoordinator(label: string): Promise<{ child: CoordinatorChild }> {
  const nodeFlags: string[] = [];
  if (CPU_PROF !== undefined) {
    fs.mkdirSync(CPU_PROF, { recursive: true });
    nodeFlags.push('--cpu-prof', `--cpu-prof-dir=${path.resolve(CPU_PROF)}`, `--cpu-prof-name=coordinator-${label}-${Date.now()}.cpuprofile`);
  }
  return CoordinatorChild.start({ nodeFlags, connections: 64 });
}

function printTable(rows: Row[]): void {
  const baseline = (r: Row): Row | undefined =>
    rows.find((b) => b.scenario === r.scenario && b.variant === 'by-hand' && b.clients === r.clients);
  console.log(`\nbench: ${SECONDS} s per cell, ${os.cpus().length} cores, node ${process.version}, ${new Date().toISOString()}\n`);
  const header = ['scenario', 'variant', 'clients', 'tx/s', 'ratio', 'p50 ms', '+p50 ms', 'p99 ms', 'fsync/tx', 'cpu ms/tx'];
  const widths = [11, 8, 8, 8, 7, 8, 8, 8, 9, 10];
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
      ]),
    );
    if (r.note !== undefined) console.log(`  ${r.note}`);
  }
}

async function main(): Promise<void> {
  const rows: Row[] = [];
  let restartResult: RestartResult | undefined;
  const servers: PostgresServer[] = [];
  try {
    if (ONLY.has('log-force')) rows.push(...(await logForce()));
    if (ONLY.has('transfer')) {
      let urlA = process.env.TCX_BENCH_PG_URL_A;
      let urlB = process.env.TCX_BENCH_PG_URL_B;
      if (urlA === undefined || urlB === undefined) {
        const [a, b] = await Promise.all([PostgresServer.start({ name: 'bench-a' }), PostgresServer.start({ name: 'bench-b' })]);
        servers.push(a, b);
        urlA = a.url();
        urlB = b.url();
      }
      await transfer(rows, urlA, urlB);
    }
    if (ONLY.has('empty-http')) await emptyHttp(rows);
    if (ONLY.has('restart')) restartResult = await restart();
  } finally {
    for (const server of servers) await server.destroy();
  }
  printTable(rows);
  if (restartResult !== undefined) {
    const r = restartResult;
    console.log(
      `\nrestart: ${r.finishedTransactions} finished transactions in the log (${(r.logBytes / 1e6).toFixed(1)} MB): ` +
        `serving after ${r.readyMs.toFixed(0)} ms (empty log: ${r.emptyReadyMs.toFixed(0)} ms)`,
    );
    console.log(
      `  memory per retained finished transaction: ${r.bytesPerFinished.toFixed(0)} B heap, ${r.rssBytesPerFinished.toFixed(0)} B RSS; ` +
        `per active transaction: ${r.bytesPerActive.toFixed(0)} B heap`,
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
