/**
 * Crash tests with a MySQL-kind participant on a real MariaDB (started by this file, so it can
 * be SIGKILLed and restarted): one branch debits a Postgres account, the other credits a
 * MariaDB account (an XA transaction; CHECK (balance >= 0) on both sides).
 *
 *   coordinator killed at a fail point, restarted without it (file log and Postgres log):
 *     after-prepare          -> both rolled back (the sweep finds the XA branch by XA RECOVER)
 *     after-decision-logged  -> both committed
 *     between-commits        -> both committed
 *     before-end-record      -> both committed, once (XA COMMIT of an xid already committed)
 *   MariaDB SIGKILLed while its branch is prepared: the prepared XA transaction survives
 *     InnoDB's crash recovery, holds its row lock, and the commit that follows applies it.
 *   MariaDB down during phase 2: the commit answers 202 and completes once it is back.
 *
 * Checked on the real stores: money conserved, the same outcome on both, nothing prepared in
 * Postgres, nothing in MariaDB's XA RECOVER.
 */
import { afterAll, afterEach, beforeAll, describe, expect, inject, it } from 'vitest';
import type { CoordinatorProcess } from '../support/coordinator-process.js';
import { balanceOf, createAccounts, freshDatabase, preparedGids, rollBackLeftovers } from '../support/databases.js';
import { MariaDbServer } from '../support/mariadb-server.js';
import { crashLogs, settle, startCrashCoordinator, transferSql, TWO_PHASE_FAIL_POINTS, until, waitSettled } from './helpers.js';

const START = 100;
const AMOUNT = 30;
const SHOP = 'shop';

let maria: MariaDbServer;
let shopUrl: string;
let db: string;
let coord: CoordinatorProcess | undefined;

beforeAll(async () => {
  [maria, db] = await Promise.all([MariaDbServer.start({ name: 'mysql-crash' }), freshDatabase(inject('pgUrlA'), 'mcrash')]);
  shopUrl = await maria.createDatabase(SHOP);
  await maria.query('CREATE TABLE accounts (id VARCHAR(64) PRIMARY KEY, balance BIGINT NOT NULL, CHECK (balance >= 0)) ENGINE=InnoDB', [], SHOP);
  await createAccounts(db, {});
}, 120_000);

afterEach(async () => {
  await coord?.destroy();
  coord = undefined;
  if (!maria.running) await maria.restart();
});

afterAll(async () => {
  await rollBackLeftovers(db);
  await maria?.destroy();
});

async function startCoordinator(env: Record<string, string> = {}): Promise<CoordinatorProcess> {
  coord = await startCrashCoordinator(
    [
      { name: 'bank', kind: 'postgres', connectionString: db },
      { name: 'shop', kind: 'mysql', connectionString: shopUrl },
    ],
    env,
  );
  return coord;
}

async function openAccounts(name: string): Promise<string> {
  await createAccounts(db, { [name]: START });
  await maria.query('INSERT INTO accounts (id, balance) VALUES (?, ?)', [name, START], SHOP);
  return name;
}

const pgDebit = (account: string, amount = AMOUNT) => ({ participant: 'bank', operations: [transferSql(account, -amount)] });
const shopCredit = (account: string, amount = AMOUNT) => ({
  participant: 'shop',
  operations: [{ sql: 'UPDATE accounts SET balance = balance + ? WHERE id = ?', params: [amount, account] }],
});

/** The XA transactions MariaDB holds prepared (any coordinator's). */
async function xaPrepared(): Promise<string[]> {
  const rows = await maria.query<{ data: Buffer | string }[]>('XA RECOVER');
  return rows.map((r) => String(r.data));
}

async function state(account: string): Promise<{ pg: number; shop: number }> {
  const rows = await maria.query<{ balance: string }[]>('SELECT balance FROM accounts WHERE id = ?', [account], SHOP);
  return { pg: await balanceOf(db, account), shop: Number(rows[0]?.balance) };
}

async function waitAllSettled(c: CoordinatorProcess): Promise<void> {
  await waitSettled(c, [db]);
  await until('MariaDB to hold no prepared XA transaction', async () => (await xaPrepared()).length === 0, 10_000);
}

const UNTOUCHED = { pg: START, shop: START };
const TRANSFERRED = { pg: START - AMOUNT, shop: START + AMOUNT };

describe.each(crashLogs(() => inject('pgUrlB')))('coordinator ($log log) killed at a fail point during a Postgres -> MariaDB transfer, then restarted', ({ log, env }) => {
  for (const tc of TWO_PHASE_FAIL_POINTS) {
    it(`${tc.failPoint}: both stores end ${tc.outcome}, money conserved, nothing prepared on either`, async () => {
      const account = await openAccounts(`fp_${log}_${tc.failPoint.replace(/-/g, '_')}`);
      const c = await startCoordinator({ TCX_FAIL_POINT: tc.failPoint, ...(await env(`mysql-${tc.failPoint}`)) });
      const answer = await settle(c.request('POST', '/v1/transactions', { branches: [pgDebit(account), shopCredit(account)], commit: true, timeoutMs: 20_000 }));
      expect(answer.ok, 'the request must fail: the coordinator died before answering').toBe(false);
      expect((await c.waitExit()).signal).toBe('SIGKILL');
      if (tc.failPoint === 'after-decision-logged') expect((await xaPrepared()).length, 'the XA branch is prepared, not committed').toBe(1);
      if (tc.failPoint === 'before-end-record') expect(await state(account)).toEqual(TRANSFERRED);

      await c.restart();
      await waitAllSettled(c);
      const got = await state(account);
      expect(got.pg + got.shop, 'money conserved across Postgres and MariaDB').toBe(2 * START);
      expect(got).toEqual(tc.outcome === 'committed' ? TRANSFERRED : UNTOUCHED);
      expect(await preparedGids(db)).toEqual([]);
      expect(await xaPrepared()).toEqual([]);

      // The row is free again: a new transfer on the same account commits.
      const again = await c.request('POST', '/v1/transactions', { branches: [pgDebit(account, 1), shopCredit(account, 1)], commit: true });
      expect(again.status, JSON.stringify(again.body)).toBe(200);
    });
  }
});

/** begin, enlist both, prepare: both branches prepared. */
async function preparedTransfer(c: CoordinatorProcess, account: string): Promise<string> {
  const begun = await c.request('POST', '/v1/transactions', { timeoutMs: 60_000 });
  expect(begun.status).toBe(201);
  const id = begun.body.id as string;
  for (const branch of [pgDebit(account), shopCredit(account)]) {
    const res = await c.request('POST', `/v1/transactions/${id}/branches`, branch);
    expect(res.status, JSON.stringify(res.body)).toBe(201);
  }
  const prepared = await c.request('POST', `/v1/transactions/${id}/prepare`);
  expect(prepared.status, JSON.stringify(prepared.body)).toBe(200);
  expect((await xaPrepared()).length).toBe(1);
  return id;
}

describe('MariaDB killed and restarted around phase 2', () => {
  it('SIGKILLed while its branch is prepared: the XA branch survives, keeps its lock, and the commit applies it', async () => {
    const account = await openAccounts('maria_killed_prepared');
    const c = await startCoordinator();
    const id = await preparedTransfer(c, account);
    await maria.kill();
    await maria.restart();
    expect((await xaPrepared()).length, 'prepared XA transactions survive a crash of the server').toBe(1);
    expect((await state(account)).shop).toBe(START);
    // The row lock survived with it: a write on the row waits, and times out.
    const blocked = maria.withRoot(async (r) => {
      await r.query('SET SESSION innodb_lock_wait_timeout = 1');
      await r.query('UPDATE accounts SET balance = 0 WHERE id = ?', [account]);
    }, SHOP);
    await expect(blocked).rejects.toThrow(/lock wait timeout/i);

    const committed = await c.request('POST', `/v1/transactions/${id}/commit`);
    expect([200, 202], JSON.stringify(committed.body)).toContain(committed.status);
    await waitAllSettled(c);
    expect(await state(account)).toEqual(TRANSFERRED);
    expect((await c.request('GET', `/v1/transactions/${id}`)).body.state).toBe('committed');
  });

  it('down during phase 2: the commit answers 202 (in doubt), then completes once MariaDB is back', async () => {
    const account = await openAccounts('maria_down_phase2');
    const c = await startCoordinator();
    const id = await preparedTransfer(c, account);
    await maria.kill();
    const committed = await c.request('POST', `/v1/transactions/${id}/commit`);
    expect(committed.status, JSON.stringify(committed.body)).toBe(202);
    expect(committed.body.state).toBe('committing');
    const inDoubt = await c.request('GET', '/v1/transactions?state=in-doubt');
    expect(inDoubt.body.transactions.map((t: { id: string }) => t.id)).toContain(id);
    await maria.restart();
    await waitAllSettled(c);
    expect(await state(account)).toEqual(TRANSFERRED);
    expect((await c.request('GET', `/v1/transactions/${id}`)).body.state).toBe('committed');
  });
});
