/**
 * A Redis participant's connection: opened on first use, standalone or Redis Cluster (decided
 * by `INFO cluster` at the first connection), with the coordinator's Lua scripts defined on it.
 * Every call is bounded: connectTimeout, commandTimeout, no offline queue, and no retry or
 * re-send of a command whose outcome is unknown. Failures to reach the server become
 * PARTICIPANT_UNREACHABLE; a refused AUTH, PARTICIPANT_AUTH_FAILED.
 */

import { readFileSync } from 'node:fs';
import { Cluster, Redis, type RedisOptions } from 'ioredis';
import type { Logger } from 'pino';
import { CoordinatorError, errorMessage } from '../errors.js';
import { withTimeout } from '../lib/with-timeout.js';

export interface RedisConnectionOptions {
  /** The participant's name, for errors. */
  readonly name: string;
  /** redis:// or rediss:// URL (user, password, db as ioredis reads them). */
  readonly url: string;
  readonly connectTimeoutMs: number;
  readonly commandTimeoutMs: number;
}

export type ScriptRunner = (numKeys: number, ...args: string[]) => Promise<unknown>;
export interface ScriptCommands {
  tcxPrepare: ScriptRunner;
  tcxCommit: ScriptRunner;
  tcxAbort: ScriptRunner;
  tcxPrecommit: ScriptRunner;
}
export type RedisClient = (Redis | Cluster) & ScriptCommands;

const SCRIPT_FILES: Record<keyof ScriptCommands, string> = {
  tcxPrepare: 'prepare.lua',
  tcxCommit: 'commit.lua',
  tcxAbort: 'abort.lua',
  tcxPrecommit: 'precommit.lua',
};

const INCLUDE = /^--- @include "([A-Za-z0-9_.-]+)"[ \t]*$/gm;
const scriptSources = new Map<string, string>();

/** Reads lua/<file> next to this module, inlining `--- @include "x.lua"` lines; errors name the include stack. */
export function loadLuaScript(file: string, stack: readonly string[] = []): string {
  if (stack.length === 0) {
    const cached = scriptSources.get(file);
    if (cached !== undefined) return cached;
  }
  if (stack.includes(file)) throw new CoordinatorError('INTERNAL', `Lua include cycle: ${[...stack, file].join(' -> ')}`);
  let text: string;
  try {
    text = readFileSync(new URL(`./lua/${file}`, import.meta.url), 'utf8');
  } catch (err) {
    const from = stack.length === 0 ? '' : ` (included from ${stack.join(' -> ')})`;
    throw new CoordinatorError('INTERNAL', `cannot read Lua script ${file}${from}: ${errorMessage(err)}`, { cause: err });
  }
  const source = text.replace(INCLUDE, (_line, name: string) => loadLuaScript(name, [...stack, file]));
  if (stack.length === 0) scriptSources.set(file, source);
  return source;
}

export class RedisConnection {
  readonly #options: RedisConnectionOptions;
  readonly #log: Logger;
  #connecting: Promise<RedisClient> | undefined;
  #client: RedisClient | undefined;
  #cluster = false;
  #closed = false;
  #healthy = true;

  constructor(options: RedisConnectionOptions, log: Logger) {
    this.#options = options;
    this.#log = log;
  }

  /** True once connected to a server with cluster_enabled:1. */
  get clusterMode(): boolean {
    return this.#cluster;
  }

  /** The client, connected (or reconnected) and ready; SHUTTING_DOWN once closed. */
  async client(): Promise<RedisClient> {
    if (this.#closed) throw new CoordinatorError('SHUTTING_DOWN', `redis participant ${this.#options.name} is closed`);
    this.#connecting ??= this.#open().catch((err: unknown) => {
      this.#connecting = undefined;
      throw err;
    });
    const client = await this.#connecting;
    if (client.status !== 'ready') {
      if (client.status === 'end') {
        this.#connecting = undefined;
        throw redisUnreachable(this.#options.name, new Error('connection ended'));
      }
      await whenReady(client, this.#options.connectTimeoutMs).catch((err: unknown) => {
        throw redisUnreachable(this.#options.name, err);
      });
    }
    return client;
  }

  /** Quits (bounded) and disconnects; later calls answer SHUTTING_DOWN. */
  async close(): Promise<void> {
    this.#closed = true;
    const connecting = this.#connecting;
    this.#connecting = undefined;
    const client = this.#client ?? (await connecting?.catch(() => undefined));
    this.#client = undefined;
    if (client === undefined) return;
    await withTimeout(client.quit(), this.#options.commandTimeoutMs, 'QUIT').catch(() => undefined);
    client.disconnect();
  }

  async #open(): Promise<RedisClient> {
    const o = this.#options;
    const common = {
      connectTimeout: o.connectTimeoutMs,
      commandTimeout: o.commandTimeoutMs,
      // A command that timed out has an unknown outcome and the coordinator already acted on
      // it (a prepare that timed out is a no vote). Re-sending it after a reconnect could
      // stage a branch nobody will resolve promptly: never re-send, never retry blindly.
      maxRetriesPerRequest: 0,
      autoResendUnfulfilledCommands: false,
      connectionName: 'tx-coordinator',
    } satisfies RedisOptions;
    const standalone = new Redis(o.url, {
      ...common,
      lazyConnect: true,
      enableOfflineQueue: false,
      retryStrategy: (times) => Math.min(times * 100, 2_000),
    });
    this.#watch(standalone);
    // A refused AUTH shows only as an 'error' event; connect() itself rejects "Connection is closed.".
    let refusal: unknown;
    const remember = (err: unknown): void => {
      if (isReplyError(err) && /^(WRONGPASS|NOAUTH|NOPERM)\b/.test(errorMessage(err))) refusal = err;
    };
    standalone.on('error', remember);
    try {
      await withTimeout(standalone.connect(), o.connectTimeoutMs, 'connect');
    } catch (err) {
      standalone.disconnect();
      if (refusal !== undefined) {
        throw new CoordinatorError('PARTICIPANT_AUTH_FAILED', `redis participant ${this.#options.name} refused the credentials: ${errorMessage(refusal)}`, {
          cause: refusal,
        });
      }
      throw redisUnreachable(this.#options.name, err);
    } finally {
      standalone.off('error', remember);
    }
    let cluster = false;
    try {
      cluster = /^cluster_enabled:1\s*$/m.test(await standalone.info('cluster'));
    } catch (err) {
      this.#log.warn({ err: errorMessage(err) }, 'INFO cluster failed; assuming a standalone server');
    }
    let client: Redis | Cluster = standalone;
    if (cluster) {
      standalone.disconnect();
      const url = new URL(o.url);
      const node = { host: url.hostname.replace(/^\[|\]$/g, ''), port: Number(url.port === '' ? 6379 : url.port) };
      const clusterClient = new Cluster([node], {
        lazyConnect: true,
        enableOfflineQueue: false,
        scaleReads: 'master',
        slotsRefreshTimeout: o.connectTimeoutMs,
        clusterRetryStrategy: (times) => Math.min(times * 100, 2_000),
        redisOptions: {
          ...common,
          ...(url.username === '' ? {} : { username: decodeURIComponent(url.username) }),
          ...(url.password === '' ? {} : { password: decodeURIComponent(url.password) }),
          ...(url.protocol === 'rediss:' ? { tls: {} } : {}),
        },
      });
      this.#watch(clusterClient);
      try {
        await withTimeout(clusterClient.connect(), o.connectTimeoutMs, 'cluster connect');
      } catch (err) {
        clusterClient.disconnect();
        throw redisUnreachable(this.#options.name, err);
      }
      client = clusterClient;
    }
    for (const [command, file] of Object.entries(SCRIPT_FILES)) client.defineCommand(command, { lua: loadLuaScript(file) });
    this.#cluster = cluster;
    this.#client = client as RedisClient;
    if (this.#closed) {
      client.disconnect();
      throw new CoordinatorError('SHUTTING_DOWN', `redis participant ${this.#options.name} is closed`);
    }
    this.#log.debug({ cluster }, 'connected to redis');
    return client as RedisClient;
  }

  #watch(client: Redis | Cluster): void {
    client.on('error', (err: unknown) => {
      if (!this.#healthy) return;
      this.#healthy = false;
      this.#log.warn({ err: errorMessage(err) }, 'redis connection failed; reconnecting');
    });
    client.on('ready', () => {
      if (this.#healthy) return;
      this.#healthy = true;
      this.#log.info('redis connection restored');
    });
  }
}

export function isReplyError(err: unknown): boolean {
  return err instanceof Error && err.name === 'ReplyError';
}

export function redisUnreachable(name: string, err: unknown, what?: string): CoordinatorError {
  const during = what === undefined ? '' : ` (${what})`;
  return new CoordinatorError('PARTICIPANT_UNREACHABLE', `cannot reach redis participant ${name}${during}: ${errorMessage(err)}`, { cause: err });
}

/** Resolves when the client is ready again, rejects when it ends or after ms; leaves no listener behind. */
function whenReady(client: Redis | Cluster, ms: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const settle = (err?: Error): void => {
      clearTimeout(timer);
      client.off('ready', ready);
      client.off('end', ended);
      if (err === undefined) resolve();
      else reject(err);
    };
    const ready = (): void => settle();
    const ended = (): void => settle(new Error('connection ended'));
    const timer = setTimeout(() => settle(new Error(`not ready within ${ms} ms`)), ms);
    client.on('ready', ready);
    client.on('end', ended);
  });
}
