/**
 * Obtains the real Postgres (A and B) and Redis servers the suite runs against, in this order:
 *   1. URLs from the environment: TCX_TEST_PG_URL_A, TCX_TEST_PG_URL_B, TCX_TEST_REDIS_URL
 *      (each one independently; whatever is not given is started by 2 or 3);
 *   2. testcontainers, only when a Docker engine answers a ping within a short timeout
 *      (set TCX_TEST_NO_DOCKER=1 to skip);
 *   3. servers started from the local binaries (PostgresServer / RedisServer).
 * Every server is checked before use: Postgres must have max_prepared_transactions > 0,
 * Redis must run with appendonly yes / appendfsync always.
 */
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { Redis } from 'ioredis';
import { PostgresServer } from './postgres-server.js';
import { RedisServer } from './redis-server.js';

export type ServerSource = 'env' | 'docker' | 'local';

export interface AcquiredServers {
  pgUrlA: string;
  pgUrlB: string;
  redisUrl: string;
  /** Where the Postgres servers came from ('env' only when both A and B came from the environment). */
  pgSource: ServerSource;
  redisSource: ServerSource;
  release(): Promise<void>;
}

interface Started {
  pgUrlA?: string;
  pgUrlB?: string;
  redisUrl?: string;
  release(): Promise<void>;
}

const DOCKER_PING_TIMEOUT_MS = 1_500;

function dockerEndpoints(): { socketPath?: string; host?: string; port?: number }[] {
  const out: { socketPath?: string; host?: string; port?: number }[] = [];
  const dh = process.env.DOCKER_HOST;
  if (dh) {
    if (dh.startsWith('unix://')) out.push({ socketPath: dh.slice('unix://'.length) });
    else {
      try {
        const u = new URL(dh.replace(/^tcp:/, 'http:'));
        out.push({ host: u.hostname, port: Number(u.port || 2375) });
      } catch {
        // unparseable DOCKER_HOST: ignore
      }
    }
    return out; // an explicit DOCKER_HOST is the only engine testcontainers would use
  }
  const sockets = ['/var/run/docker.sock', path.join(os.homedir(), '.docker/run/docker.sock')];
  if (process.env.XDG_RUNTIME_DIR) sockets.push(path.join(process.env.XDG_RUNTIME_DIR, 'docker.sock'));
  for (const s of sockets) if (fs.existsSync(s)) out.push({ socketPath: s });
  return out;
}

function pingEndpoint(ep: { socketPath?: string; host?: string; port?: number }, tls: boolean, ms: number): Promise<boolean> {
  return new Promise((resolve) => {
    if (tls && ep.host) {
      // TLS engine: we cannot speak HTTP without the certs; a TCP connect must do.
      const sock = net.connect({ host: ep.host, port: ep.port ?? 2376 });
      const t = setTimeout(() => {
        sock.destroy();
        resolve(false);
      }, ms);
      sock.once('connect', () => {
        clearTimeout(t);
        sock.destroy();
        resolve(true);
      });
      sock.once('error', () => {
        clearTimeout(t);
        resolve(false);
      });
      return;
    }
    const req = http.get({ ...ep, path: '/_ping', timeout: ms }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve(res.statusCode === 200 && body.trim() === 'OK'));
      res.on('error', () => resolve(false));
    });
    req.on('timeout', () => {
      req.destroy();
      resolve(false);
    });
    req.on('error', () => resolve(false));
  });
}

/** True when a Docker engine answers /_ping within `ms` (never hangs). */
export async function dockerEngineAnswers(ms = DOCKER_PING_TIMEOUT_MS): Promise<boolean> {
  if (process.env.TCX_TEST_NO_DOCKER === '1') return false;
  const tls = !!process.env.DOCKER_TLS_VERIFY;
  for (const ep of dockerEndpoints()) {
    if (await pingEndpoint(ep, tls, ms)) return true;
  }
  return false;
}

async function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      p,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${what} did not finish within ${ms} ms`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

async function startWithDocker(needPgA: boolean, needPgB: boolean, needRedis: boolean): Promise<Started> {
  const { GenericContainer, Wait } = await import('testcontainers');
  const pgImage = process.env.TCX_TEST_PG_IMAGE ?? 'postgres:15-alpine';
  const redisImage = process.env.TCX_TEST_REDIS_IMAGE ?? 'redis:7-alpine';
  const started: { stop(): Promise<unknown> }[] = [];
  const release = async (): Promise<void> => {
    await Promise.allSettled(started.map((c) => c.stop()));
  };
  const startPg = async (): Promise<string> => {
    const c = await new GenericContainer(pgImage)
      .withEnvironment({ POSTGRES_HOST_AUTH_METHOD: 'trust' })
      .withCommand([
        'postgres',
        '-c', 'max_prepared_transactions=100',
        '-c', 'max_connections=200',
        '-c', 'fsync=off',
        '-c', 'synchronous_commit=off',
        '-c', 'full_page_writes=off',
      ])
      .withExposedPorts(5432)
      .withWaitStrategy(Wait.forLogMessage(/database system is ready to accept connections/, 2))
      .withStartupTimeout(120_000)
      .start();
    started.push(c);
    return `postgres://postgres@${c.getHost()}:${c.getMappedPort(5432)}/postgres`;
  };
  const startRedis = async (): Promise<string> => {
    const c = await new GenericContainer(redisImage)
      .withCommand(['redis-server', '--appendonly', 'yes', '--appendfsync', 'always', '--save', ''])
      .withExposedPorts(6379)
      .withWaitStrategy(Wait.forLogMessage(/Ready to accept connections/))
      .withStartupTimeout(120_000)
      .start();
    started.push(c);
    return `redis://${c.getHost()}:${c.getMappedPort(6379)}`;
  };
  try {
    const [a, b, r] = await withTimeout(
      Promise.all([needPgA ? startPg() : undefined, needPgB ? startPg() : undefined, needRedis ? startRedis() : undefined]),
      300_000,
      'starting test containers',
    );
    return { ...(a ? { pgUrlA: a } : {}), ...(b ? { pgUrlB: b } : {}), ...(r ? { redisUrl: r } : {}), release };
  } catch (err) {
    await release();
    throw err;
  }
}

async function startLocal(needPgA: boolean, needPgB: boolean, needRedis: boolean): Promise<Started> {
  const servers: { destroy(): Promise<void> }[] = [];
  const release = async (): Promise<void> => {
    await Promise.allSettled(servers.map((s) => s.destroy()));
  };
  const track = <T extends { destroy(): Promise<void> }>(s: T): T => {
    servers.push(s);
    return s;
  };
  const results = await Promise.allSettled([
    needPgA ? PostgresServer.start({ name: 'A' }).then(track) : undefined,
    needPgB ? PostgresServer.start({ name: 'B' }).then(track) : undefined,
    needRedis ? RedisServer.start({ name: 'redis' }).then(track) : undefined,
  ]);
  const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) {
    await release();
    throw failed.reason;
  }
  const [a, b, r] = results.map((x) => (x.status === 'fulfilled' ? x.value : undefined)) as [
    PostgresServer | undefined,
    PostgresServer | undefined,
    RedisServer | undefined,
  ];
  return { ...(a ? { pgUrlA: a.url() } : {}), ...(b ? { pgUrlB: b.url() } : {}), ...(r ? { redisUrl: r.url } : {}), release };
}

function redact(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return url;
  }
}

async function verifyPostgres(label: string, url: string): Promise<void> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 10_000 });
  client.on('error', () => undefined);
  try {
    await client.connect();
    const res = await client.query<{ max_prepared_transactions: string }>('SHOW max_prepared_transactions');
    const max = Number(res.rows[0]?.max_prepared_transactions ?? 0);
    if (!(max > 0)) {
      throw new Error(`${label} (${redact(url)}) has max_prepared_transactions=${max}; the suite needs it > 0`);
    }
  } catch (err) {
    throw new Error(`test Postgres ${label} (${redact(url)}) is not usable: ${err instanceof Error ? err.message : String(err)}`);
  } finally {
    await client.end().catch(() => undefined);
  }
}

async function verifyRedis(url: string): Promise<void> {
  const redis = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 0, connectTimeout: 10_000, retryStrategy: () => null });
  redis.on('error', () => undefined);
  try {
    await redis.connect();
    await redis.ping();
    let config: string[];
    try {
      config = [...((await redis.config('GET', 'appendonly')) as string[]), ...((await redis.config('GET', 'appendfsync')) as string[])];
    } catch (err) {
      console.warn(`[tcx test servers] cannot read Redis config at ${redact(url)} (${String(err)}); assuming AOF fsync always`);
      return;
    }
    const conf = new Map<string, string>();
    for (let i = 0; i + 1 < config.length; i += 2) conf.set(config[i] ?? '', config[i + 1] ?? '');
    if (conf.get('appendonly') !== 'yes' || conf.get('appendfsync') !== 'always') {
      throw new Error(
        `appendonly=${String(conf.get('appendonly'))} appendfsync=${String(conf.get('appendfsync'))}; the suite needs appendonly yes, appendfsync always`,
      );
    }
  } catch (err) {
    throw new Error(`test Redis (${redact(url)}) is not usable: ${err instanceof Error ? err.message : String(err)}`);
  } finally {
    redis.disconnect();
  }
}

function databaseKey(url: string): string {
  try {
    const u = new URL(url);
    return `${u.hostname}:${u.port || '5432'}/${decodeURIComponent(u.pathname.slice(1)) || u.username}`;
  } catch {
    return url;
  }
}

export async function acquireServers(): Promise<AcquiredServers> {
  const env = {
    pgUrlA: process.env.TCX_TEST_PG_URL_A || undefined,
    pgUrlB: process.env.TCX_TEST_PG_URL_B || undefined,
    redisUrl: process.env.TCX_TEST_REDIS_URL || undefined,
  };
  const needA = !env.pgUrlA;
  const needB = !env.pgUrlB;
  const needRedis = !env.redisUrl;

  let started: Started = { release: async () => undefined };
  let startedSource: ServerSource = 'env';
  if (needA || needB || needRedis) {
    if (await dockerEngineAnswers()) {
      try {
        started = await startWithDocker(needA, needB, needRedis);
        startedSource = 'docker';
      } catch (err) {
        console.warn(`[tcx test servers] a Docker engine answers but testcontainers failed (${String(err)}); using local binaries`);
      }
    }
    if (startedSource === 'env') {
      started = await startLocal(needA, needB, needRedis);
      startedSource = 'local';
    }
  }

  const pgUrlA = env.pgUrlA ?? started.pgUrlA;
  const pgUrlB = env.pgUrlB ?? started.pgUrlB;
  const redisUrl = env.redisUrl ?? started.redisUrl;
  try {
    if (!pgUrlA || !pgUrlB || !redisUrl) throw new Error('internal: a test server URL is missing');
    if (databaseKey(pgUrlA) === databaseKey(pgUrlB)) {
      throw new Error(`TCX_TEST_PG_URL_A and TCX_TEST_PG_URL_B must name distinct databases (both are ${databaseKey(pgUrlA)})`);
    }
    await Promise.all([verifyPostgres('A', pgUrlA), verifyPostgres('B', pgUrlB), verifyRedis(redisUrl)]);
    return {
      pgUrlA,
      pgUrlB,
      redisUrl,
      pgSource: env.pgUrlA && env.pgUrlB ? 'env' : startedSource,
      redisSource: env.redisUrl ? 'env' : startedSource,
      release: () => started.release(),
    };
  } catch (err) {
    await started.release();
    throw err;
  }
}
