/**
 * Recovery from what the journal writes now: a committed transaction is one forced decision
 * record (with the branch list and the transaction's summary) and an unforced end record;
 * nothing is logged before the decision for stores that list their own prepared branches.
 */
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { CoordinatorLog } from '../../src/coordinator/coordinator-log.js';
import { decisionRecord } from '../../src/coordinator/journal.js';
import { LiveTransaction } from '../../src/coordinator/live-transaction.js';
import { decodeSegment } from '../../src/log/segment-scan.js';
import { silentLogger } from '../../src/logger.js';
import { balanceOf, createAccounts, freshDatabase, preparedGids, withClient, eventually, prepareByHand } from '../support/databases.js';
import { startCoordinator, tempDataDir, type InProcessCoordinator } from '../support/in-process-coordinator.js';

let dbA: string;
let dbB: string;

async function api(c: InProcessCoordinator, url: string) {
  const res = await c.app.inject({ method: 'GET', url });
  return { status: res.statusCode, body: res.json() };
}



/** A transfer as the journal sees it just before its decision: two prepared Postgres branches. */
function transfer(coordinatorId: string, id: string, protocol: '2pc' | '3pc'): LiveTransaction {
  const tx = new LiveTransaction({ id, protocol, timeoutMs: 30_000, createdAt: new Date().toISOString() });
  for (const [no, participant] of [[1, 'a'], [2, 'b']] as const) {
    tx.branches.set(`b${no}`, { branchId: `b${no}`, participant, kind: 'postgres', gid: `tcx:${coordinatorId}:${id}:${no}`, prepareSent: true, attempts: 1, vote: 'yes' });
  }
  return tx;
}

/** A log with the coordinator id and both participants, then whatever `write` adds: as a killed coordinator left it. */
async function writeLog(dir: string, coordinatorId: string, write: (log: CoordinatorLog) => Promise<void>): Promise<void> {
  const { log } = await CoordinatorLog.open({ dir, segmentMaxBytes: 1 << 20, retentionMs: 86_400_000, maxRetainedTransactions: 1000, logger: silentLogger() });
  const at = new Date().toISOString();
  await log.force({ t: 'coordinator', coordinatorId, at });
  for (const [name, connectionString] of [['a', dbA], ['b', dbB]] as const) {
    await log.force({ t: 'participant-registered', participant: { name, kind: 'postgres', connectionString, registeredAt: at } });
  }
  await write(log);
  await log.close();
}

beforeAll(async () => {
  [dbA, dbB] = await Promise.all([freshDatabase(inject('pgUrlA')), freshDatabase(inject('pgUrlB'))]);
  await createAccounts(dbA, { alice: 100 });
  await createAccounts(dbB, { bob: 100 });
});

afterAll(async () => {
  for (const db of [dbA, dbB]) {
    for (const gid of await preparedGids(db, 'tcx:')) await withClient(db, (c) => c.query(`ROLLBACK PREPARED '${gid}'`));
  }
});

describe('recovery from the journal', () => {
  for (const protocol of ['2pc', '3pc'] as const) {
    it(`${protocol}: the one forced decision record alone brings the transaction back and commits every branch`, async () => {
      const dir = tempDataDir();
      const cid = `jr${protocol}`;
      const id = protocol === '2pc' ? '55555555-5555-4555-8555-555555555555' : '66666666-6666-4666-8666-666666666666';
      const tx = transfer(cid, id, protocol);
      await writeLog(dir, cid, async (log) => {
        // 3PC: the pre-commit is the forced decision; no commit record follows it.
        await log.force(decisionRecord(tx, protocol === '3pc' ? 'precommit' : 'commit', new Date().toISOString())!);
      });
      await prepareByHand(dbA, `tcx:${cid}:${id}:1`, 'alice', -10);
      await prepareByHand(dbB, `tcx:${cid}:${id}:2`, 'bob', 10);
      const before = [await balanceOf(dbA, 'alice'), await balanceOf(dbB, 'bob')];
      const c = await startCoordinator({}, dir);
      try {
        await eventually(async () => (await api(c, `/v1/transactions/${id}`)).body.state === 'committed');
        const got = (await api(c, `/v1/transactions/${id}`)).body;
        expect(got).toMatchObject({ id, protocol, decision: 'commit', timeoutMs: 30_000 });
        expect(got.branches.map((b: { participant: string }) => b.participant)).toEqual(['a', 'b']);
        expect([await balanceOf(dbA, 'alice'), await balanceOf(dbB, 'bob')]).toEqual([before[0]! - 10, before[1]! + 10]);
        expect(await preparedGids(dbA, `tcx:${cid}:`)).toEqual([]);
        expect(await preparedGids(dbB, `tcx:${cid}:`)).toEqual([]);
      } finally {
        await c.destroy();
      }
    });
  }

  it('a decision record torn by the crash is no decision: presumed abort rolls back every prepared branch', async () => {
    const dir = tempDataDir();
    const cid = 'jrtorn';
    const id = '77777777-7777-4777-8777-777777777777';
    await writeLog(dir, cid, async (log) => {
      await log.force(decisionRecord(transfer(cid, id, '2pc'), 'commit', new Date().toISOString())!);
    });
    // The crash tore the last record: it never became durable, so no commit left either.
    const segment = fs.readdirSync(dir).filter((f) => f.startsWith('segment-')).sort().at(-1)!;
    const file = path.join(dir, segment);
    const framesEnd = decodeSegment(fs.readFileSync(file)).goodEnd; // zeros follow: the segment is preallocated
    fs.truncateSync(file, framesEnd - 7);
    await prepareByHand(dbA, `tcx:${cid}:${id}:1`, 'alice', -10);
    await prepareByHand(dbB, `tcx:${cid}:${id}:2`, 'bob', 10);
    const before = [await balanceOf(dbA, 'alice'), await balanceOf(dbB, 'bob')];
    const c = await startCoordinator({}, dir);
    try {
      expect(await preparedGids(dbA, `tcx:${cid}:`)).toEqual([]);
      expect(await preparedGids(dbB, `tcx:${cid}:`)).toEqual([]);
      expect([await balanceOf(dbA, 'alice'), await balanceOf(dbB, 'bob')]).toEqual(before);
      // The sweep records what it did: the transaction reads as aborted, by presumption.
      const got = await api(c, `/v1/transactions/${id}`);
      expect(got.body).toMatchObject({ id, state: 'aborted', decision: 'abort' });
      expect(got.body.reason).toMatch(/presumed abort/);
      expect(got.body.branches.map((b: { participant: string }) => b.participant).sort()).toEqual(['a', 'b']);
    } finally {
      await c.destroy();
    }
  });
});
