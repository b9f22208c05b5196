/**
 * The adapter conformance suite (test/support/adapter-conformance.ts) for postgres, redis and
 * http, each on a store of its own: a Postgres server, a Redis (AOF, fsync always) and the
 * example ledger service (participant kit, file branch store) over HTTP. mysql and nats run
 * it from their own files.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';
import { buildLedger, type Ledger } from '../../src/examples/ledger-service.js';
import { silentLogger } from '../../src/logger.js';
import { FileBranchStore } from '../../src/participant-kit/branch-store.js';
import { HttpParticipant } from '../../src/participants/http-participant.js';
import { PostgresParticipant } from '../../src/participants/postgres-participant.js';
import { RedisParticipant } from '../../src/participants/redis-participant.js';
import { describeConformance, rehost, type ConformanceKind } from '../support/adapter-conformance.js';
import { createAccounts, freshDatabase, withClient } from '../support/databases.js';
import { getFreePort } from '../support/free-port.js';
import { PostgresServer } from '../support/postgres-server.js';
import { RedisServer } from '../support/redis-server.js';

const rnd = (): string => randomBytes(4).toString('hex');

async function postgresKind(): Promise<ConformanceKind> {
  const server = await PostgresServer.start({ name: 'conformance' });
  const db = await freshDatabase(server.url(), 'conformance');
  await createAccounts(db, { acc0: 1_000, acc1: 1_000 });
  const build = (connectionString: string, timeoutMs: number): PostgresParticipant =>
    new PostgresParticipant({
      name: 'pg',
      connectionString,
      maxSessions: 4,
      connectTimeoutMs: timeoutMs,
      statementTimeoutMs: timeoutMs,
      idleInTransactionTimeoutMs: 60_000,
      logger: silentLogger(),
    });
  const adapter = build(db, 10_000);
  return {
    name: 'postgres',
    adapter: () => adapter,
    address: { host: server.host, port: server.port },
    adapterAt: (host, port) => build(rehost(db, host, port), 1_000),
    work: (delta, slot = 0) => [{ sql: 'UPDATE accounts SET balance = balance + $1 WHERE id = $2', params: [delta, `acc${slot}`] }],
    value: (slot = 0) => withClient(db, async (c) => Number((await c.query('SELECT balance FROM accounts WHERE id = $1', [`acc${slot}`])).rows[0].balance)),
    restart: async () => {
      await server.kill();
      await server.restart();
    },
    close: async () => {
      await adapter.close();
      await server.destroy();
    },
  };
}

async function redisKind(): Promise<ConformanceKind> {
  const server = await RedisServer.start({ name: 'conformance' });
  const url = server.url;
  const keys = [`conformance:${rnd()}:0`, `conformance:${rnd()}:1`];
  const raw = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 1 });
  raw.on('error', () => undefined);
  await raw.connect();
  for (const key of keys) await raw.set(key, '1000');
  const build = (at: string, timeoutMs: number): RedisParticipant =>
    new RedisParticipant({ name: 'kv', url: at, connectTimeoutMs: timeoutMs, commandTimeoutMs: timeoutMs, logger: silentLogger() });
  const adapter = build(url, 3_000);
  return {
    name: 'redis',
    adapter: () => adapter,
    address: { host: server.host, port: server.port },
    adapterAt: (host, port) => build(rehost(url, host, port), 1_000),
    work: (delta, slot = 0) => [{ op: 'incrby', key: keys[slot], by: delta }],
    value: async (slot = 0) => Number(await raw.get(keys[slot]!)),
    restart: async () => {
      await server.kill();
      await server.restart();
    },
    close: async () => {
      await adapter.close();
      raw.disconnect();
      await server.destroy();
    },
  };
}

async function httpKind(): Promise<ConformanceKind> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tcx-conformance-'));
  const port = await getFreePort();
  const open = async (): Promise<{ ledger: Ledger; store: FileBranchStore }> => {
    const store = await FileBranchStore.open(path.join(dir, 'branches'));
    const ledger = await buildLedger({ balances: { acc0: 1_000, acc1: 1_000 }, store, balancesFile: path.join(dir, 'balances.json') });
    await ledger.app.listen({ host: '127.0.0.1', port });
    return { ledger, store };
  };
  let { ledger, store } = await open();
  const build = (at: string, timeoutMs: number): HttpParticipant =>
    new HttpParticipant({ name: 'ledger', baseUrl: at, requestTimeoutMs: timeoutMs, connectTimeoutMs: Math.min(timeoutMs, 2_000) });
  const adapter = build(`http://127.0.0.1:${port}`, 5_000);
  return {
    name: 'http',
    adapter: () => adapter,
    address: { host: '127.0.0.1', port },
    adapterAt: (host, at) => build(`http://${host}:${at}`, 1_000),
    work: (delta, slot = 0) => ({ account: `acc${slot}`, delta }),
    value: async (slot = 0) => ledger.balances()[`acc${slot}`] ?? Number.NaN,
    restart: async () => {
      await ledger.app.close();
      await store.close();
      ({ ledger, store } = await open());
    },
    close: async () => {
      await adapter.close();
      await ledger.app.close();
      await store.close();
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

describeConformance('postgres', postgresKind);
describeConformance('redis', redisKind);
describeConformance('http', httpKind);
