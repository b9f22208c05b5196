/**
 * Where one transaction's time goes inside the coordinator, from its own event channels:
 * preload it into the coordinator the bench starts, and at exit it writes the medians (and
 * 90th percentiles) of every participant call, of the log's forced flushes, of each phase of
 * a transaction, and of a `POST /v1/transactions` from its arrival to its answer.
 *
 *   NODE_OPTIONS="--import ./dist-bench/bench/perf/phase-trace.js" PHASE_TRACE_OUT=/tmp/trace \
 *     TCX_BENCH_ONLY=transfer TCX_BENCH_CLIENTS=1 node dist-bench/bench/run.js
 *
 * writes /tmp/trace.<pid> for every process that saw a transaction (the coordinator; the bench
 * passes no TCX_ variable on to it, hence the name). At one client the requests do not
 * overlap, so the phases add up to the request.
 */
import diagnosticsChannel from 'node:diagnostics_channel';
import fs from 'node:fs';
import http from 'node:http';

const samples = new Map<string, number[]>();
const add = (key: string, ms: number): void => {
  let list = samples.get(key);
  if (list === undefined) samples.set(key, (list = []));
  list.push(ms);
};

interface Request {
  readonly arrived: number;
  begun?: number;
  ended?: number;
  protocol?: string;
}
let current: Request | undefined;

diagnosticsChannel.subscribe('tcx:participant:call', (m) => {
  const e = m as { kind: string; call: string; durationMs: number };
  add(`call ${e.kind} ${e.call}`, e.durationMs);
});
diagnosticsChannel.subscribe('tcx:log:flushed', (m) => {
  const e = m as { forced: boolean; durationMs: number };
  if (e.forced) add('log: forced flush (the sync)', e.durationMs);
});
diagnosticsChannel.subscribe('tcx:transaction:ended', (m) => {
  const e = m as { protocol: string; durationMs: number; workMs: number; prepareMs?: number; deliverMs?: number };
  const tx = `tx ${e.protocol}:`;
  add(`${tx} begin to end`, e.durationMs);
  add(`${tx} work`, e.workMs);
  if (e.prepareMs !== undefined) add(`${tx} prepare until the decision is durable`, e.prepareMs);
  if (e.deliverMs !== undefined) add(`${tx} phase 2`, e.deliverMs);
  if (current !== undefined) {
    current.protocol = e.protocol;
    current.ended = performance.now();
    current.begun = current.ended - e.durationMs;
  }
});

const emit = http.Server.prototype.emit;
http.Server.prototype.emit = function (this: http.Server, event: string, ...args: unknown[]): boolean {
  const [req, res] = args as [http.IncomingMessage, http.ServerResponse];
  if (event === 'request' && req.method === 'POST' && req.url === '/v1/transactions') {
    const r: Request = { arrived: performance.now() };
    current = r;
    res.once('finish', () => {
      const done = performance.now();
      const request = `request ${r.protocol ?? '?'}:`;
      add(`${request} arrival to answer`, done - r.arrived);
      if (r.begun !== undefined && r.ended !== undefined) {
        add(`${request} arrival to begin`, r.begun - r.arrived);
        add(`${request} end to answer`, done - r.ended);
      }
    });
  }
  return Reflect.apply(emit, this, [event, ...args]) as boolean;
} as typeof emit;

process.on('exit', () => {
  if (samples.size === 0) return;
  const lines = [...samples].map(([key, list]) => {
    list.sort((a, b) => a - b);
    const at = (q: number): string => (list[Math.floor(q * (list.length - 1))] ?? 0).toFixed(3);
    return `${key.padEnd(44)} n=${String(list.length).padStart(6)}  p50 ${at(0.5)} ms  p90 ${at(0.9)} ms`;
  });
  fs.writeFileSync(`${process.env.PHASE_TRACE_OUT ?? 'phase-trace'}.${process.pid}`, `${lines.join('\n')}\n`);
});
