/**
 * Closed-loop load: `clients` concurrent loops, each running `op` back to back for
 * a fixed time, with every latency recorded. Also the CPU time of another process
 * (the coordinator) read from /proc, so the bench can report CPU per transaction.
 */
import fs from 'node:fs';

export const SECONDS = Number(process.env.TCX_BENCH_SECONDS ?? 3);

export interface Cell {
  readonly ops: number;
  readonly errors: number;
  readonly perSecond: number;
  readonly p50Ms: number;
  readonly p99Ms: number;
  /** CPU time of the whole machine (every process, kernel included) per operation, in ms. */
  readonly machineCpuMsPerOp?: number;
  /** CPU time of the load generator (this process) per operation, in ms. */
  readonly loadCpuMsPerOp?: number;
}

/** `afterWarmup` runs between the warm-up and the timed part (to read counters the cell is measured against). */
export async function measure(
  clients: number,
  op: (client: number, i: number) => Promise<void>,
  options: { seconds?: number; afterWarmup?: () => Promise<void> } = {},
): Promise<Cell> {
  const seconds = options.seconds ?? SECONDS;
  // A short warm-up so that connection set-up and JIT do not count.
  const warmEnd = Date.now() + Math.min(1000, seconds * 200);
  await Promise.all(
    Array.from({ length: clients }, async (_, c) => {
      for (let i = 0; Date.now() < warmEnd; i++) await op(c, -1 - i).catch(() => undefined);
    }),
  );
  await options.afterWarmup?.();
  const latencies: number[] = [];
  let errors = 0;
  let firstError: unknown;
  const machineBefore = machineBusySeconds();
  const loadBefore = process.cpuUsage();
  const end = Date.now() + seconds * 1000;
  const started = process.hrtime.bigint();
  await Promise.all(
    Array.from({ length: clients }, async (_, c) => {
      for (let i = 0; Date.now() < end; i++) {
        const t = process.hrtime.bigint();
        try {
          await op(c, i);
          latencies.push(Number(process.hrtime.bigint() - t) / 1e6);
        } catch (err) {
          errors++;
          firstError ??= err;
        }
      }
    }),
  );
  const elapsed = Number(process.hrtime.bigint() - started) / 1e9;
  const machineAfter = machineBusySeconds();
  const load = process.cpuUsage(loadBefore);
  const ops = Math.max(1, latencies.length);
  if (errors > 0) console.error(`  ${errors} failed operations, first: ${firstError instanceof Error ? firstError.message : String(firstError)}`);
  latencies.sort((a, b) => a - b);
  const pct = (p: number): number => round2(latencies[Math.min(latencies.length - 1, Math.floor(latencies.length * p))] ?? 0);
  return {
    ops: latencies.length,
    errors,
    perSecond: Math.round(latencies.length / elapsed),
    p50Ms: pct(0.5),
    p99Ms: pct(0.99),
    ...(machineBefore === undefined || machineAfter === undefined ? {} : { machineCpuMsPerOp: round3(((machineAfter - machineBefore) * 1000) / ops) }),
    loadCpuMsPerOp: round3((load.user + load.system) / 1000 / ops),
  };
}

export function round2(x: number): number {
  return Math.round(x * 100) / 100;
}

export function round3(x: number): number {
  return Math.round(x * 1000) / 1000;
}

/** CPU seconds the whole machine has spent busy (all cores; not idle, not waiting for I/O), from /proc/stat. */
export function machineBusySeconds(): number | undefined {
  try {
    const line = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0] ?? '';
    const [, ...fields] = line.trim().split(/\s+/);
    const ticks = fields.map(Number);
    const idle = (ticks[3] ?? 0) + (ticks[4] ?? 0);
    const total = ticks.slice(0, 8).reduce((a, b) => a + b, 0);
    return (total - idle) / TICKS_PER_SECOND;
  } catch {
    return undefined;
  }
}

const TICKS_PER_SECOND = 100; // USER_HZ on Linux

/** User + system CPU seconds a process has used so far, or undefined where /proc is missing. */
export function processCpuSeconds(pid: number): number | undefined {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Fields after the command name (which may hold spaces) start after the last ')'.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const utime = Number(fields[11]);
    const stime = Number(fields[12]);
    return (utime + stime) / TICKS_PER_SECOND;
  } catch {
    return undefined;
  }
}

/** Resident set size of a process in bytes, from /proc. */
export function processRssBytes(pid: number): number | undefined {
  try {
    const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
    const kb = /VmRSS:\s+(\d+)\s+kB/.exec(status)?.[1];
    return kb === undefined ? undefined : Number(kb) * 1024;
  } catch {
    return undefined;
  }
}
