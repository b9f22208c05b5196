/**
 * One conformance suite for every participant kind, through the ParticipantAdapter interface
 * alone, on real stores started for it (so that it can crash them): a Postgres server, a Redis
 * (AOF, fsync always) and the example ledger service (participant kit, file branch store) over
 * HTTP. What recovery and re-delivery after a crash rely on: prepare / commit / abort are
 * idempotent, an abort of a branch the store never saw succeeds and changes nothing (and a
 * commit of one no longer listed, where recovery relies on listing),
 * an aborted branch leaves nothing behind, and a store that lists its prepared branches lists
 * exactly those under a coordinator's gid prefix — also after the store crashed and came back.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildLedger, type Ledger } from '../../src/examples/ledger-service.js';
import { silentLogger } from '../../src/logger.js';
import { FileBranchStore } from '../../src/participant-kit/branch-store.js';
import { gidPrefix, makeGid } from '../../src/participants/gid.js';
import { HttpParticipant } from '../../src/participants/http-participant.js';
import type { BranchRef, ParticipantAdapter } from '../../src/participants/participant.js';
import { PostgresParticipant } from '../../src/participants/postgres-participant.js';
import { RedisParticipant } from '../../src/participants/redis-participant.js';
import { createAccounts, eventually, freshDatabase, withClient } from '../support/databases.js';
import { getFreePort } from '../support/free-port.js';
import { PostgresServer } from '../support/postgres-server.js';
import { RedisServer } from '../support/redis-server.js';

/** A kind under test: its adapter, work that adds `delta` to one of its two values (`slot`), and that value read from the store itself. */
interface Kind {
  readonly name: string;
  adapter(): ParticipantAdapter;
  work(delta: number, slot?: 0 | 1): unknown;
  value(slot?: 0 | 1): Promise<number>;
  /** Crashes the store (SIGKILL, or the service closed) and starts it again on the same address and data. */
  restart(): Promise<void>;
  close(): Promise<void>;
}

const rnd = (): string => randomBytes(4).toString('hex');

async function postgresKind(): Promise<Kind> {
  const server = await PostgresServer.start({ name: 'conformance' });
  const db = await freshDatabase(server.url(), 'conformance');
  await createAccounts(db, { acc0: 1_000, acc1: 1_000 });
  const adapter = new PostgresParticipant({
    name: 'pg',
    connectionString: db,
    maxSessions: 4,
    connectTimeoutMs: 5_000,
    statementTimeoutMs: 10_000,
    idleInTransactionTimeoutMs: 60_000,
    logger: silentLogger(),
  });
  return {
    name: 'postgres',
    adapter: () => adapter,
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

async function redisKind(): Promise<Kind> {
  const server = await RedisServer.start({ name: 'conformance' });
  const url = server.url;
  const keys = [`conformance:${rnd()}:0`, `conformance:${rnd()}:1`];
  const raw = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 1 });
  raw.on('error', () => undefined);
  await raw.connect();
  for (const key of keys) await raw.set(key, '1000');
  const adapter = new RedisParticipant({ name: 'kv', url, connectTimeoutMs: 3_000, commandTimeoutMs: 3_000, logger: silentLogger() });
  return {
    name: 'redis',
    adapter: () => adapter,
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

async function httpKind(): Promise<Kind> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tcx-conformance-'));
  const port = await getFreePort();
  const open = async (): Promise<{ ledger: Ledger; store: FileBranchStore }> => {
    const store = await FileBranchStore.open(path.join(dir, 'branches'));
    const ledger = await buildLedger({ balances: { acc0: 1_000, acc1: 1_000 }, store, balancesFile: path.join(dir, 'balances.json') });
    await ledger.app.listen({ host: '127.0.0.1', port });
    return { ledger, store };
  };
  let { ledger, store } = await open();
  const adapter = new HttpParticipant({ name: 'ledger', baseUrl: `http://127.0.0.1:${port}`, requestTimeoutMs: 5_000, connectTimeoutMs: 2_000 });
  return {
    name: 'http',
    adapter: () => adapter,
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

describe.each([
  ['postgres', postgresKind],
  ['redis', redisKind],
  ['http', httpKind],
] as const)('participant kind %s', (_name, make) => {
  let kind: Kind;
  let adapter: ParticipantAdapter;
  const coordinatorId = `conf${rnd()}`;
  let n = 0;
  /** A branch of a new transaction; http branches carry their work as the payload. */
  const branch = (work?: unknown): BranchRef => {
    const transactionId = `t${rnd()}${n++}`;
    return { transactionId, branchId: 'b1', gid: makeGid(coordinatorId, transactionId, 1), protocol: '2pc', ...(work === undefined ? {} : { payload: work }) };
  };
  const run = async (delta: number, slot: 0 | 1 = 0): Promise<BranchRef> => {
    const work = kind.work(delta, slot);
    const ref = branch(adapter.work === 'payload' ? work : undefined);
    await adapter.enlist(ref, work);
    return ref;
  };

  beforeAll(async () => {
    kind = await make();
    adapter = kind.adapter();
    await adapter.verify();
  });

  afterAll(async () => {
    await kind?.close();
  });

  it('refuses malformed work before anything runs (a payload is for the service to judge)', async () => {
    if (adapter.work === 'payload') return;
    expect(() => adapter.validateWork({ surely: 'not work' })).toThrow(expect.objectContaining({ code: 'VALIDATION_FAILED' }));
  });

  it('prepare, commit: the effect lands once; prepare and commit again change nothing', async () => {
    const before = await kind.value();
    const ref = await run(-7);
    expect((await adapter.prepare(ref)).vote).toBe('yes');
    expect((await adapter.prepare(ref)).vote).toBe('yes');
    await adapter.commit(ref);
    await adapter.commit(ref);
    expect(await kind.value()).toBe(before - 7);
    expect(adapter.openBranches()).toBe(0);
  });

  it('prepare, abort: nothing lands; abort again changes nothing', async () => {
    const before = await kind.value();
    const ref = await run(-5);
    expect((await adapter.prepare(ref)).vote).toBe('yes');
    await adapter.abort(ref);
    await adapter.abort(ref);
    expect(await kind.value()).toBe(before);
    expect(adapter.openBranches()).toBe(0);
  });

  it('abort before prepare (the work ran, no vote yet) leaves nothing', async () => {
    const before = await kind.value();
    const ref = await run(-3);
    await adapter.abort(ref);
    expect(await kind.value()).toBe(before);
    expect(adapter.openBranches()).toBe(0);
  });

  it('an abort of a branch the store never saw succeeds and changes nothing (presumed abort after a crash)', async () => {
    const before = await kind.value();
    await adapter.abort(branch(adapter.work === 'payload' ? kind.work(-1) : undefined));
    expect(await kind.value()).toBe(before);
  });

  it('a commit of a branch it no longer lists succeeds and changes nothing, where recovery relies on listing (already committed before a crash)', async () => {
    if (!adapter.listsPreparedBranches) return; // the coordinator logs such branches and never commits one it did not prepare
    const before = await kind.value();
    await adapter.commit(branch());
    expect(await kind.value()).toBe(before);
  });

  it('lists exactly the branches prepared under a coordinator id, when it can list them', async () => {
    if (!adapter.listsPreparedBranches) {
      await expect(adapter.findPrepared(gidPrefix(coordinatorId))).resolves.toEqual([]);
      return;
    }
    const a = await run(-1, 0);
    const b = await run(-1, 1);
    expect((await adapter.prepare(a)).vote).toBe('yes');
    expect((await adapter.prepare(b)).vote).toBe('yes');
    expect((await adapter.findPrepared(gidPrefix(coordinatorId))).sort()).toEqual([a.gid, b.gid].sort());
    expect(await adapter.findPrepared(gidPrefix(`other${rnd()}`))).toEqual([]);
    const before = [await kind.value(0), await kind.value(1)];
    await adapter.commit(a);
    await adapter.abort(b);
    expect(await adapter.findPrepared(gidPrefix(coordinatorId))).toEqual([]);
    expect([await kind.value(0), await kind.value(1)]).toEqual([before[0]! - 1, before[1]]);
  });

  it('a prepared branch survives a crash of the store: listed again, then committed (or aborted) as delivered', async () => {
    const before = [await kind.value(0), await kind.value(1)];
    const toCommit = await run(-2, 0);
    const toAbort = await run(-4, 1);
    expect((await adapter.prepare(toCommit)).vote).toBe('yes');
    expect((await adapter.prepare(toAbort)).vote).toBe('yes');
    await kind.restart();
    if (adapter.listsPreparedBranches) {
      // The adapter reconnects by itself; its first calls may fail while the store comes back.
      await eventually(async () => (await adapter.findPrepared(gidPrefix(coordinatorId)).catch(() => [])).length === 2, 20_000);
    }
    await eventually(async () => adapter.commit(toCommit).then(() => true, () => false), 20_000);
    await eventually(async () => adapter.abort(toAbort).then(() => true, () => false), 20_000);
    expect([await kind.value(0), await kind.value(1)]).toEqual([before[0]! - 2, before[1]]);
    if (adapter.listsPreparedBranches) expect(await adapter.findPrepared(gidPrefix(coordinatorId))).toEqual([]);
  }, 60_000);
});
