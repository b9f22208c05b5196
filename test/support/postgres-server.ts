/**
 * A real PostgreSQL server started from the binaries on this machine, on a free port in a
 * temp dir, for tests that need a participant they can crash (SIGKILL) and restart.
 */
import { execFile, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import pg from 'pg';
import { getFreePort } from './free-port.js';
import { SpawnedProcess, isRoot, makeTempDir, postgresUserIds, registerCleanup, removeDirSync } from './spawned-process.js';
import { SpawnedServer } from './spawned-server.js';

const execFileP = promisify(execFile);

// ---------------------------------------------------------------------------------------
// Postgres
// ---------------------------------------------------------------------------------------

function hasServerBinaries(dir: string): boolean {
  return fs.existsSync(path.join(dir, 'postgres')) && fs.existsSync(path.join(dir, 'initdb'));
}

let binDirCache: string | null | undefined;
/** Directory holding `postgres` and `initdb`: pg_config --bindir, else /usr/lib/postgresql/<newest>/bin. */
export function findPostgresBinDir(): string | null {
  if (binDirCache !== undefined) return binDirCache;
  const candidates: string[] = [];
  if (process.env.TCX_PG_BINDIR) candidates.push(process.env.TCX_PG_BINDIR);
  try {
    candidates.push(execFileSync('pg_config', ['--bindir'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim());
  } catch {
    // no pg_config
  }
  try {
    const versions = fs
      .readdirSync('/usr/lib/postgresql')
      .filter((v) => /^\d+(\.\d+)?$/.test(v))
      .sort((a, b) => Number(b) - Number(a));
    for (const v of versions) candidates.push(path.join('/usr/lib/postgresql', v, 'bin'));
  } catch {
    // no Debian-style layout
  }
  binDirCache = candidates.find((d) => d !== '' && hasServerBinaries(d)) ?? null;
  return binDirCache;
}

/** Owner for Postgres files/processes: the `postgres` user when we are root, else ourselves. */
function pgOwner(): { uid: number; gid: number } | undefined {
  return isRoot() ? postgresUserIds() : undefined;
}

const TEMPLATE_ENV = 'TCX_PG_TEMPLATE_DIR';
let templatePromise: Promise<string> | undefined;

/**
 * A freshly initdb'd data directory, made once per process (and inherited through the
 * environment by child processes such as vitest workers) and copied for every server.
 */
function templateDataDir(binDir: string): Promise<string> {
  templatePromise ??= (async () => {
    const inherited = process.env[TEMPLATE_ENV];
    if (inherited && fs.existsSync(path.join(inherited, 'data', 'PG_VERSION'))) {
      return path.join(inherited, 'data');
    }
    const owner = pgOwner();
    const dir = makeTempDir('pg-template-', owner);
    registerCleanup(() => removeDirSync(dir));
    const dataDir = path.join(dir, 'data');
    const args = ['-D', dataDir, '-U', 'postgres', '-A', 'trust', '-E', 'UTF8', '--locale=C', '--no-sync'];
    try {
      await execFileP(path.join(binDir, 'initdb'), args, {
        timeout: 120_000,
        killSignal: 'SIGKILL',
        cwd: dir,
        env: { ...process.env, LC_ALL: 'C' },
        ...(owner ? { uid: owner.uid, gid: owner.gid } : {}),
      });
    } catch (err) {
      const e = err as { stdout?: string; stderr?: string; message?: string };
      throw new Error(`initdb failed: ${e.message ?? String(err)}\n${e.stdout ?? ''}\n${e.stderr ?? ''}`);
    }
    process.env[TEMPLATE_ENV] = dir;
    return dataDir;
  })();
  // A failed attempt should not poison later ones.
  templatePromise.catch(() => {
    templatePromise = undefined;
  });
  return templatePromise;
}

export interface PostgresServerOptions {
  /** max_prepared_transactions; default 100. 0 is allowed (to test that such a server is refused). */
  maxPreparedTransactions?: number;
  /** Used in the temp dir name and error messages. */
  name?: string;
  /**
   * Durable as a production server is (fsync, synchronous_commit and full_page_writes on):
   * for benchmarks. Tests run without, which is faster and loses nothing they check.
   */
  durable?: boolean;
}

const quoteIdent = (s: string): string => `"${s.replace(/"/g, '""')}"`;

export class PostgresServer extends SpawnedServer {
  private constructor(
    name: string,
    readonly binDir: string,
    /** Temp dir holding data/, sock/ and postgres.log. */
    dir: string,
    port: number,
    readonly maxPreparedTransactions: number,
    readonly durable: boolean,
  ) {
    // SIGINT, the fast shutdown: rolls back open transactions, keeps prepared ones.
    super('PostgresServer', name, dir, port, 'SIGINT');
  }

  /** True when this machine has Postgres server binaries we can start. */
  static available(): boolean {
    return findPostgresBinDir() !== null;
  }

  static async start(opts: PostgresServerOptions = {}): Promise<PostgresServer> {
    const binDir = findPostgresBinDir();
    if (!binDir) {
      throw new Error(
        'PostgresServer: no Postgres server binaries (postgres, initdb) found via `pg_config --bindir`, ' +
          '/usr/lib/postgresql/*/bin or $TCX_PG_BINDIR; install the `postgresql` package',
      );
    }
    const max = opts.maxPreparedTransactions ?? 100;
    const name = (opts.name ?? 'pg').replace(/[^A-Za-z0-9_-]/g, '_');
    const template = await templateDataDir(binDir);
    const owner = pgOwner();
    const dir = makeTempDir(`pg-${name}-`, owner);
    try {
      await execFileP('cp', ['-a', template, path.join(dir, 'data')], { timeout: 60_000, killSignal: 'SIGKILL' });
      fs.mkdirSync(path.join(dir, 'sock'));
      if (owner) fs.chownSync(path.join(dir, 'sock'), owner.uid, owner.gid);
    } catch (err) {
      removeDirSync(dir);
      throw err;
    }
    const server = new PostgresServer(name, binDir, dir, await getFreePort(), max, opts.durable === true);
    await server.firstLaunch(/could not (bind|create listen)|Address already in use/i);
    return server;
  }

  get dataDir(): string {
    return path.join(this.dir, 'data');
  }

  get logFile(): string {
    return path.join(this.dir, 'postgres.log');
  }

  url(database = 'postgres'): string {
    return `postgres://postgres@${this.host}:${this.port}/${encodeURIComponent(database)}`;
  }

  /** Creates a database and returns its URL. */
  async createDatabase(name: string): Promise<string> {
    const client = new pg.Client({ connectionString: this.url(), connectionTimeoutMillis: 5_000 });
    client.on('error', () => undefined);
    await client.connect();
    try {
      await client.query(`CREATE DATABASE ${quoteIdent(name)}`);
    } finally {
      await client.end().catch(() => undefined);
    }
    return this.url(name);
  }

  protected async launch(): Promise<void> {
    const owner = pgOwner();
    const args = [
      '-D', this.dataDir,
      '-p', String(this.port),
      '-k', path.join(this.dir, 'sock'),
      '-c', 'listen_addresses=127.0.0.1',
      '-c', `max_prepared_transactions=${this.maxPreparedTransactions}`,
      '-c', 'max_connections=200',
      ...(this.durable
        ? ['-c', 'fsync=on', '-c', 'synchronous_commit=on', '-c', 'full_page_writes=on']
        : ['-c', 'fsync=off', '-c', 'synchronous_commit=off', '-c', 'full_page_writes=off']),
      '-c', 'shared_buffers=32MB',
    ];
    fs.appendFileSync(this.logFile, `--- tcx: starting postgres on port ${this.port} at ${new Date().toISOString()}\n`);
    const proc = new SpawnedProcess(`postgres ${this.name}:${this.port}`, path.join(this.binDir, 'postgres'), args, this.logFile, {
      cwd: this.dir,
      env: { ...process.env, LC_ALL: 'C' },
      ...(owner ? { uid: owner.uid, gid: owner.gid } : {}),
    });
    await this.startProcess(proc, async () => {
      const client = new pg.Client({ host: this.host, port: this.port, user: 'postgres', database: 'postgres', connectionTimeoutMillis: 2_000 });
      client.on('error', () => undefined);
      try {
        await client.connect();
        await client.query('SELECT 1');
        return true;
      } finally {
        await client.end().catch(() => undefined);
      }
    }, 60_000);
  }
}
