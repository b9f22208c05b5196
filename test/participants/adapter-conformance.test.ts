/**
 * One conformance suite for every participant kind, through the ParticipantAdapter interface
 * alone, on real stores: a real Postgres database, the suite's Redis (AOF, fsync always) and
 * the example ledger service (participant kit, file branch store) over HTTP. What recovery and
 * re-delivery after a crash rely on: prepare / commit / abort are idempotent, a commit or an
 * abort of a branch the store never saw (or already finished) succeeds and changes nothing,
 * an aborted branch leaves nothing behind, and a store that lists its prepared branches lists
 * exactly those under a coordinator's gid prefix.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { buildLedger, type Ledger } from '../../src/examples/ledger-service.js';
import { silentLogger } from '../../src/logger.js';
import { FileBranchStore } from '../../src/participant-kit/branch-store.js';
import { gidPrefix, makeGid } from '../../src/participants/gid.js';
import { HttpParticipant } from '../../src/participants/http-participant.js';
import type { BranchRef, ParticipantAdapter } from '../../src/participants/participant.js';
import { PostgresParticipant } from '../../src/participants/postgres-participant.js';
import { RedisParticipant } from '../../src/participants/redis-participant.js';
import { createAccounts, freshDatabase, withClient } from '../support/databases.js';

/** A kind under test: its adapter, work that adds `delta` to one of its two values (`slot`), and that value read from the store itself. */
interface Kind {
  readonly name: string;
  adapter(): ParticipantAdapter;
  work(delta: number, slot?: 0 | 1): unknown;
  value(slot?: 0 | 1): Promise<number>;
  close(): Promise<void>;
}

const rnd = (): string => randomBytes(4).toString('hex');

async function postgresKind(): Promise<Kind> {
  const db = await freshDatabase(inject('pgUrlA'), 'conformance');
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
    close: () => adapter.close(),
  };
}

async function redisKind(): Promise<Kind> {
  const url = inject('redisUrl');
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
    close: async () => {
      await adapter.close();
      raw.disconnect();
    },
  };
}

async function httpKind(): Promise<Kind> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tcx-conformance-'));
  const store = await FileBranchStore.open(path.join(dir, 'branches'));
  const ledger: Ledger = await buildLedger({ balances: { acc0: 1_000, acc1: 1_000 }, store });
  const address = await ledger.app.listen({ host: '127.0.0.1', port: 0 });
  const adapter = new HttpParticipant({ name: 'ledger', baseUrl: address, requestTimeoutMs: 5_000, connectTimeoutMs: 2_000 });
  return {
    name: 'http',
    adapter: () => adapter,
    work: (delta, slot = 0) => ({ account: `acc${slot}`, delta }),
    value: async (slot = 0) => ledger.balances()[`acc${slot}`] ?? Number.NaN,
    close: async () => {
      await adapter.close();
      await ledger.app.close();
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
});
