/**
 * The acceptance test for the mysql and nats kinds: the transfer workload
 * (test/support/transfer-workload.ts) across Postgres (A), MariaDB (M) and Redis (R), every
 * transfer also publishing its event to NATS JetStream, while the coordinator (a child
 * process) is SIGKILLed — plainly, then at fail points — and restarted.
 *
 * Overdrafts are refused on every store: CHECK (balance >= 0) on Postgres and on MariaDB (the
 * statement fails at enlist), incrby min 0 on Redis (votes no at prepare).
 *
 * After the workload, nothing in doubt, and then:
 *   - the total over the three stores is conserved, and every account is its start plus the
 *     transfers the coordinator reports committed;
 *   - nothing prepared in Postgres, no XA transaction in MariaDB, nothing staged or locked in Redis;
 *   - every answer a client got holds (a commit is never undone, an abort never applied);
 *   - the stream holds exactly one event for every committed transfer and none for the others.
 */
import { randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';
import { connect, type JetStreamManager, type NatsConnection } from 'nats';
import { afterAll, afterEach, beforeAll, describe, expect, inject, it } from 'vitest';
import { CoordinatorProcess } from '../support/coordinator-process.js';
import { createAccounts, freshDatabase, preparedGids, rollBackLeftovers, withClient } from '../support/databases.js';
import { MariaDbServer } from '../support/mariadb-server.js';
import { NatsServer } from '../support/nats-server.js';
import { allBalances, finalOutcomes, reconcile, runTransferWorkload, sum, type WorkloadStore } from '../support/transfer-workload.js';
import { reportOnFailure, scanKeys, transferSql, until, waitSettled } from './helpers.js';

const SEED = Number(process.env.TCX_MIX_SEED ?? 20_261_202);
const ACCOUNTS = 6;
const START = 100;
const CLIENTS = 6;
const STREAM = 'TRANSFERS';
const SHOP = 'wallets';

let db: string;
let maria: MariaDbServer;
let mariaUrl: string;
let nats: NatsServer;
let nc: NatsConnection;
let jsm: JetStreamManager;
let redis: Redis;
let coord: CoordinatorProcess | undefined;
const prefix = randomBytes(4).toString('hex');
const redisKey = (i: number): string => `four:${prefix}:acct:${i}`;
const account = (i: number): string => `acct_${i}`;

beforeAll(async () => {
  [db, maria, nats] = await Promise.all([freshDatabase(inject('pgUrlA'), 'four'), MariaDbServer.start({ name: 'four-store' }), NatsServer.start({ name: 'four-store' })]);
  const rows = Object.fromEntries(Array.from({ length: ACCOUNTS }, (_, i) => [account(i), START]));
  await createAccounts(db, rows);
  mariaUrl = await maria.createDatabase(SHOP);
  await maria.query('CREATE TABLE accounts (id VARCHAR(64) PRIMARY KEY, balance BIGINT NOT NULL, CONSTRAINT no_overdraft CHECK (balance >= 0)) ENGINE=InnoDB', [], SHOP);
  for (const [id, balance] of Object.entries(rows)) await maria.query('INSERT INTO accounts (id, balance) VALUES (?, ?)', [id, balance], SHOP);
  redis = new Redis(inject('redisUrl'));
  for (let i = 0; i < ACCOUNTS; i++) await redis.set(redisKey(i), String(START));
  nc = await connect({ servers: nats.url, timeout: 5_000 });
  jsm = await nc.jetstreamManager({ timeout: 5_000 });
  await jsm.streams.add({ name: STREAM, subjects: ['transfers.>'], duplicate_window: 120_000_000_000 });
}, 120_000);

afterEach(async () => {
  await coord?.destroy();
  coord = undefined;
});

afterAll(async () => {
  await rollBackLeftovers(db);
  if (redis !== undefined) {
    await redis.del(...Array.from({ length: ACCOUNTS }, (_, i) => redisKey(i))).catch(() => undefined);
    redis.disconnect();
  }
  await nc?.close().catch(() => undefined);
  await Promise.all([maria?.destroy(), nats?.destroy()]);
});

const STORES: readonly WorkloadStore[] = [
  {
    name: 'A',
    branch: (i, delta) => ({ participant: 'bank', operations: [transferSql(account(i), delta)] }),
    balances: () =>
      withClient(db, async (c) => {
        const rows = (await c.query('SELECT id, balance FROM accounts')).rows as { id: string; balance: string }[];
        const byId = new Map(rows.map((r) => [r.id, Number(r.balance)]));
        return Array.from({ length: ACCOUNTS }, (_, i) => byId.get(account(i)) ?? NaN);
      }),
  },
  {
    name: 'M',
    branch: (i, delta) => ({ participant: 'shop', operations: [{ sql: 'UPDATE accounts SET balance = balance + ? WHERE id = ?', params: [delta, account(i)] }] }),
    balances: async () => {
      const rows = await maria.query<{ id: string; balance: string }[]>('SELECT id, balance FROM accounts', [], SHOP);
      const byId = new Map(rows.map((r) => [r.id, Number(r.balance)]));
      return Array.from({ length: ACCOUNTS }, (_, i) => byId.get(account(i)) ?? NaN);
    },
  },
  {
    name: 'R',
    branch: (i, delta) => ({ participant: 'wallets', operations: [{ op: 'incrby', key: redisKey(i), by: delta, min: 0 }] }),
    balances: async () => (await redis.mget(...Array.from({ length: ACCOUNTS }, (_, i) => redisKey(i)))).map((v) => Number(v)),
  },
];

/** How many events the stream holds per transaction id (the subject's last token). */
async function eventCounts(): Promise<Map<string, number>> {
  const counts = new Map<string, number>();
  const info = await jsm.streams.info(STREAM);
  for (let seq = info.state.first_seq; info.state.messages > 0 && seq <= info.state.last_seq; seq++) {
    const m = await jsm.streams.getMessage(STREAM, { seq }).catch(() => undefined);
    if (m === undefined) continue;
    const id = m.subject.split('.').pop() as string;
    expect(m.json()).toMatchObject({ transfer: id });
    counts.set(id, (counts.get(id) ?? 0) + 1);
  }
  return counts;
}

async function redisLeftovers(coordinatorId: string): Promise<string[]> {
  const staged = (await scanKeys(redis, 'tcx:*staged*')).filter((k) => k.includes(coordinatorId));
  const ours = Array.from({ length: ACCOUNTS }, (_, i) => redisKey(i));
  const locks = (await scanKeys(redis, 'tcx:lock:*')).filter((k) => ours.some((key) => k.endsWith(`}:${key}`)));
  return [...staged, ...locks];
}

describe('four-store workload: Postgres, MariaDB and Redis transfers with their NATS events, coordinator SIGKILLed while it runs', () => {
  it('conserves money, leaves nothing prepared, staged or locked, keeps every answered commit, and publishes each committed event once', { timeout: 120_000 }, async () => {
    const started = Date.now();
    const c = await CoordinatorProcess.start({
      env: {
        TCX_COMMIT_WAIT_MS: '2000',
        TCX_CONNECT_TIMEOUT_MS: '1000',
        TCX_PARTICIPANT_TIMEOUT_MS: '2000',
        TCX_STATEMENT_TIMEOUT_MS: '4000',
        // Only start-up recovery and the transactions' own retries may resolve anything.
        TCX_RECOVERY_INTERVAL_MS: '600000',
      },
    });
    coord = c;
    reportOnFailure(c);
    for (const p of [
      { name: 'bank', kind: 'postgres', connectionString: db },
      { name: 'shop', kind: 'mysql', connectionString: mariaUrl },
      { name: 'wallets', kind: 'redis', url: inject('redisUrl') },
      { name: 'events', kind: 'nats', url: nats.url },
    ]) {
      const res = await c.request('POST', '/v1/participants', p);
      expect(res.status, JSON.stringify(res.body)).toBe(201);
    }
    const coordinatorId = (await c.request('GET', '/healthz')).body.coordinatorId as string;
    const before = await allBalances(STORES);
    const total = sum(Object.values(before).flat());
    expect(total).toBe(3 * ACCOUNTS * START);

    const { transfers, kills } = await runTransferWorkload({
      coordinator: c,
      stores: STORES,
      accounts: ACCOUNTS,
      clients: CLIENTS,
      seed: SEED,
      txTimeoutMs: 8_000,
      requestTimeoutMs: 12_000,
      tailMs: 4_000,
      failPointWaitMs: 8_000,
      extraBranches: (t) => [{ participant: 'events', messages: [{ subject: `transfers.${t.id as string}`, data: { transfer: t.id, legs: t.legs } }] }],
    });

    await waitSettled(c, [db], 20_000);
    await until('MariaDB to hold no prepared XA transaction', async () => (await maria.query<unknown[]>('XA RECOVER')).length === 0, 10_000);
    await until('Redis to hold nothing staged or locked', async () => (await redisLeftovers(coordinatorId)).length === 0, 5_000);
    expect(await preparedGids(db)).toEqual([]);

    expect(await finalOutcomes(c, transfers), 'every transaction has a final outcome after the restart').toEqual([]);
    const after = await allBalances(STORES);
    const r = reconcile(before, transfers);
    const events = await eventCounts();
    const eventProblems: string[] = [];
    for (const t of transfers) {
      const n = events.get(t.id as string) ?? 0;
      if (n !== (t.final === 'committed' ? 1 : 0)) eventProblems.push(`transfer ${t.id as string} is ${String(t.final)} with ${n} events`);
    }
    console.log(
      `[four-store workload] seed ${SEED}, ${CLIENTS} clients, ${((Date.now() - started) / 1000).toFixed(1)} s: ${r.summary}; ` +
        `${[...events.values()].reduce((s, n) => s + n, 0)} events; kills: ${kills.join('; ')}`,
    );

    expect(r.problems).toEqual([]);
    expect(eventProblems, 'exactly one event per committed transfer, none for the others').toEqual([]);
    expect(sum(Object.values(after).flat()), 'money conserved across Postgres, MariaDB and Redis').toBe(total);
    expect(after, 'every account equals its start plus the committed transfers').toEqual(r.expected);
    expect(kills.length).toBe(3);
    expect(r.committed).toBeGreaterThan(20);
    expect(r.aborted).toBeGreaterThan(0);
    expect(transfers.some((t) => t.seen === 'unknown')).toBe(true);
  });
});
