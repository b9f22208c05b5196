/**
 * A real MariaDB server started from the binaries on this machine (`mariadb-install-db`,
 * `mariadbd`), on a free port in a temp dir, for tests that need a participant they can crash
 * (SIGKILL) and restart. The system instance (port 3306, /run/mysqld) is left alone: the server
 * reads no option file (--no-defaults) and has its own data dir, socket and pid file.
 *
 * Durable as production: innodb_flush_log_at_trx_commit=1 unless asked otherwise. A data dir is
 * made once per process (and handed to child processes through the environment) and copied for
 * every server. It holds a root account without a password (reachable on 127.0.0.1 only) and a
 * test user with a password and every privilege (`url(db)`).
 */
import { execFile, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import mysql from 'mysql2/promise';
import { getFreePort } from './free-port.js';
import { SpawnedProcess, isRoot, makeTempDir, registerCleanup, removeDirSync } from './spawned-process.js';
import { SpawnedServer } from './spawned-server.js';

const execFileP = promisify(execFile);

export const TEST_USER = 'tcx';
export const TEST_PASSWORD = 'tcx-Secret-9f27';

interface Binaries {
  readonly mariadbd: string;
  readonly installDb: string;
}

function onPath(name: string): string | null {
  try {
    const found = execFileSync('sh', ['-c', `command -v ${name}`], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
    return found !== '' ? found : null;
  } catch {
    return null;
  }
}

function firstExisting(candidates: (string | undefined)[], names: string[]): string | null {
  const found = candidates.find((c): c is string => c !== undefined && c !== '' && fs.existsSync(c));
  if (found !== undefined) return found;
  for (const name of names) {
    const p = onPath(name);
    if (p !== null) return p;
  }
  return null;
}

let binariesCache: Binaries | null | undefined;
/** mariadbd and mariadb-install-db: $TCX_MARIADBD / $TCX_MARIADB_INSTALL_DB, the Debian paths, else on PATH. */
export function findMariaDbBinaries(): Binaries | null {
  if (binariesCache !== undefined) return binariesCache;
  const mariadbd = firstExisting([process.env.TCX_MARIADBD, '/usr/sbin/mariadbd', '/usr/sbin/mysqld'], ['mariadbd', 'mysqld']);
  const installDb = firstExisting(
    [process.env.TCX_MARIADB_INSTALL_DB, '/usr/bin/mariadb-install-db', '/usr/bin/mysql_install_db'],
    ['mariadb-install-db', 'mysql_install_db'],
  );
  binariesCache = mariadbd !== null && installDb !== null ? { mariadbd, installDb } : null;
  return binariesCache;
}

/** mariadbd refuses to run as root unless told to. */
const userArgs = (): string[] => (isRoot() ? ['--user=root'] : []);

const quoteIdent = (s: string): string => `\`${s.replace(/`/g, '``')}\``;
const quoteString = (s: string): string => `'${s.replace(/\\/g, '\\\\').replace(/'/g, "\\'")}'`;

/** Sizes that keep a fresh data dir small and the start fast (the defaults make a 100 MB redo log). */
const SMALL = ['--innodb-log-file-size=8M', '--innodb-buffer-pool-size=32M'];

const TEMPLATE_ENV = 'TCX_MARIADB_TEMPLATE_DIR';
let templatePromise: Promise<string> | undefined;

/** A data dir made by mariadb-install-db once per process, with the test user in it. */
function templateDataDir(bins: Binaries): Promise<string> {
  templatePromise ??= (async () => {
    const inherited = process.env[TEMPLATE_ENV];
    if (inherited && fs.existsSync(path.join(inherited, 'data', 'mysql'))) return path.join(inherited, 'data');
    const dir = makeTempDir('mariadb-template-');
    registerCleanup(() => removeDirSync(dir));
    const dataDir = path.join(dir, 'data');
    const extra = path.join(dir, 'init.sql');
    fs.writeFileSync(
      extra,
      // Bootstrap runs without grant tables loaded; FLUSH PRIVILEGES loads them so accounts can be made.
      'FLUSH PRIVILEGES;\n' +
        `CREATE USER ${quoteString(TEST_USER)}@'%' IDENTIFIED BY ${quoteString(TEST_PASSWORD)};\n` +
        `GRANT ALL PRIVILEGES ON *.* TO ${quoteString(TEST_USER)}@'%' WITH GRANT OPTION;\n`,
    );
    const args = [
      '--no-defaults',
      `--datadir=${dataDir}`,
      '--auth-root-authentication-method=normal',
      '--skip-test-db',
      '--skip-name-resolve',
      `--extra-file=${extra}`,
      // Its own temp dir: a starting server deletes the #sql* files it finds there (another's, in a shared /tmp).
      `--tmpdir=${dir}`,
      ...userArgs(),
      ...SMALL,
    ];
    try {
      await execFileP(bins.installDb, args, { timeout: 120_000, killSignal: 'SIGKILL', cwd: dir, env: { ...process.env, LC_ALL: 'C' } });
    } catch (err) {
      const e = err as { stdout?: string; stderr?: string; message?: string };
      throw new Error(`mariadb-install-db failed: ${e.message ?? String(err)}\n${e.stdout ?? ''}\n${e.stderr ?? ''}`);
    }
    process.env[TEMPLATE_ENV] = dir;
    return dataDir;
  })();
  templatePromise.catch(() => {
    templatePromise = undefined;
  });
  return templatePromise;
}

export interface MariaDbServerOptions {
  /** Used in the temp dir name and error messages. */
  name?: string;
  /** innodb_flush_log_at_trx_commit at start; default 1 (durable). */
  flushLogAtTrxCommit?: 0 | 1 | 2 | 3;
  /** Binary log on (log_bin, sync_binlog=1); default off. */
  binlog?: boolean;
}

export class MariaDbServer extends SpawnedServer {
  private constructor(
    name: string,
    readonly binaries: Binaries,
    /** Temp dir holding data/, the socket, the pid file and mariadb.log. */
    dir: string,
    port: number,
    private readonly options: MariaDbServerOptions,
  ) {
    // SIGTERM: open transactions roll back, prepared XA transactions stay.
    super('MariaDbServer', name, dir, port, 'SIGTERM');
  }

  static available(): boolean {
    return findMariaDbBinaries() !== null;
  }

  static async start(opts: MariaDbServerOptions = {}): Promise<MariaDbServer> {
    const bins = findMariaDbBinaries();
    if (!bins) {
      throw new Error(
        'MariaDbServer: mariadbd / mariadb-install-db not found (/usr/sbin/mariadbd, /usr/bin/mariadb-install-db, PATH, ' +
          '$TCX_MARIADBD, $TCX_MARIADB_INSTALL_DB); install the `mariadb-server` package',
      );
    }
    const name = (opts.name ?? 'mariadb').replace(/[^A-Za-z0-9_-]/g, '_');
    const template = await templateDataDir(bins);
    const dir = makeTempDir(`mariadb-${name}-`);
    try {
      await execFileP('cp', ['-a', template, path.join(dir, 'data')], { timeout: 60_000, killSignal: 'SIGKILL' });
    } catch (err) {
      removeDirSync(dir);
      throw err;
    }
    const server = new MariaDbServer(name, bins, dir, await getFreePort(), opts);
    await server.firstLaunch(/Address already in use|Bind on TCP\/IP port/i);
    return server;
  }

  get dataDir(): string {
    return path.join(this.dir, 'data');
  }

  get logFile(): string {
    return path.join(this.dir, 'mariadb.log');
  }

  /** The test user's URL (password included) for a database. */
  url(database = 'mysql', user = TEST_USER, password = TEST_PASSWORD): string {
    return `mysql://${encodeURIComponent(user)}:${encodeURIComponent(password)}@${this.host}:${this.port}/${encodeURIComponent(database)}`;
  }

  /** Creates a database (if missing) and returns its URL for the test user. */
  async createDatabase(name: string): Promise<string> {
    await this.query(`CREATE DATABASE IF NOT EXISTS ${quoteIdent(name)}`);
    return this.url(name);
  }

  /** Creates a user with a password on every host (privileges are the caller's to grant). */
  async createUser(user: string, password: string): Promise<void> {
    await this.query(`CREATE USER IF NOT EXISTS ${quoteString(user)}@'%' IDENTIFIED BY ${quoteString(password)}`);
  }

  /** Runs one statement as root (on a connection of its own) and returns its rows or result header. */
  async query<T = unknown>(sql: string, params?: unknown[], database?: string): Promise<T> {
    return this.withRoot(async (c) => (await c.query(sql, params))[0] as T, database);
  }

  /** A root connection for the callback's duration. */
  async withRoot<T>(fn: (c: mysql.Connection) => Promise<T>, database?: string): Promise<T> {
    const c = await mysql.createConnection({
      host: this.host,
      port: this.port,
      user: 'root',
      connectTimeout: 5_000,
      supportBigNumbers: true,
      bigNumberStrings: true,
      ...(database === undefined ? {} : { database }),
    });
    c.on('error', () => undefined);
    try {
      return await fn(c);
    } finally {
      await c.end().catch(() => c.destroy());
    }
  }

  protected async launch(): Promise<void> {
    const args = [
      '--no-defaults',
      `--datadir=${this.dataDir}`,
      `--port=${this.port}`,
      '--bind-address=127.0.0.1',
      `--socket=${path.join(this.dir, 'mysqld.sock')}`,
      `--pid-file=${path.join(this.dir, 'mysqld.pid')}`,
      `--tmpdir=${this.dir}`,
      '--skip-name-resolve',
      '--skip-slave-start',
      '--character-set-server=utf8mb4',
      '--max-connections=300',
      '--loose-feedback=OFF',
      `--innodb-flush-log-at-trx-commit=${this.options.flushLogAtTrxCommit ?? 1}`,
      ...(this.options.binlog === true ? [`--log-bin=${path.join(this.dir, 'data', 'binlog')}`, '--server-id=1', '--sync-binlog=1'] : []),
      ...userArgs(),
      ...SMALL,
    ];
    fs.appendFileSync(this.logFile, `--- tcx: starting mariadbd on port ${this.port} at ${new Date().toISOString()}\n`);
    const proc = new SpawnedProcess(`mariadbd ${this.name}:${this.port}`, this.binaries.mariadbd, args, this.logFile, {
      cwd: this.dir,
      env: { ...process.env, LC_ALL: 'C' },
    });
    await this.startProcess(proc, async () => {
      await this.query('SELECT 1');
      return true;
    }, 60_000);
  }
}
