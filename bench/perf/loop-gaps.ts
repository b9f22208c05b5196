/**
 * How long the coordinator's event loop was held, and when its log compacted: preload it
 * into the coordinator the bench starts, and at exit it writes the event-loop delay's
 * percentiles, every gap of 30 ms or more between ticks of a 10 ms timer (with its time of
 * day), and the time each new log segment appeared (a compaction) in TCX_DATA_DIR.
 *
 *   TCX_BENCH_NODE_FLAGS="--import ./dist-bench/bench/perf/loop-gaps.js" TCX_BENCH_ONLY=transfer \
 *     TCX_BENCH_CLIENTS=32 TCX_BENCH_SECONDS=6 node dist-bench/bench/run.js
 *
 * writes /tmp/loop-gaps.<pid> (LOOP_GAPS_OUT overrides the prefix; the bench passes no TCX_
 * variable of its own on to the coordinator, so this one is not TCX_-prefixed). A gap right
 * when a segment appears is the compaction holding the loop; gaps of similar size elsewhere are
 * the scheduler sharing 2 cores with the databases.
 */
import fs from 'node:fs';
import { monitorEventLoopDelay } from 'node:perf_hooks';

const delay = monitorEventLoopDelay({ resolution: 2 });
delay.enable();
const clock = (): string => new Date().toISOString().slice(11, 23);

const gaps: string[] = [];
let last = performance.now();
setInterval(() => {
  const now = performance.now();
  if (now - last >= 30) gaps.push(`${clock()} ${(now - last).toFixed(1)} ms`);
  last = now;
}, 10).unref();

const segments: string[] = [];
const seen = new Set<string>();
setInterval(() => {
  const dir = process.env.TCX_DATA_DIR;
  if (dir === undefined) return;
  try {
    for (const name of fs.readdirSync(dir)) {
      if (name.startsWith('segment-') && !seen.has(name)) {
        seen.add(name);
        segments.push(`${clock()} ${name}`);
      }
    }
  } catch {
    // the directory is being replaced or removed: look again next time
  }
}, 50).unref();

process.on('exit', () => {
  const ms = (ns: number): string => (ns / 1e6).toFixed(1);
  const lines = [
    `event-loop delay p50 ${ms(delay.percentile(50))} ms, p99 ${ms(delay.percentile(99))} ms, p99.9 ${ms(delay.percentile(99.9))} ms, max ${ms(delay.max)} ms`,
    `gaps of 30 ms or more (${gaps.length}):`,
    ...gaps.map((g) => `  ${g}`),
    `segments (each after the first: a compaction):`,
    ...segments.map((s) => `  ${s}`),
  ];
  fs.writeFileSync(`${process.env.LOOP_GAPS_OUT ?? '/tmp/loop-gaps'}.${process.pid}`, `${lines.join('\n')}\n`);
});
