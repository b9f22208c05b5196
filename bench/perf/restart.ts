/**
 * Start-up with a long history: a log holding TCX_BENCH_RESTART_TRANSACTIONS (default
 * 1,000,000) finished two-branch transactions, written with the coordinator's own journal
 * and log code, then the built coordinator started on it and timed until /healthz answers.
 * Memory per retained finished transaction and per active transaction come from the
 * coordinator's own /healthz, against an empty log.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { randomUUID } from 'node:crypto';
import { CoordinatorLog } from '../../src/coordinator/coordinator-log.js';
import { decisionRecord, endedRecord } from '../../src/coordinator/journal.js';
import { LiveTransaction } from '../../src/coordinator/live-transaction.js';
import { silentLogger } from '../../src/logger.js';
import { CoordinatorChild, type Health } from './coordinator-child.js';
import { collectGarbage, INSPECT_FLAG } from './remote-gc.js';

export interface RestartResult {
  readonly finishedTransactions: number;
  /** Of which written after the last compaction: replayed record by record. */
  readonly tailTransactions: number;
  readonly logBytes: number;
  readonly readyMs: number;
  readonly emptyReadyMs: number;
  readonly bytesPerFinished: number;
  readonly rssBytesPerFinished: number;
  readonly activeTransactions: number;
  readonly bytesPerActive: number;
}

const COORDINATOR_ID = 'benchrestart';

/** n finished transactions, compacted, then `tail` more after the last compaction (replayed record by record). */
export async function writeHistory(dir: string, n: number, tail: number): Promise<void> {
  const { log } = await CoordinatorLog.open({
    dir,
    segmentMaxBytes: 8 * 1024 * 1024,
    retentionMs: 24 * 3_600_000,
    maxRetainedTransactions: n + tail,
    logger: silentLogger(),
  });
  await log.force({ t: 'coordinator', coordinatorId: COORDINATOR_ID, at: new Date().toISOString() });
  for (let i = 0; i < n + tail; i++) {
    if (i === n) await log.compact();
    const tx = new LiveTransaction({ id: randomUUID(), protocol: '2pc', timeoutMs: 30_000, createdAt: new Date().toISOString() });
    for (const [no, participant] of [[1, 'bank-a'], [2, 'bank-b']] as const) {
      tx.branches.set(`b${no}`, {
        branchId: `b${no}`,
        participant,
        kind: 'postgres',
        gid: `tcx:${COORDINATOR_ID}:${tx.id}:${no}`,
        prepareSent: true,
        attempts: 1,
        vote: 'yes',
      });
    }
    log.record(decisionRecord(tx, 'commit', new Date().toISOString())!);
    log.record(endedRecord(tx, 'commit'));
    if (i % 1_000 === 999) await log.flush();
  }
  await log.close();
}

/** Bytes the log's files take on disk (the segment's preallocated tail is sparse: not counted). */
function dirBytes(dir: string): number {
  return fs.readdirSync(dir).reduce((n, f) => {
    const st = fs.statSync(path.join(dir, f));
    return n + Math.min(st.size, st.blocks * 512);
  }, 0);
}

const heapOf = (h: Health): number => (h.memory?.heapUsedBytes ?? 0) + (h.memory?.externalBytes ?? 0);

export async function restart(): Promise<RestartResult> {
  const total = Number(process.env.TCX_BENCH_RESTART_TRANSACTIONS ?? 1_000_000);
  // The worst case within the default segment size (8 MiB): a tail of ~24,000 transactions
  // (~7.5 MiB of records) written since the last compaction.
  const tail = Math.min(24_000, Math.floor(total / 10));
  const n = total;
  const full = fs.mkdtempSync(path.join(os.tmpdir(), 'tcx-bench-restart-'));
  const started = Date.now();
  await writeHistory(full, total - tail, tail);
  console.error(`  restart: wrote ${total} finished transactions (${tail} after the last compaction) in ${((Date.now() - started) / 1000).toFixed(1)} s`);

  // Start-up is timed without the inspector (it slows start-up down), on the log as written;
  // every memory reading then follows a full collection in the coordinator (through its inspector).
  const emptyTimed = await CoordinatorChild.start({ connections: 8 });
  await emptyTimed.child.stop();
  const loadedTimed = await CoordinatorChild.start({ dataDir: full, connections: 2 });
  await loadedTimed.child.stop({ keepDataDir: true });
  const settled = async (c: CoordinatorChild): Promise<Health> => {
    await collectGarbage(c.outputFile);
    return c.health();
  };
  const empty = await CoordinatorChild.start({ connections: 8, nodeFlags: [INSPECT_FLAG] });
  const emptyHealth = await settled(empty.child);
  // Active transactions: begun, each with an http branch enlisted (nothing is sent before prepare).
  const active = 5_000;
  await empty.child.request('POST', '/v1/participants', { name: 'h', kind: 'http', baseUrl: 'http://127.0.0.1:9' });
  const beforeActive = await settled(empty.child);
  await Promise.all(
    Array.from({ length: 8 }, async (_, c) => {
      for (let i = c; i < active; i += 8) {
        const res = await empty.child.request('POST', '/v1/transactions', { timeoutMs: 600_000, branches: [{ participant: 'h', payload: { i } }] });
        if (res.status !== 201) throw new Error(`begin answered ${res.status}`);
      }
    }),
  );
  const afterActive = await settled(empty.child);
  await empty.child.stop();

  const loaded = await CoordinatorChild.start({ dataDir: full, connections: 2, nodeFlags: [INSPECT_FLAG] });
  const health = await settled(loaded.child);
  const logBytes = dirBytes(full);
  await loaded.child.stop();
  if (health.retainedTransactions !== n) throw new Error(`the coordinator retained ${health.retainedTransactions} of ${n} finished transactions`);
  return {
    finishedTransactions: n,
    tailTransactions: tail,
    logBytes,
    readyMs: loadedTimed.readyMs,
    emptyReadyMs: emptyTimed.readyMs,
    bytesPerFinished: (heapOf(health) - heapOf(emptyHealth)) / n,
    rssBytesPerFinished: ((health.memory?.rssBytes ?? 0) - (emptyHealth.memory?.rssBytes ?? 0)) / n,
    activeTransactions: active,
    bytesPerActive: (heapOf(afterActive) - heapOf(beforeActive)) / active,
  };
}
