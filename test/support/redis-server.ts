/**
 * A real Redis server started from `redis-server` on this machine, on a free port with its
 * own dir, AOF on with fsync always by default, for tests that kill and restart it.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { getFreePort } from './free-port.js';
import { SpawnedProcess, makeTempDir } from './spawned-process.js';
import { SpawnedServer } from './spawned-server.js';

let binaryCache: string | null | undefined;
/** Path of redis-server: $TCX_REDIS_SERVER, /usr/bin/redis-server, /usr/local/bin/redis-server, or on PATH. */
export function findRedisServerBinary(): string | null {
  if (binaryCache !== undefined) return binaryCache;
  const candidates = [process.env.TCX_REDIS_SERVER, '/usr/bin/redis-server', '/usr/local/bin/redis-server'];
  binaryCache = candidates.find((c): c is string => !!c && fs.existsSync(c)) ?? null;
  if (!binaryCache) {
    try {
      const found = execFileSync('sh', ['-c', 'command -v redis-server'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
      binaryCache = found !== '' ? found : null;
    } catch {
      binaryCache = null;
    }
  }
  return binaryCache;
}

/** One PING over a raw socket (after AUTH when a password is set): resolves its reply line (e.g. "+PONG", "-LOADING ..."). */
function ping(host: string, port: number, timeoutMs: number, password?: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const sock = net.connect({ host, port });
    let buf = '';
    const done = (err: Error | null, line?: string): void => {
      sock.destroy();
      if (err) reject(err);
      else resolve(line ?? '');
    };
    sock.setTimeout(timeoutMs, () => done(new Error(`PING timed out after ${timeoutMs} ms`)));
    sock.once('error', (err) => done(err));
    const auth = password === undefined ? '' : `*2\r\n$4\r\nAUTH\r\n$${Buffer.byteLength(password)}\r\n${password}\r\n`;
    sock.once('connect', () => sock.write(`${auth}PING\r\n`));
    sock.on('data', (chunk: Buffer) => {
      buf += chunk.toString('utf8');
      const lines = buf.split('\r\n');
      const wanted = password === undefined ? 1 : 2; // the AUTH reply, then PING's
      if (lines.length > wanted) done(null, password !== undefined && !lines[0]?.startsWith('+') ? lines[0] : lines[wanted - 1]);
    });
    sock.once('close', () => done(new Error('connection closed before a reply')));
  });
}

export interface RedisServerOptions {
  /** appendonly yes (with appendfsync always); default true. */
  appendonly?: boolean;
  /** Used in the temp dir name and error messages. */
  name?: string;
  /** requirepass: clients must AUTH with it (give it in the URL, `redis://:password@host:port`). */
  password?: string;
}

export class RedisServer extends SpawnedServer {
  private constructor(
    name: string,
    readonly binary: string,
    /** Temp dir: the server's --dir (AOF lives here) and redis.log. */
    dir: string,
    port: number,
    readonly appendonly: boolean,
    readonly password: string | undefined,
  ) {
    // SIGTERM: Redis flushes and fsyncs the AOF, then exits.
    super('RedisServer', name, dir, port, 'SIGTERM');
  }

  static available(): boolean {
    return findRedisServerBinary() !== null;
  }

  static async start(opts: RedisServerOptions = {}): Promise<RedisServer> {
    const binary = findRedisServerBinary();
    if (!binary) throw new Error('RedisServer: redis-server not found; install the `redis-server` package');
    const name = (opts.name ?? 'redis').replace(/[^A-Za-z0-9_-]/g, '_');
    const server = new RedisServer(name, binary, makeTempDir(`${name}-`), await getFreePort(), opts.appendonly ?? true, opts.password);
    await server.firstLaunch(/Address already in use|Could not create server TCP listening socket/i);
    return server;
  }

  get url(): string {
    const auth = this.password === undefined ? '' : `:${encodeURIComponent(this.password)}@`;
    return `redis://${auth}${this.host}:${this.port}`;
  }

  get logFile(): string {
    return path.join(this.dir, 'redis.log');
  }

  protected async launch(): Promise<void> {
    const args = [
      '--port', String(this.port),
      '--bind', '127.0.0.1',
      '--appendonly', this.appendonly ? 'yes' : 'no',
      '--appendfsync', 'always',
      '--dir', this.dir,
      '--save', '',
      '--daemonize', 'no',
      ...(this.password === undefined ? [] : ['--requirepass', this.password]),
    ];
    fs.appendFileSync(this.logFile, `--- tcx: starting redis on port ${this.port} at ${new Date().toISOString()}\n`);
    const proc = new SpawnedProcess(`redis ${this.name}:${this.port}`, this.binary, args, this.logFile, { cwd: this.dir });
    // -LOADING while the AOF is replayed.
    await this.startProcess(proc, async () => {
      const reply = await ping(this.host, this.port, 1_000, this.password);
      return reply === '+PONG' || reply;
    }, 30_000);
  }
}
