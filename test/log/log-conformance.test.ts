/**
 * One contract, two logs: the embedded FileLog and the PostgresLog (TCX_LOG_URL) run
 * through the same suite — append and force, replay in order, unforced records durable after
 * a flush, group commit, compaction (snapshot, its files, the records after it), payloads a
 * client controls, and fail-stop once a write cannot be made durable.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { afterAll, describe, expect, inject, it } from 'vitest';
import { LogFailedError } from '../../src/errors.js';
import { FileLog, nodeLogIo, type LogFile, type LogIo, type SnapshotContent } from '../../src/log/file-log.js';
import { LeaseStore } from '../../src/cluster/lease-store.js';
import type { LogBackend } from '../../src/coordinator/coordinator-log.js';
import { PostgresLog } from '../../src/log/postgres-log.js';
import { LOG_SCHEMA_VERSION, migrate } from '../../src/log/postgres-log-schema.js';
import { eventually, freshDatabase } from '../support/databases.js';

interface Opened {
  log: LogBackend;
  records: unknown[];
  files: Map<string, Uint8Array>;
}

/** A place a log lives; each open() is a restart on the same place. */
interface LogPlace {
  open(snapshot: () => Iterable<unknown> | SnapshotContent): Promise<Opened>;
  /** Makes the next durable write of the log opened last fail (a broken disk, a lost lease). */
  breakWrites(): Promise<void>;
}

interface Backend {
  readonly name: string;
  place(): Promise<LogPlace>;
}

const cleanup: (() => Promise<void>)[] = [];
afterAll(async () => {
  for (const c of cleanup.reverse()) await c().catch(() => undefined);
});

const fileBackend: Backend = {
  name: 'file',
  async place() {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tcx-conformance-'));
    cleanup.push(async () => fs.rmSync(dir, { recursive: true, force: true }));
    const fail = { datasync: false };
    const io: LogIo = {
      ...nodeLogIo,
      open: async (p, flags) => {
        const f: LogFile = await nodeLogIo.open(p, flags);
        return { ...f, write: f.write.bind(f), sync: f.sync.bind(f), truncate: f.truncate.bind(f), close: f.close.bind(f), datasync: () => (fail.datasync ? Promise.reject(new Error('EIO: injected')) : f.datasync()) };
      },
    };
    return {
      open: (snapshot) => FileLog.open({ dir, io, segmentMaxBytes: 1 << 20, snapshot }),
      breakWrites: async () => {
        fail.datasync = true;
      },
    };
  },
};

/** A log database with its schema, and leases taken the way instances take them. */
async function logDatabase(): Promise<{ url: string; leases: LeaseStore; take: (id: string, holder?: string) => Promise<string> }> {
  const url = await freshDatabase(inject('pgUrlA'), 'log');
  const pool = new pg.Pool({ connectionString: url, max: 2 });
  cleanup.push(() => pool.end());
  const client = await pool.connect();
  await migrate(client).finally(() => client.release());
  const leases = new LeaseStore(pool, 60_000);
  const take = async (id: string, holder = id): Promise<string> => {
    const got = await leases.acquire(id, holder, 'http://127.0.0.1:1', true);
    if (got === undefined) throw new Error(`lease on ${id} not taken`);
    return got.epoch;
  };
  return { url, leases, take };
}

const postgresBackend: Backend = {
  name: 'postgres',
  async place() {
    const { url, take } = await logDatabase();
    const coordinatorId = 'conformance';
    return {
      open: async (snapshot) => PostgresLog.open({ url, coordinatorId, epoch: await take(coordinatorId), snapshot, maxRecordsBeforeCompaction: 1_000_000, timeoutMs: 5_000 }),
      // The lease passes on (a restart of the same id takes a new epoch): this writer is fenced out.
      breakWrites: async () => {
        await take(coordinatorId);
      },
    };
  },
};

const noSnapshot = (): unknown[] => [];

describe.each([fileBackend, postgresBackend])('$name log', (backend: Backend) => {
  async function opened(place: LogPlace, snapshot: () => Iterable<unknown> | SnapshotContent = noSnapshot): Promise<Opened> {
    const o = await place.open(snapshot);
    cleanup.push(() => o.log.close());
    return o;
  }

  it('replays forced records in append order after a restart', async () => {
    const place = await backend.place();
    const first = await opened(place);
    expect(first.records).toEqual([]);
    for (let i = 0; i < 5; i++) await first.log.append({ t: 'r', i }, { force: true });
    await first.log.close();
    const again = await opened(place);
    expect(again.records).toEqual([0, 1, 2, 3, 4].map((i) => ({ t: 'r', i })));
  });

  it('keeps unforced records once flushed, after forced ones in between, in order', async () => {
    const place = await backend.place();
    const { log } = await opened(place);
    const writes = [log.append({ n: 1 }, { force: false }), log.append({ n: 2 }, { force: true }), log.append({ n: 3 }, { force: false })];
    await log.flush();
    await Promise.all(writes);
    await log.close();
    expect((await opened(place)).records).toEqual([{ n: 1 }, { n: 2 }, { n: 3 }]);
  });

  it('shares durable writes among concurrent forced appends (group commit)', async () => {
    const place = await backend.place();
    const { log } = await opened(place);
    const before = log.stats().fsyncs;
    await Promise.all(Array.from({ length: 200 }, (_, i) => log.append({ i }, { force: true })));
    const used = log.stats().fsyncs - before;
    expect(used).toBeGreaterThan(0);
    expect(used).toBeLessThan(200);
    expect(log.stats().appendedRecords).toBe(200);
  });

  it('stores payloads a client controls exactly: NUL, quotes, unicode, deep keys', async () => {
    const place = await backend.place();
    const { log } = await opened(place);
    const payload = { text: 'a\u0000b"c\\d\u2028é😀', nested: { '': [1.5, -0, 1e300, null, true] }, key: "'; DROP TABLE tcx_log; --" };
    await log.append(payload, { force: true });
    await log.close();
    expect((await opened(place)).records).toEqual([JSON.parse(JSON.stringify(payload))]);
  });

  it('compacts: the snapshot, its files and the records after it are what a restart replays', async () => {
    const place = await backend.place();
    let state: unknown[] = [];
    const file = { name: 'finished-0000000001.tcxf', data: new Uint8Array([1, 2, 3, 250]) };
    const snapshot = (): SnapshotContent => ({ records: [{ snapshot: state.length }], files: [file] });
    const { log } = await opened(place, snapshot);
    for (let i = 0; i < 10; i++) {
      state = [...state, i];
      await log.append({ i }, { force: true });
    }
    await log.compact();
    expect(log.stats().compactions).toBe(1);
    await log.append({ after: true }, { force: true });
    await log.close();
    const again = await opened(place, snapshot);
    expect(again.records).toEqual([{ snapshot: 10 }, { after: true }]);
    expect([...again.files.keys()]).toEqual([file.name]);
    expect([...again.files.get(file.name)!]).toEqual([...file.data]);
  });

  it('fails stop once a write cannot be made durable: that append and every later one reject', async () => {
    const place = await backend.place();
    const { log } = await opened(place);
    await log.append({ ok: 1 }, { force: true });
    await place.breakWrites();
    await expect(log.append({ lost: 1 }, { force: true })).rejects.toBeInstanceOf(LogFailedError);
    expect(log.failed).toBeInstanceOf(LogFailedError);
    await expect(log.append({ later: 1 }, { force: false })).rejects.toBeInstanceOf(LogFailedError);
  });
});

describe('postgres log specifics', () => {
  it('creates its schema once, versioned, keeps each coordinator id apart, and refuses a newer schema', async () => {
    const { url, take } = await logDatabase();
    const a = await PostgresLog.open({ url, coordinatorId: 'c1', epoch: await take('c1'), snapshot: noSnapshot });
    cleanup.push(() => a.log.close());
    const b = await PostgresLog.open({ url, coordinatorId: 'c2', epoch: await take('c2'), snapshot: noSnapshot });
    cleanup.push(() => b.log.close());
    await a.log.append({ from: 'c1' }, { force: true });
    await b.log.append({ from: 'c2' }, { force: true }); // another id: its own lease
    const client = new pg.Client({ connectionString: url });
    await client.connect();
    try {
      expect((await client.query('SELECT version FROM tcx_log_schema')).rows).toEqual([{ version: LOG_SCHEMA_VERSION }]);
      const rows = await client.query<{ coordinator_id: string; record: string }>('SELECT coordinator_id, record FROM tcx_log ORDER BY coordinator_id');
      expect(rows.rows.map((r) => [r.coordinator_id, JSON.parse(r.record)])).toEqual([
        ['c1', { from: 'c1' }],
        ['c2', { from: 'c2' }],
      ]);
      // A schema newer than this coordinator knows is refused, not guessed at.
      await client.query('UPDATE tcx_log_schema SET version = 99');
      await expect(PostgresLog.open({ url, coordinatorId: 'c3', epoch: '1', snapshot: noSnapshot })).rejects.toThrow(/newer than this coordinator knows/);
    } finally {
      await client.end();
    }
  });

  it('commits nothing once its lease has lapsed, even before anyone else takes it', async () => {
    const { url, take } = await logDatabase();
    const { log } = await PostgresLog.open({ url, coordinatorId: 'c1', epoch: await take('c1'), snapshot: noSnapshot });
    cleanup.push(() => log.close());
    await log.append({ ok: 1 }, { force: true });
    const client = new pg.Client({ connectionString: url });
    await client.connect();
    try {
      await client.query("UPDATE tcx_lease SET expires_at = now() - interval '1 second' WHERE coordinator_id = 'c1'");
      await expect(log.append({ late: 1 }, { force: true })).rejects.toThrow(/lapsed or passed/);
      const rows = await client.query<{ record: string; epoch: string }>('SELECT record, epoch FROM tcx_log ORDER BY seq');
      expect(rows.rows.map((r) => [JSON.parse(r.record), r.epoch])).toEqual([[{ ok: 1 }, '1']]);
    } finally {
      await client.end();
    }
  });

  it('deletes the records a snapshot covers', async () => {
    const { url, take } = await logDatabase();
    const { log } = await PostgresLog.open({ url, coordinatorId: 'c1', epoch: await take('c1'), snapshot: () => [{ all: true }] });
    cleanup.push(() => log.close());
    await Promise.all(Array.from({ length: 50 }, (_, i) => log.append({ i }, { force: true })));
    await log.compact();
    await log.append({ after: 1 }, { force: true });
    await log.flush();
    const client = new pg.Client({ connectionString: url });
    await client.connect();
    try {
      // The writer deletes the covered records between batches, so a flush may come back before it has.
      const left = async (): Promise<unknown[]> => (await client.query<{ record: string }>('SELECT record FROM tcx_log ORDER BY seq')).rows.map((r) => JSON.parse(r.record));
      await eventually(async () => (await left()).length === 1);
      expect(await left()).toEqual([{ after: 1 }]);
    } finally {
      await client.end();
    }
  });
});
