/**
 * A database change and its event, together: one branch inserts an order into Postgres, the
 * other publishes its events to NATS JetStream on commit. The coordinator (a child process,
 * with the file log and with the Postgres log) is SIGKILLed at a fail point and restarted:
 *
 *   after-prepare          -> no order, no event
 *   after-decision-logged  -> the decision (with the messages) is durable, nothing published:
 *                             recovery publishes them from the log, once
 *   between-commits        -> one branch committed: recovery delivers the rest, events once
 *   before-end-record      -> everything delivered: recovery delivers it all again, and
 *                             JetStream's duplicate window drops the second copies
 *
 * Checked on the real stores: the order row is there exactly when the events are, each event
 * is stored exactly once, in order, with its data, headers and the Nats-Msg-Id the branch
 * gives it; nothing prepared is left in Postgres.
 */
import { randomBytes } from 'node:crypto';
import { connect, type JetStreamManager, type NatsConnection } from 'nats';
import { afterAll, afterEach, beforeAll, describe, expect, inject, it } from 'vitest';
import type { CoordinatorProcess } from '../support/coordinator-process.js';
import { freshDatabase, preparedGids, rollBackLeftovers, withClient } from '../support/databases.js';
import { NatsServer } from '../support/nats-server.js';
import { crashLogs, settle, startCrashCoordinator, TWO_PHASE_FAIL_POINTS, until, waitSettled } from './helpers.js';

const STREAM = 'ORDERS';

let nats: NatsServer;
let nc: NatsConnection;
let jsm: JetStreamManager;
let db: string;
let coord: CoordinatorProcess | undefined;

beforeAll(async () => {
  [nats, db] = await Promise.all([NatsServer.start({ name: 'nats-crash' }), freshDatabase(inject('pgUrlA'), 'ncrash')]);
  await withClient(db, (c) => c.query('CREATE TABLE orders (id text PRIMARY KEY, item text NOT NULL, quantity int NOT NULL CHECK (quantity > 0))'));
  nc = await connect({ servers: nats.url, timeout: 5_000 });
  jsm = await nc.jetstreamManager({ timeout: 5_000 });
  await jsm.streams.add({ name: STREAM, subjects: ['orders.>'], duplicate_window: 120_000_000_000 });
});

afterEach(async () => {
  await coord?.destroy();
  coord = undefined;
});

afterAll(async () => {
  await rollBackLeftovers(db);
  await nc?.close().catch(() => undefined);
  await nats?.destroy();
});

async function startCoordinator(env: Record<string, string> = {}): Promise<CoordinatorProcess> {
  coord = await startCrashCoordinator(
    [
      { name: 'shop', kind: 'postgres', connectionString: db },
      { name: 'events', kind: 'nats', url: nats.url },
    ],
    env,
  );
  return coord;
}

interface StoredEvent {
  readonly subject: string;
  readonly data: unknown;
  readonly msgId: string | undefined;
  readonly source: string | undefined;
}

/** Every message the stream holds on `orders.<orderId>.*`, in stream order. */
async function eventsOf(orderId: string): Promise<StoredEvent[]> {
  const info = await jsm.streams.info(STREAM);
  const out: StoredEvent[] = [];
  for (let seq = info.state.first_seq; seq <= info.state.last_seq && info.state.messages > 0; seq++) {
    const m = await jsm.streams.getMessage(STREAM, { seq }).catch(() => undefined);
    if (m === undefined || !m.subject.startsWith(`orders.${orderId}.`)) continue;
    out.push({ subject: m.subject, data: m.json(), msgId: m.header.get('Nats-Msg-Id') || undefined, source: m.header.get('X-Source') || undefined });
  }
  return out;
}

async function orderRows(orderId: string): Promise<number> {
  return withClient(db, async (c) => Number((await c.query('SELECT count(*) AS n FROM orders WHERE id = $1', [orderId])).rows[0].n));
}

/** The order insert and its two events. */
function orderTransaction(orderId: string): unknown {
  return {
    timeoutMs: 20_000,
    commit: true,
    branches: [
      { participant: 'shop', operations: [{ sql: 'INSERT INTO orders (id, item, quantity) VALUES ($1, $2, $3)', params: [orderId, 'book', 2] }] },
      {
        participant: 'events',
        messages: [
          { subject: `orders.${orderId}.created`, data: { orderId, item: 'book', quantity: 2 }, headers: { 'X-Source': 'shop' } },
          { subject: `orders.${orderId}.reserved`, data: { orderId } },
        ],
      },
    ],
  };
}

function expectPublishedOnce(events: readonly StoredEvent[], orderId: string): void {
  expect(events.map((e) => e.subject)).toEqual([`orders.${orderId}.created`, `orders.${orderId}.reserved`]);
  expect(events[0]?.data).toEqual({ orderId, item: 'book', quantity: 2 });
  expect(events[0]?.source).toBe('shop');
  expect(events[1]?.data).toEqual({ orderId });
  // The ids the branch gave them: <gid>:<index>, one gid for both.
  const ids = events.map((e) => e.msgId ?? '');
  expect(ids[0]).toMatch(/^tcx:[A-Za-z0-9-]+:[A-Za-z0-9-]+:\d+:0$/);
  expect(ids[1]).toBe(ids[0]?.replace(/:0$/, ':1'));
}

describe.each(crashLogs(() => inject('pgUrlB')))('coordinator ($log log) killed at a fail point while an order and its events commit', ({ log, env }) => {
  for (const tc of TWO_PHASE_FAIL_POINTS) {
    it(`${tc.failPoint}: the order and its events are ${tc.outcome === 'committed' ? 'both there, each event once' : 'both absent'}`, async () => {
      const orderId = `o-${log}-${tc.failPoint}-${randomBytes(3).toString('hex')}`;
      const c = await startCoordinator({ TCX_FAIL_POINT: tc.failPoint, ...(await env(`nats-${tc.failPoint}`)) });
      const answer = await settle(c.request('POST', '/v1/transactions', orderTransaction(orderId)));
      expect(answer.ok, 'the request must fail: the coordinator died before answering').toBe(false);
      expect((await c.waitExit()).signal).toBe('SIGKILL');
      if (tc.failPoint === 'after-decision-logged') expect(await eventsOf(orderId), 'nothing published before the restart').toEqual([]);
      if (tc.failPoint === 'before-end-record') expectPublishedOnce(await eventsOf(orderId), orderId);

      await c.restart();
      await waitSettled(c, [db]);
      if (tc.outcome === 'committed') {
        await until('the events to be published', async () => (await eventsOf(orderId)).length >= 2, 10_000);
        expectPublishedOnce(await eventsOf(orderId), orderId);
        expect(await orderRows(orderId)).toBe(1);
        const ids = c.logLines(1).filter((l) => l.msg === 'recovery: resuming transaction').map((l) => l.txId);
        expect(ids.length).toBe(1);
        const view = await c.request('GET', `/v1/transactions/${String(ids[0])}`);
        expect(view.body).toMatchObject({ state: 'committed', inDoubt: false });
      } else {
        expect(await eventsOf(orderId)).toEqual([]);
        expect(await orderRows(orderId)).toBe(0);
      }
      expect(await preparedGids(db)).toEqual([]);
    });
  }
});

describe('events without a crash', () => {
  it('are published on commit, and nothing is published when the database branch fails', async () => {
    const c = await startCoordinator();
    const ok = `o-ok-${randomBytes(3).toString('hex')}`;
    const committed = await c.request('POST', '/v1/transactions', orderTransaction(ok));
    expect(committed.status, JSON.stringify(committed.body)).toBe(200);
    expect(committed.body.state).toBe('committed');
    expectPublishedOnce(await eventsOf(ok), ok);

    // The same order id again: the primary key refuses it, so its events must not appear twice.
    const refused = await c.request('POST', '/v1/transactions', orderTransaction(ok));
    expect(refused.status, JSON.stringify(refused.body)).toBe(409);
    expect(refused.body.state).toBe('aborted');
    expectPublishedOnce(await eventsOf(ok), ok);

    // A subject no stream takes: the events branch votes no, the order is not inserted.
    const lost = `o-lost-${randomBytes(3).toString('hex')}`;
    const body = orderTransaction(lost) as { branches: { messages?: { subject: string }[] }[] };
    (body.branches[1]?.messages ?? [])[1]!.subject = `nowhere.${lost}`;
    const aborted = await c.request('POST', '/v1/transactions', body);
    expect(aborted.status, JSON.stringify(aborted.body)).toBe(409);
    expect(String(aborted.body.reason)).toContain(`nowhere.${lost}`);
    expect(await orderRows(lost)).toBe(0);
    expect(await eventsOf(lost)).toEqual([]);
  });
});
