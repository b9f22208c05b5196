/**
 * What the coordinator allocates, by the function that allocates it: preload it into the
 * coordinator the bench starts, and it runs V8's sampling heap profiler over everything
 * allocated (objects the young or the old generation's collections already freed included, so
 * the profile shows the allocation rate, not what is live), from its start to a graceful exit,
 * and writes the profile and a ranking.
 *
 *   TCX_BENCH_NODE_FLAGS="--import ./dist-bench/bench/perf/alloc-profile.js" TCX_BENCH_ONLY=transfer \
 *     TCX_BENCH_CLIENTS=32 TCX_BENCH_ROUNDS=1 node dist-bench/bench/run.js
 *
 * writes /tmp/alloc-profile.<pid>.heapprofile (Chrome DevTools opens it) and
 * /tmp/alloc-profile.<pid>.txt, the functions allocating most (self) and the files (ALLOC_PROFILE_OUT
 * overrides the prefix). Bytes are sampled, one sample per ~32 KiB on average: shares, not counts.
 */
import fs from 'node:fs';
import { Session } from 'node:inspector';

interface ProfileNode {
  callFrame: { functionName: string; url: string; lineNumber: number };
  selfSize: number;
  children: ProfileNode[];
}

const session = new Session();
session.connect();
session.post('HeapProfiler.startSampling', {
  samplingInterval: 32 * 1024,
  includeObjectsCollectedByMajorGC: true,
  includeObjectsCollectedByMinorGC: true,
});

function ranking(root: ProfileNode): string {
  const byFunction = new Map<string, number>();
  const byFile = new Map<string, number>();
  let total = 0;
  const walk = (node: ProfileNode): void => {
    const { functionName, url, lineNumber } = node.callFrame;
    const file = url.replace(/^file:\/\/.*?\/(node_modules\/|dist\/)/, '$1') || '(native)';
    const key = `${functionName || '(anonymous)'} ${file}:${lineNumber + 1}`;
    byFunction.set(key, (byFunction.get(key) ?? 0) + node.selfSize);
    byFile.set(file, (byFile.get(file) ?? 0) + node.selfSize);
    total += node.selfSize;
    for (const child of node.children) walk(child);
  };
  walk(root);
  const top = (map: Map<string, number>, n: number): string[] =>
    [...map]
      .sort((a, b) => b[1] - a[1])
      .slice(0, n)
      .map(([key, bytes]) => `${((100 * bytes) / total).toFixed(1).padStart(5)} %  ${key}`);
  return [`sampled ${(total / 1048576).toFixed(0)} MiB`, '', 'by function (self)', ...top(byFunction, 60), '', 'by file', ...top(byFile, 30), ''].join('\n');
}

process.on('exit', () => {
  // An in-process inspector session answers synchronously, so this works in an exit handler.
  session.post('HeapProfiler.stopSampling', (err, result) => {
    if (err !== null) return;
    const prefix = `${process.env.ALLOC_PROFILE_OUT ?? '/tmp/alloc-profile'}.${process.pid}`;
    fs.writeFileSync(`${prefix}.heapprofile`, JSON.stringify(result.profile));
    fs.writeFileSync(`${prefix}.txt`, ranking(result.profile.head as unknown as ProfileNode));
  });
});
