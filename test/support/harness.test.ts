/**
 * Proves the harness hands out real servers: 2PC works on Postgres, A and B are distinct,
 * Redis runs with AOF fsync always, and self-started servers survive SIGKILL + restart.
 */
import { existsSync, readFileSync } from 'node:fs';
import { afterAll, describe, expect, inject, it } from 'vitest';
import pg from 'pg';
import { Redis } from 'ioredis';
import { PostgresServer } from './postgres-server.js';
import { RedisServer } from './redis-server.js';

async function withClient<T>(url: string, fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 10_000 });
  client.on('error', () => undefined);
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end().catch(() => undefined);
  }
}

async function withRedis<T>(url: string, fn: (r: Redis) => Promise<T>): Promise<T> {
  const redis = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 1, retryStrategy: () => null });
  redis.on('error', () => undefined);
  await redis.connect();
  try {
    return await fn(redis);
  } finally {
    redis.disconnect();
  }
}

/** Alive and not a zombie (Linux /proc; falls back to kill(pid, 0)). */
function isAlive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const state = stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0];
    return state !== 'Z' && state !== 'X';
  } catch {
    if (existsSync('/proc/self')) return false;
    try {
      process.kill(pid, 0);
      return true;
    } catch {
      return false;
    }
  }
}

const gid = (what: string): string => `tcx-harness-${what}-${process.pid}-${Date.now()}`;

describe('shared servers from global setup', () => {
  const pgUrlA = inject('pgUrlA');
  const pgUrlB = inject('pgUrlB');
  const redisUrl = inject('redisUrl');

  it('PREPARE TRANSACTION + COMMIT PREPARED works on A', async () => {
    const table = `harness_${process.pid}_${Date.now()}`;
    const id = gid('a');
    await withClient(pgUrlA, async (c) => {
      await c.query(`CREATE TABLE ${table} (v int)`);
      await c.query('BEGIN');
      await c.query(`INSERT INTO ${table} VALUES (42)`);
      await c.query(`PREPARE TRANSACTION '${id}'`);
      // Prepared, not yet visible.
      expect((await c.query(`SELECT count(*)::int AS n FROM ${table}`)).rows[0]).toEqual({ n: 0 });
      const listed = await c.query('SELECT gid FROM pg_prepared_xacts WHERE gid = $1', [id]);
      expect(listed.rowCount).toBe(1);
      await c.query(`COMMIT PREPARED '${id}'`);
      expect((await c.query(`SELECT v FROM ${table}`)).rows).toEqual([{ v: 42 }]);
      await c.query(`DROP TABLE ${table}`);
    });
  });

  it('B is a different database than A, and a different server unless both came from env', async () => {
    const ident = (c: pg.Client) =>
      c
        .query<{ db: string; sysid: string; port: number; started: string }>(
          `SELECT current_database() AS db, (SELECT system_identifier::text FROM pg_control_system()) AS sysid,
                  inet_server_port() AS port, pg_postmaster_start_time()::text AS started`,
        )
        .then((r) => r.rows[0]);
    const a = await withClient(pgUrlA, ident);
    const b = await withClient(pgUrlB, ident);
    expect(a).toBeDefined();
    expect(b).toBeDefined();
    expect(a).not.toEqual(b);
    if (inject('pgSource') !== 'env') {
      // A transaction prepared on A must not show up in B's (cluster-wide) pg_prepared_xacts.
      const id = gid('sep');
      await withClient(pgUrlA, async (ca) => {
        await ca.query('BEGIN');
        await ca.query(`PREPARE TRANSACTION '${id}'`);
        try {
          const onB = await withClient(pgUrlB, (cb) => cb.query('SELECT 1 FROM pg_prepared_xacts WHERE gid = $1', [id]));
          expect(onB.rowCount).toBe(0);
        } finally {
          await ca.query(`ROLLBACK PREPARED '${id}'`);
        }
      });
    }
  });

  it('both Postgres servers allow prepared transactions', async () => {
    for (const url of [pgUrlA, pgUrlB]) {
      const max = await withClient(url, (c) => c.query<{ max_prepared_transactions: string }>('SHOW max_prepared_transactions'));
      expect(Number(max.rows[0]?.max_prepared_transactions)).toBeGreaterThan(0);
    }
  });

  it('Redis runs with appendonly yes and appendfsync always', async () => {
    const [appendonly, appendfsync] = await withRedis(redisUrl, async (r) => [
      await r.config('GET', 'appendonly'),
      await r.config('GET', 'appendfsync'),
    ]);
    expect(appendonly).toEqual(['appendonly', 'yes']);
    expect(appendfsync).toEqual(['appendfsync', 'always']);
  });
});

describe.skipIf(!PostgresServer.available())('PostgresServer (local binaries)', () => {
  const servers: PostgresServer[] = [];
  afterAll(async () => {
    await Promise.allSettled(servers.map((s) => s.destroy()));
  });

  it('keeps a prepared transaction across SIGKILL + restart on the same port', async () => {
    const server = await PostgresServer.start({ name: 'crash' });
    servers.push(server);
    const port = server.port;
    const url = await server.createDatabase('crashdb');
    const id = gid('crash');
    await withClient(url, async (c) => {
      await c.query('CREATE TABLE t (v int)');
      await c.query('BEGIN');
      await c.query('INSERT INTO t VALUES (7)');
      await c.query(`PREPARE TRANSACTION '${id}'`);
    });
    const oldPid = server.pid;
    // Backends and auxiliary processes (they setsid(), so a process-group kill alone would miss them).
    const children = await withClient(url, (c) =>
      c.query<{ pid: number }>('SELECT pid FROM pg_stat_activity').then((r) => r.rows.map((row) => row.pid)),
    );
    expect(children.length).toBeGreaterThan(2);
    await server.kill();
    expect(server.running).toBe(false);
    expect([oldPid, ...children].filter((pid) => pid !== undefined && isAlive(pid))).toEqual([]);
    await expect(withClient(url, (c) => c.query('SELECT 1'))).rejects.toThrow();

    await server.restart();
    expect(server.port).toBe(port);
    expect(server.pid).not.toBe(oldPid);
    expect(server.logTail(200)).toMatch(/not properly shut down|automatic recovery/);
    await withClient(url, async (c) => {
      const listed = await c.query('SELECT gid, database FROM pg_prepared_xacts');
      expect(listed.rows).toEqual([{ gid: id, database: 'crashdb' }]);
      await c.query(`COMMIT PREPARED '${id}'`);
      expect((await c.query('SELECT v FROM t')).rows).toEqual([{ v: 7 }]);
    });
  });

  it('stop() + restart() keeps a prepared transaction too', async () => {
    const server = await PostgresServer.start({ name: 'stop' });
    servers.push(server);
    const id = gid('stop');
    await withClient(server.url(), async (c) => {
      await c.query('BEGIN');
      await c.query(`PREPARE TRANSACTION '${id}'`);
    });
    await server.stop();
    await server.restart();
    await withClient(server.url(), async (c) => {
      expect((await c.query('SELECT gid FROM pg_prepared_xacts')).rows).toEqual([{ gid: id }]);
      await c.query(`ROLLBACK PREPARED '${id}'`);
    });
  });

  it('can start a server with max_prepared_transactions = 0', async () => {
    const server = await PostgresServer.start({ name: 'noprep', maxPreparedTransactions: 0 });
    servers.push(server);
    await withClient(server.url(), async (c) => {
      expect((await c.query('SHOW max_prepared_transactions')).rows).toEqual([{ max_prepared_transactions: '0' }]);
      await c.query('BEGIN');
      await expect(c.query(`PREPARE TRANSACTION '${gid('zero')}'`)).rejects.toThrow(/prepared transactions are disabled/);
    });
  });

  it('destroy() removes the temp dir', async () => {
    const server = await PostgresServer.start({ name: 'gone' });
    const { dir } = server;
    expect(dir).toMatch(/tcx-/);
    await server.destroy();
    expect(existsSync(dir)).toBe(false);
  });
});

describe.skipIf(!RedisServer.available())('RedisServer (local binary)', () => {
  const servers: RedisServer[] = [];
  afterAll(async () => {
    await Promise.allSettled(servers.map((s) => s.destroy()));
  });

  it('keeps a key written before SIGKILL (AOF replayed on restart, same port)', async () => {
    const server = await RedisServer.start();
    servers.push(server);
    const port = server.port;
    await withRedis(server.url, (r) => r.set('tcx:harness', 'survives'));
    await server.kill();
    expect(server.running).toBe(false);
    await server.restart();
    expect(server.port).toBe(port);
    expect(await withRedis(server.url, (r) => r.get('tcx:harness'))).toBe('survives');
  });
});
