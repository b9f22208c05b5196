import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { CoordinatorLog } from '../../src/coordinator/coordinator-log.js';
import { silentLogger } from '../../src/logger.js';
import { balanceOf, createAccounts, freshDatabase, preparedGids, withClient, eventually, prepareByHand } from '../support/databases.js';
import { startCoordinator, tempDataDir, type InProcessCoordinator } from '../support/in-process-coordinator.js';

let dbA: string;
let dbB: string;

const transferSql = (account: string, delta: number) => ({
  sql: 'UPDATE accounts SET balance = balance + $1 WHERE id = $2',
  params: [delta, account],
});

async function api(c: InProcessCoordinator, method: 'GET' | 'POST', url: string, payload?: unknown) {
  const res = await c.app.inject({ method, url, ...(payload === undefined ? {} : { payload: payload as object }) });
  return { status: res.statusCode, body: res.body === '' ? undefined : res.json() };
}



/** Writes a log as a coordinator would have left it when killed, without running one. */
async function writeLog(dir: string, write: (log: CoordinatorLog) => Promise<void>): Promise<void> {
  const { log } = await CoordinatorLog.open({
    dir,
    segmentMaxBytes: 1 << 20,
    retentionMs: 86_400_000,
    maxRetainedTransactions: 1000,
    logger: silentLogger(),
  });
  await write(log);
  await log.close();
}

beforeAll(async () => {
  [dbA, dbB] = await Promise.all([freshDatabase(inject('pgUrlA')), freshDatabase(inject('pgUrlB'))]);
  await createAccounts(dbA, { alice: 100, orphan: 0, foreign: 0, rich: 1000 });
  await createAccounts(dbB, { bob: 100 });
});

afterAll(async () => {
  for (const db of [dbA, dbB]) {
    for (const gid of await preparedGids(db, 'tcx:')) await withClient(db, (c) => c.query(`ROLLBACK PREPARED '${gid}'`));
  }
});

describe('start-up recovery', () => {
  it('commits prepared branches whose commit decision is logged, and finishes the transaction', async () => {
    const dir = tempDataDir();
    const txId = '11111111-1111-4111-8111-111111111111';
    const gidA = `tcx:rec1:${txId}:1`;
    const gidB = `tcx:rec1:${txId}:2`;
    const at = new Date().toISOString();
    await writeLog(dir, async (log) => {
      await log.force({ t: 'coordinator', coordinatorId: 'rec1', at });
      await log.force({ t: 'participant-registered', participant: { name: 'a', kind: 'postgres', connectionString: dbA, registeredAt: at } });
      await log.force({ t: 'participant-registered', participant: { name: 'b', kind: 'postgres', connectionString: dbB, registeredAt: at } });
      log.record({ t: 'tx-begun', id: txId, protocol: '2pc', timeoutMs: 30_000, at });
      await log.force({
        t: 'decision',
        id: txId,
        decision: 'commit',
        branches: [
          { branchId: 'b1', participant: 'a', kind: 'postgres', gid: gidA, vote: 'yes' },
          { branchId: 'b2', participant: 'b', kind: 'postgres', gid: gidB, vote: 'yes' },
        ],
        at,
      });
    });
    await prepareByHand(dbA, gidA, 'alice', -30);
    await prepareByHand(dbB, gidB, 'bob', 30);

    const c = await startCoordinator({}, dir);
    try {
      await eventually(async () => (await api(c, 'GET', `/v1/transactions/${txId}`)).body.state === 'committed');
      expect(await balanceOf(dbA, 'alice')).toBe(70);
      expect(await balanceOf(dbB, 'bob')).toBe(130);
      expect(await preparedGids(dbA, 'tcx:rec1:')).toEqual([]);
      expect(await preparedGids(dbB, 'tcx:rec1:')).toEqual([]);
    } finally {
      await c.destroy();
    }
  });

  it('rolls back prepared branches the log never heard of (crash between PREPARE and the log write), and leaves other coordinators alone', async () => {
    const dir = tempDataDir();
    await writeLog(dir, async (log) => {
      const at = new Date().toISOString();
      await log.force({ t: 'coordinator', coordinatorId: 'rec2', at });
      await log.force({ t: 'participant-registered', participant: { name: 'a', kind: 'postgres', connectionString: dbA, registeredAt: at } });
    });
    const ours = 'tcx:rec2:22222222-2222-4222-8222-222222222222:1';
    const theirs = 'tcx:other:33333333-3333-4333-8333-333333333333:1';
    await prepareByHand(dbA, ours, 'orphan', 5);
    await prepareByHand(dbA, theirs, 'foreign', 5);
    const c = await startCoordinator({}, dir);
    try {
      expect(await preparedGids(dbA, 'tcx:rec2:')).toEqual([]);
      expect(await preparedGids(dbA, 'tcx:other:')).toEqual([theirs]);
      expect(await balanceOf(dbA, 'orphan')).toBe(0);
    } finally {
      await c.destroy();
      await withClient(dbA, (cl) => cl.query(`ROLLBACK PREPARED '${theirs}'`));
    }
  });

  it('aborts transactions that were active or prepared without a decision when the coordinator died', async () => {
    const dir = tempDataDir();
    const txId = '44444444-4444-4444-8444-444444444444';
    await writeLog(dir, async (log) => {
      const at = new Date().toISOString();
      await log.force({ t: 'coordinator', coordinatorId: 'rec3', at });
      await log.force({ t: 'participant-registered', participant: { name: 'a', kind: 'postgres', connectionString: dbA, registeredAt: at } });
      log.record({ t: 'tx-begun', id: txId, protocol: '2pc', timeoutMs: 30_000, at });
      await log.force({ t: 'branch-enlisted', id: txId, branch: { branchId: 'b1', participant: 'a', kind: 'postgres', gid: `tcx:rec3:${txId}:1` }, at });
    });
    await prepareByHand(dbA, `tcx:rec3:${txId}:1`, 'alice', 1);
    const before = await balanceOf(dbA, 'alice');
    const c = await startCoordinator({}, dir);
    try {
      await eventually(async () => (await api(c, 'GET', `/v1/transactions/${txId}`)).body.state === 'aborted');
      expect((await api(c, 'GET', `/v1/transactions/${txId}`)).body.reason).toMatch(/presumed abort/);
      expect(await preparedGids(dbA, 'tcx:rec3:')).toEqual([]);
      expect(await balanceOf(dbA, 'alice')).toBe(before - 1 + 1);
    } finally {
      await c.destroy();
    }
  });

  it('refuses to start under a different coordinator id than the log holds', async () => {
    const dir = tempDataDir();
    const c = await startCoordinator({ TCX_COORDINATOR_ID: 'first' }, dir);
    await c.stop();
    await expect(startCoordinator({ TCX_COORDINATOR_ID: 'second' }, dir)).rejects.toThrow(/belongs to coordinator first/);
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('refuses a data directory another coordinator holds, and takes it over once that one is gone', async () => {
    const dir = tempDataDir();
    const first = await startCoordinator({}, dir);
    await expect(startCoordinator({}, dir)).rejects.toThrow(/in use by another coordinator \(pid \d+\)/);
    await first.stop();
    // A stale LOCK file (its owner killed) does not block the next start.
    fs.writeFileSync(path.join(dir, 'LOCK'), '999999');
    const second = await startCoordinator({}, dir);
    await second.destroy();
  });
});

describe('while running', () => {
  it('sweeps an orphaned prepared branch periodically', async () => {
    const c = await startCoordinator({ TCX_RECOVERY_INTERVAL_MS: '200' });
    try {
      const gid = `tcx:${c.coordinator.coordinatorId}:55555555-5555-4555-8555-555555555555:1`;
      expect((await api(c, 'POST', '/v1/participants', { name: 'a', kind: 'postgres', connectionString: dbA })).status).toBe(201);
      await prepareByHand(dbA, gid, 'orphan', 9);
      await eventually(async () => (await preparedGids(dbA, gid)).length === 0);
      expect(await balanceOf(dbA, 'orphan')).toBe(0);
    } finally {
      await c.destroy();
    }
  });

  it('keeps finished transactions queryable across restarts and log compaction, with bounded start-up', async () => {
    const dir = tempDataDir();
    const env = { TCX_SEGMENT_MAX_BYTES: '16384' };
    let c = await startCoordinator(env, dir);
    const ids: string[] = [];
    try {
      expect((await api(c, 'POST', '/v1/participants', { name: 'a', kind: 'postgres', connectionString: dbA })).status).toBe(201);
      expect((await api(c, 'POST', '/v1/participants', { name: 'b', kind: 'postgres', connectionString: dbB })).status).toBe(201);
      for (let i = 0; i < 300; i++) {
        const res = await api(c, 'POST', '/v1/transactions', {
          branches: [
            { participant: 'a', operations: [transferSql('rich', -1)] },
            { participant: 'b', operations: [transferSql('bob', 1)] },
          ],
          commit: true,
        });
        expect(res.body.state).toBe('committed');
        ids.push(res.body.id);
      }
      expect(c.coordinator.health().log.compactions).toBeGreaterThan(0);
    } finally {
      await c.stop();
    }
    const segments = fs.readdirSync(dir).filter((f) => f.startsWith('segment-'));
    expect(segments.length).toBeLessThanOrEqual(2);
    // Compaction sealed the finished ones into bucket files, which the snapshot names instead of rewriting them.
    expect(fs.readdirSync(dir).filter((f) => f.endsWith('.tcxf')).length).toBeGreaterThan(0);
    c = await startCoordinator(env, dir);
    try {
      for (const id of [ids[0], ids[150], ids[299]]) {
        const got = await api(c, 'GET', `/v1/transactions/${id}`);
        expect(got.body).toMatchObject({ id, state: 'committed', decision: 'commit' });
      }
      expect((await api(c, 'GET', '/v1/participants')).body.participants.map((p: { name: string }) => p.name).sort()).toEqual(['a', 'b']);
    } finally {
      await c.destroy();
    }
  });
});
