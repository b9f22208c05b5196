/**
 * Sealing finished transactions ahead of a compaction, through the coordinator's own log: many
 * transactions finish across several size-triggered compactions, some while a bucket is being
 * sealed ahead; after a restart every one answers with its outcome, from buckets and from the
 * snapshot's records alike.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { randomUUID } from 'node:crypto';
import { afterEach, describe, expect, it } from 'vitest';
import { CoordinatorLog } from '../../src/coordinator/coordinator-log.js';
import type { DurableTransaction } from '../../src/log/log-records.js';
import { silentLogger } from '../../src/logger.js';

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true });
});

const open = (dir: string): ReturnType<typeof CoordinatorLog.open> =>
  CoordinatorLog.open({ dir, segmentMaxBytes: 1 << 20, retentionMs: 86_400_000, maxRetainedTransactions: 1_000_000, logger: silentLogger() });

/** An hour ago: well within the log's retention (a fixed date stops being so a day later). */
const START = Date.now() - 3_600_000;

function ended(i: number): DurableTransaction {
  const id = randomUUID();
  const at = new Date(START + i).toISOString();
  const commit = i % 5 !== 0;
  return {
    id,
    protocol: i % 2 === 0 ? '2pc' : '3pc',
    timeoutMs: 30_000,
    createdAt: at,
    branches: [
      { branchId: 'b1', participant: 'a', kind: 'postgres', gid: `tcx:c0ffee:${id}:1`, vote: 'yes' },
      { branchId: 'b2', participant: 'b', kind: 'postgres', gid: `tcx:c0ffee:${id}:2`, vote: commit ? 'yes' : 'no' },
    ],
    ...(commit ? { decision: 'commit' as const, decidedAt: at } : { reason: `branch b2 voted no #${i}` }),
    outcome: commit ? 'commit' : 'abort',
    endedAt: at,
  };
}

describe('sealing ahead of compactions, through the coordinator log', () => {
  it('keeps every finished transaction across compactions and a restart, with its outcome', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tcx-seal-ahead-'));
    dirs.push(dir);
    const { log } = await open(dir);
    const all: DurableTransaction[] = [];
    // ~350 bytes a record: a 1 MiB segment falls due every ~3,000, over the 2,000 worth sealing ahead.
    for (let i = 0; i < 12_000; i++) {
      const tx = ended(i);
      all.push(tx);
      if (i % 50 === 0) await log.force({ t: 'tx-state', tx });
      else log.record({ t: 'tx-state', tx });
      if (i % 500 === 0) await new Promise((r) => setImmediate(r)); // let a preparation run its slices
    }
    await log.flush();
    for (let waited = 0; log.stats().compactions < 3 && waited < 10_000; waited += 20) await new Promise((r) => setTimeout(r, 20));
    expect(log.stats().compactions).toBeGreaterThanOrEqual(3);
    const buckets = log.state.finished.sealedBuckets();
    expect(buckets.length).toBeGreaterThanOrEqual(3);
    // Each compaction put one bucket in place: the bucket sealed ahead (none of a few late ones).
    expect(buckets.every((b) => b.bucket.count >= 2_000)).toBe(true);
    for (const tx of all) expect(log.state.transaction(tx.id)).toEqual(tx);
    await log.close();

    const { log: reopened } = await open(dir);
    expect(reopened.finishedCount()).toBe(all.length);
    for (const tx of all) expect(reopened.state.transaction(tx.id)).toEqual(tx);
    await reopened.close();
  });
});
