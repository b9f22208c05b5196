/**
 * One-phase commit under a coordinator crash. A lone Postgres branch commits with a plain
 * COMMIT and nothing in the coordinator's log, so a crash leaves the log silent and the
 * database alone decides — atomically:
 *
 *   before-one-phase-commit  the work ran, COMMIT never sent  -> rolled back by the database
 *                            (the session died with the process), no lock left
 *   after-one-phase-commit   the database committed, nothing logged -> committed, once
 *
 * Either way nothing is left prepared, the rows are free, and the restarted coordinator says
 * it does not know the transaction (404) rather than claiming an outcome it cannot know.
 * A one-phase commit the client was told about is never forgotten: its end record is forced
 * before the answer. One whose COMMIT answer was lost is not forgotten either: the store's
 * evidence (the transaction id) is forced before the store is asked, so a coordinator killed
 * right then asks again after its restart and reports what the database did.
 */
import { afterAll, afterEach, beforeAll, describe, expect, inject, it } from 'vitest';
import type { CoordinatorProcess } from '../support/coordinator-process.js';
import { balanceOf, createAccounts, freshDatabase, preparedGids, rollBackLeftovers, withClient } from '../support/databases.js';
import { FaultProxy } from '../support/fault-proxy.js';
import { PLAIN_COMMIT } from '../support/one-phase-faults.js';
import { crashLogs, settle, startCrashCoordinator, transferSql, waitSettled } from './helpers.js';

let db: string;
let coord: CoordinatorProcess | undefined;
let proxy: FaultProxy;


const START = 100;
const AMOUNT = 10;

beforeAll(async () => {
  db = await freshDatabase(inject('pgUrlA'), 'onephase');
  await createAccounts(db, {});
  proxy = await FaultProxy.forUrl(db, { name: 'pg' });
});

afterEach(async () => {
  await coord?.destroy();
  coord = undefined;
});

afterAll(async () => {
  await proxy?.close();
  await rollBackLeftovers(db);
});

const CASES = [
  { failPoint: 'before-one-phase-commit', committed: false },
  { failPoint: 'after-one-phase-commit', committed: true },
] as const;

describe.each(crashLogs(() => inject('pgUrlB')))('coordinator ($log log) killed during a one-phase commit, then restarted', ({ log, env }) => {
  it('a one-phase commit answered committed, then SIGKILL at once: still committed after the restart', async () => {
    const [from, to] = [`${log}_answered_from`, `${log}_answered_to`];
    await createAccounts(db, { [from]: START, [to]: START });
    coord = await startCrashCoordinator([{ name: 'bank', kind: 'postgres', connectionString: db }], await env('one-phase-answered'));
    const res = await coord.request('POST', '/v1/transactions', { branches: [{ participant: 'bank', operations: [transferSql(from, -AMOUNT), transferSql(to, AMOUNT)] }], commit: true });
    expect(res.body).toMatchObject({ state: 'committed', onePhase: true });
    await coord.kill();
    await coord.restart();
    const got = await coord.request('GET', `/v1/transactions/${res.body.id as string}`);
    expect(got.status, JSON.stringify(got.body)).toBe(200);
    expect(got.body).toMatchObject({ state: 'committed', onePhase: true });
    expect({ from: await balanceOf(db, from), to: await balanceOf(db, to) }).toEqual({ from: START - AMOUNT, to: START + AMOUNT });
  });

  it("COMMIT's answer lost, the coordinator killed before it asked the database: after the restart it asks, and reports committed", async () => {
    const [from, to] = [`${log}_lost_from`, `${log}_lost_to`];
    await createAccounts(db, { [from]: START, [to]: START });
    coord = await startCrashCoordinator([{ name: 'bank', kind: 'postgres', connectionString: proxy.rewriteUrl(db) }], {
      TCX_FAIL_POINT: 'one-phase-answer-lost',
      ...(await env('one-phase-lost')),
    });
    const begun = await coord.request('POST', '/v1/transactions', { timeoutMs: 20_000 });
    const id = begun.body.id as string;
    const enlisted = await coord.request('POST', `/v1/transactions/${id}/branches`, { participant: 'bank', operations: [transferSql(from, -AMOUNT), transferSql(to, AMOUNT)] });
    expect(enlisted.status, JSON.stringify(enlisted.body)).toBe(201);
    const cut = proxy.counters().repliesCut;
    proxy.cutReplies(PLAIN_COMMIT, 1);
    const answer = await settle(coord.request('POST', `/v1/transactions/${id}/commit`));
    expect(answer.ok, 'the coordinator died before answering').toBe(false);
    expect((await coord.waitExit()).signal).toBe('SIGKILL');
    expect(proxy.counters().repliesCut).toBe(cut + 1);
    // The database committed; only its answer was lost.
    expect({ from: await balanceOf(db, from), to: await balanceOf(db, to) }).toEqual({ from: START - AMOUNT, to: START + AMOUNT });

    await coord.restart();
    let got = await coord.request('GET', `/v1/transactions/${id}`);
    for (let i = 0; i < 100 && got.body?.state !== 'committed'; i++) {
      await new Promise((r) => setTimeout(r, 100));
      got = await coord.request('GET', `/v1/transactions/${id}`);
    }
    expect(got.status, JSON.stringify(got.body)).toBe(200);
    expect(got.body).toMatchObject({ state: 'committed', decision: 'commit', onePhase: true, inDoubt: false });
    expect({ from: await balanceOf(db, from), to: await balanceOf(db, to) }, 'applied once').toEqual({ from: START - AMOUNT, to: START + AMOUNT });
    expect(await preparedGids(db)).toEqual([]);
  });

  for (const tc of CASES) {
    it(`${tc.failPoint}: the database ${tc.committed ? 'committed' : 'rolled back'} the whole branch, nothing prepared or locked, the log knows nothing`, async () => {
      const from = `${log}_${tc.failPoint.replace(/-/g, '_')}_from`;
      const to = `${log}_${tc.failPoint.replace(/-/g, '_')}_to`;
      await createAccounts(db, { [from]: START, [to]: START });
      coord = await startCrashCoordinator([{ name: 'bank', kind: 'postgres', connectionString: db }], { TCX_FAIL_POINT: tc.failPoint, ...(await env(`one-phase-${tc.failPoint}`)) });
      const begun = await coord.request('POST', '/v1/transactions', { timeoutMs: 20_000 });
      const id = begun.body.id as string;
      const enlisted = await coord.request('POST', `/v1/transactions/${id}/branches`, { participant: 'bank', operations: [transferSql(from, -AMOUNT), transferSql(to, AMOUNT)] });
      expect(enlisted.status, JSON.stringify(enlisted.body)).toBe(201);
      const answer = await settle(coord.request('POST', `/v1/transactions/${id}/commit`));
      expect(answer.ok, 'the coordinator died before answering').toBe(false);
      expect((await coord.waitExit()).signal).toBe('SIGKILL');

      // The rows are free at once: the database ended the dead session's transaction itself.
      await withClient(db, async (client) => {
        await client.query("SET lock_timeout = '5s'");
        await client.query('UPDATE accounts SET balance = balance WHERE id = ANY($1)', [[from, to]]);
      });
      const expected = tc.committed ? { from: START - AMOUNT, to: START + AMOUNT } : { from: START, to: START };
      expect({ from: await balanceOf(db, from), to: await balanceOf(db, to) }).toEqual(expected);
      expect(await preparedGids(db)).toEqual([]);

      await coord.restart();
      await waitSettled(coord, [db]);
      expect({ from: await balanceOf(db, from), to: await balanceOf(db, to) }, 'recovery changed nothing').toEqual(expected);
      const got = await coord.request('GET', `/v1/transactions/${id}`);
      expect(got.status, JSON.stringify(got.body)).toBe(404);

      // The participant still commits one-phase after the restart.
      const next = await coord.request('POST', '/v1/transactions', { branches: [{ participant: 'bank', operations: [transferSql(to, -1), transferSql(from, 1)] }], commit: true });
      expect(next.status, JSON.stringify(next.body)).toBe(200);
      expect(next.body).toMatchObject({ state: 'committed', onePhase: true });
      expect(await balanceOf(db, from)).toBe(expected.from + 1);
    });
  }
});
