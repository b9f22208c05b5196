/**
 * A real NATS server started from `nats-server` on this machine, on 127.0.0.1 and a free port
 * with its own config file and JetStream store dir in a temp dir, for tests that kill
 * (SIGKILL) and restart it. JetStream is on by default (`jetstream: false` starts a server
 * without it). The system's own nats-server (port 4222) is never touched.
 *
 * Also: `createStream` / `readStream` for tests that assert on what a stream really holds.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { connect, nanos, StorageType, type NatsConnection, type StoredMsg, type StreamConfig } from 'nats';
import { getFreePort } from './free-port.js';
import { SpawnedProcess, makeTempDir } from './spawned-process.js';
import { SpawnedServer } from './spawned-server.js';

let binaryCache: string | null | undefined;
/** Path of nats-server: $TCX_NATS_SERVER, /usr/sbin/nats-server, /usr/bin/nats-server, /usr/local/bin/nats-server, or on PATH. */
export function findNatsServerBinary(): string | null {
  if (binaryCache !== undefined) return binaryCache;
  const candidates = [process.env.TCX_NATS_SERVER, '/usr/sbin/nats-server', '/usr/bin/nats-server', '/usr/local/bin/nats-server'];
  binaryCache = candidates.find((c): c is string => !!c && fs.existsSync(c)) ?? null;
  if (!binaryCache) {
    try {
      const found = execFileSync('sh', ['-c', 'command -v nats-server'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
      binaryCache = found !== '' ? found : null;
    } catch {
      binaryCache = null;
    }
  }
  return binaryCache;
}

export interface NatsServerOptions {
  /** Used in the temp dir name and error messages. */
  name?: string;
  /** JetStream on (the store lives in the temp dir); default true. */
  jetstream?: boolean;
  /** Clients must authenticate with this user and password (give them in the URL: nats://user:pass@host:port). */
  user?: string;
  password?: string;
  /** Clients must present this token instead (in the URL: nats://token@host:port). */
  token?: string;
  /** The server's max_payload in bytes (default: the server's, 1 MiB). */
  maxPayload?: number;
}

/** A JSON string literal is a valid value in the NATS config format. */
const q = (s: string): string => JSON.stringify(s);

export class NatsServer extends SpawnedServer {
  private constructor(
    name: string,
    readonly binary: string,
    /** Temp dir: nats.conf, nats.log and the JetStream store (store/). */
    dir: string,
    port: number,
    readonly options: NatsServerOptions,
  ) {
    // SIGTERM: JetStream flushes its store, then the server exits.
    super('NatsServer', name, dir, port, 'SIGTERM');
  }

  static available(): boolean {
    return findNatsServerBinary() !== null;
  }

  static async start(opts: NatsServerOptions = {}): Promise<NatsServer> {
    const binary = findNatsServerBinary();
    if (!binary) throw new Error('NatsServer: nats-server not found; install the `nats-server` package or set TCX_NATS_SERVER');
    const name = (opts.name ?? 'nats').replace(/[^A-Za-z0-9_-]/g, '_');
    const server = new NatsServer(name, binary, makeTempDir(`${name}-`), await getFreePort(), opts);
    await server.firstLaunch(/address already in use/i);
    return server;
  }

  /** nats://[user:pass@]127.0.0.1:port */
  get url(): string {
    const { user, password, token } = this.options;
    const auth =
      user !== undefined ? `${encodeURIComponent(user)}:${encodeURIComponent(password ?? '')}@` : token !== undefined ? `${encodeURIComponent(token)}@` : '';
    return `nats://${auth}${this.host}:${this.port}`;
  }

  /** The address without credentials. */
  get address(): string {
    return `nats://${this.host}:${this.port}`;
  }

  get storeDir(): string {
    return path.join(this.dir, 'store');
  }

  get logFile(): string {
    return path.join(this.dir, 'nats.log');
  }

  get configFile(): string {
    return path.join(this.dir, 'nats.conf');
  }

  /** A client connection to this server (no reconnects); close it when done. */
  connect(): Promise<NatsConnection> {
    return connectOnce(this.url);
  }

  private writeConfig(): void {
    const o = this.options;
    const lines = [`listen: ${q(`${this.host}:${this.port}`)}`, `server_name: ${q(`tcx_${this.name}`)}`];
    if (o.jetstream ?? true) lines.push(`jetstream { store_dir: ${q(this.storeDir)} }`);
    if (o.user !== undefined) lines.push(`authorization { user: ${q(o.user)}, password: ${q(o.password ?? '')} }`);
    else if (o.token !== undefined) lines.push(`authorization { token: ${q(o.token)} }`);
    if (o.maxPayload !== undefined) lines.push(`max_payload: ${o.maxPayload}`);
    fs.writeFileSync(this.configFile, `${lines.join('\n')}\n`, { mode: 0o600 });
  }

  protected async launch(): Promise<void> {
    this.writeConfig();
    fs.appendFileSync(this.logFile, `--- tcx: starting nats-server on port ${this.port} at ${new Date().toISOString()}\n`);
    const proc = new SpawnedProcess(`nats ${this.name}:${this.port}`, this.binary, ['-c', this.configFile], this.logFile, { cwd: this.dir });
    // Until a client connects (and, with JetStream, its account info answers).
    await this.startProcess(proc, async () => {
      const nc = await connectOnce(this.url, 1_000);
      try {
        if (this.options.jetstream ?? true) await nc.jetstreamManager({ timeout: 1_000 });
        return true;
      } finally {
        await nc.close().catch(() => undefined);
      }
    }, 30_000);
  }
}

async function connectOnce(url: string, timeoutMs = 5_000): Promise<NatsConnection> {
  const u = new URL(url);
  return connect({
    servers: `${u.hostname}:${u.port}`,
    ...(u.username === ''
      ? {}
      : u.password === ''
        ? { token: decodeURIComponent(u.username) }
        : { user: decodeURIComponent(u.username), pass: decodeURIComponent(u.password) }),
    timeout: timeoutMs,
    reconnect: false,
    ignoreClusterUpdates: true,
  });
}

export interface TestStreamOptions {
  readonly name: string;
  readonly subjects: readonly string[];
  /** Default file. */
  readonly storage?: 'file' | 'memory';
  /** Default: the server's (2 minutes). */
  readonly duplicateWindowMs?: number;
  /** Any other stream setting (e.g. max_msgs with discard new). */
  readonly config?: Partial<StreamConfig>;
}

/** Creates (or updates) a stream on the server at `url`. */
export async function createStream(url: string, opts: TestStreamOptions): Promise<void> {
  const nc = await connectOnce(url);
  try {
    const jsm = await nc.jetstreamManager();
    await jsm.streams.add({
      name: opts.name,
      subjects: [...opts.subjects],
      storage: opts.storage === 'memory' ? StorageType.Memory : StorageType.File,
      ...(opts.duplicateWindowMs === undefined ? {} : { duplicate_window: nanos(opts.duplicateWindowMs) }),
      ...opts.config,
    });
  } finally {
    await nc.close();
  }
}

export interface StreamMessage {
  readonly seq: number;
  readonly subject: string;
  /** The payload as UTF-8 text. */
  readonly text: string;
  /** Every header, first value of each. */
  readonly headers: Record<string, string>;
}

/** Removes every message of the stream. */
export async function purgeStream(url: string, stream: string): Promise<void> {
  const nc = await connectOnce(url);
  try {
    await (await nc.jetstreamManager()).streams.purge(stream);
  } finally {
    await nc.close();
  }
}

/** Every message the stream holds, in stream order (optionally only those on `subject`). */
export async function readStream(url: string, stream: string, subject?: string): Promise<StreamMessage[]> {
  const nc = await connectOnce(url);
  try {
    const jsm = await nc.jetstreamManager();
    const info = await jsm.streams.info(stream);
    const out: StreamMessage[] = [];
    if (info.state.messages === 0) return out;
    for (let seq = info.state.first_seq; seq <= info.state.last_seq; seq++) {
      let m: StoredMsg;
      try {
        m = await jsm.streams.getMessage(stream, { seq });
      } catch (err) {
        if (/no message found|not found/i.test(err instanceof Error ? err.message : String(err))) continue; // deleted
        throw err;
      }
      if (subject !== undefined && m.subject !== subject) continue;
      const headers: Record<string, string> = {};
      for (const [k, v] of m.header ?? []) if (v[0] !== undefined) headers[k] = v[0];
      out.push({ seq: m.seq, subject: m.subject, text: new TextDecoder().decode(m.data), headers });
    }
    return out;
  } finally {
    await nc.close();
  }
}
