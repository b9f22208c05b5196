/**
 * A real PostgreSQL server started from the binaries on this machine, on a free port in a
 * temp dir, for tests that need a participant they can crash (SIGKILL) and restart.
 *
 * Also exports the small process/temp-dir helpers shared with redis-server.ts.
 */
import { execFile, execFileSync, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import pg from 'pg';
import { getFreePort } from './free-port.js';

const execFileP = promisify(execFile);

// ---------------------------------------------------------------------------------------
// Shared helpers: temp dirs, spawned process groups, cleanup on exit, bounded waits.
// ---------------------------------------------------------------------------------------

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

interface CleanupEntry {
  /** Synchronous, best effort: SIGKILL whatever is still running, remove dirs. */
  killSync(): void;
}

const liveEntries = new Set<CleanupEntry>();
let exitHooksInstalled = false;

function cleanupAllSync(): void {
  for (const e of liveEntries) {
    try {
      e.killSync();
    } catch {
      // best effort during exit
    }
  }
  liveEntries.clear();
}

function installExitHooks(): void {
  if (exitHooksInstalled) return;
  exitHooksInstalled = true;
  // Prepend: other handlers (vitest's) call process.exit() from inside theirs, which skips
  // every listener registered after them.
  process.prependListener('exit', cleanupAllSync);
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    const onSignal = (): void => {
      cleanupAllSync();
      // If nobody else handles the signal, restore the default behaviour (terminate).
      if (process.listenerCount(sig) === 1) {
        process.removeListener(sig, onSignal);
        process.kill(process.pid, sig);
      }
    };
    process.prependListener(sig, onSignal);
  }
  // A vitest fork worker whose parent died is orphaned and does not exit by itself: when its
  // IPC channel to the parent closes, kill the servers it started.
  if (typeof process.send === 'function') process.once('disconnect', cleanupAllSync);
}

/** Registers a cleanup action that runs (synchronously) if the process exits or is signalled. */
export function registerCleanup(killSync: () => void): () => void {
  installExitHooks();
  const entry: CleanupEntry = { killSync };
  liveEntries.add(entry);
  return () => {
    liveEntries.delete(entry);
  };
}

export const isRoot = (): boolean => typeof process.getuid === 'function' && process.getuid() === 0;

let postgresIds: { uid: number; gid: number } | undefined;
/** uid/gid of the `postgres` OS user (needed when we run as root: Postgres refuses root). */
export function postgresUserIds(): { uid: number; gid: number } {
  if (postgresIds) return postgresIds;
  try {
    const uid = Number(execFileSync('id', ['-u', 'postgres'], { encoding: 'utf8' }).trim());
    const gid = Number(execFileSync('id', ['-g', 'postgres'], { encoding: 'utf8' }).trim());
    if (!Number.isInteger(uid) || !Number.isInteger(gid)) throw new Error('non-numeric id output');
    postgresIds = { uid, gid };
    return postgresIds;
  } catch (err) {
    throw new Error(
      'running as root, but there is no `postgres` OS user to run the Postgres server as ' +
        `(create one, e.g. \`useradd --system postgres\`): ${String(err)}`,
    );
  }
}

/** Creates os.tmpdir()/tcx-<prefix>XXXXXX, owned by `owner` when given (we must be root). */
export function makeTempDir(prefix: string, owner?: { uid: number; gid: number }): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `tcx-${prefix}`));
  if (owner) fs.chownSync(dir, owner.uid, owner.gid);
  return dir;
}

export function removeDirSync(dir: string): void {
  try {
    fs.rmSync(dir, { recursive: true, force: true, maxRetries: 5, retryDelay: 50 });
  } catch {
    // best effort
  }
}

/** Last `lines` lines of a log file, for error messages. */
export function logTail(file: string, lines = 40): string {
  try {
    const text = fs.readFileSync(file, 'utf8');
    const all = text.trimEnd().split('\n');
    return all.slice(-lines).join('\n');
  } catch (err) {
    return `(could not read ${file}: ${String(err)})`;
  }
}

interface ProcInfo {
  pid: number;
  ppid: number;
  pgrp: number;
  live: boolean; // not a zombie
}

/** Snapshot of all processes from /proc (Linux); undefined when /proc is unavailable. */
function readProcTable(): ProcInfo[] | undefined {
  let entries: string[];
  try {
    entries = fs.readdirSync('/proc');
  } catch {
    return undefined;
  }
  const out: ProcInfo[] = [];
  for (const name of entries) {
    if (!/^\d+$/.test(name)) continue;
    let stat: string;
    try {
      stat = fs.readFileSync(`/proc/${name}/stat`, 'utf8');
    } catch {
      continue; // exited meanwhile
    }
    // "pid (comm) state ppid pgrp ..." — comm may contain spaces and parentheses.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const state = fields[0];
    out.push({ pid: Number(name), ppid: Number(fields[1]), pgrp: Number(fields[2]), live: state !== 'Z' && state !== 'X' });
  }
  return out;
}

/** `root` and all its live descendants (Postgres backends setsid(), so a group kill is not enough). */
function processTree(root: number): number[] {
  const table = readProcTable();
  if (!table) return [root];
  const children = new Map<number, number[]>();
  for (const p of table) {
    if (!p.live) continue;
    const list = children.get(p.ppid) ?? [];
    list.push(p.pid);
    children.set(p.ppid, list);
  }
  const out: number[] = [root];
  for (let i = 0; i < out.length; i++) {
    for (const c of children.get(out[i] ?? -1) ?? []) if (!out.includes(c)) out.push(c);
  }
  return out;
}

/** Which of `pids`, or members of process group `pgid`, are still alive (zombies count as dead). */
function stillAlive(pids: number[], pgid: number): number[] {
  const table = readProcTable();
  if (!table) {
    return [pgid, ...pids].filter((p) => {
      try {
        process.kill(p, 0);
        return true;
      } catch {
        return false;
      }
    });
  }
  const wanted = new Set(pids);
  return table.filter((p) => p.live && (wanted.has(p.pid) || p.pgrp === pgid)).map((p) => p.pid);
}

function signalPid(pid: number, signal: NodeJS.Signals | 0): void {
  try {
    process.kill(pid, signal);
  } catch {
    // already gone
  }
}

export function signalGroup(pgid: number, signal: NodeJS.Signals): void {
  signalPid(-pgid, signal);
}

/**
 * SIGKILL `root`, every descendant and `root`'s process group, all at once (the root is
 * SIGSTOPped first so it cannot fork while we collect its children). Returns the pids hit.
 */
function killTreeSync(root: number): number[] {
  signalPid(root, 'SIGSTOP');
  const pids = processTree(root);
  for (const pid of pids.slice(1)) {
    signalPid(pid, 'SIGKILL');
    signalGroup(pid, 'SIGKILL'); // a child that setsid()'d and forked
  }
  signalGroup(root, 'SIGKILL');
  signalPid(root, 'SIGKILL');
  return pids;
}

/**
 * A server process spawned detached (its own process group, so SIGKILL of the group takes
 * its children too), with stdout/stderr appended to a log file.
 */
export class SpawnedProcess {
  readonly child: ChildProcess;
  readonly pid: number;
  private exitInfo: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  private spawnError: Error | undefined;
  private readonly exited: Promise<void>;

  constructor(
    readonly name: string,
    command: string,
    args: string[],
    readonly logFile: string,
    options: { uid?: number; gid?: number; cwd?: string; env?: NodeJS.ProcessEnv } = {},
  ) {
    const fd = fs.openSync(logFile, 'a');
    try {
      this.child = spawn(command, args, {
        detached: true,
        stdio: ['ignore', fd, fd],
        ...(options.uid !== undefined ? { uid: options.uid } : {}),
        ...(options.gid !== undefined ? { gid: options.gid } : {}),
        ...(options.cwd !== undefined ? { cwd: options.cwd } : {}),
        env: options.env ?? process.env,
      });
    } finally {
      fs.closeSync(fd);
    }
    this.exited = new Promise<void>((resolve) => {
      this.child.once('exit', (code, signal) => {
        this.exitInfo = { code, signal };
        resolve();
      });
      this.child.once('error', (err) => {
        this.spawnError = err;
        if (this.child.pid === undefined) {
          this.exitInfo = { code: null, signal: null };
          resolve();
        }
      });
    });
    // Never keep the test process alive because of a server; the exit hook kills it.
    this.child.unref();
    this.pid = this.child.pid ?? -1;
  }

  get running(): boolean {
    return this.exitInfo === undefined && this.pid > 0;
  }

  describeExit(): string {
    if (this.spawnError) return `failed to spawn: ${this.spawnError.message}`;
    if (!this.exitInfo) return 'still running';
    return `exited with code ${String(this.exitInfo.code)} signal ${String(this.exitInfo.signal)}`;
  }

  /** Resolves true if the process exited within `ms`. */
  async waitExit(ms: number): Promise<boolean> {
    if (!this.running) return true;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<false>((resolve) => {
      timer = setTimeout(() => resolve(false), ms);
    });
    const res = await Promise.race([this.exited.then(() => true as const), timeout]);
    clearTimeout(timer);
    return res;
  }

  /**
   * SIGKILL the process, all its descendants and its process group (a crash), and wait
   * (bounded) until none of them is alive.
   */
  async killGroup(ms = 10_000): Promise<void> {
    if (this.pid <= 0) return;
    const deadline = Date.now() + ms;
    const pids = this.running ? killTreeSync(this.pid) : [this.pid];
    await this.waitExit(ms);
    for (;;) {
      const alive = stillAlive(pids, this.pid);
      if (alive.length === 0) return;
      if (Date.now() > deadline) {
        throw new Error(`${this.name}: processes ${alive.join(', ')} still alive ${ms} ms after SIGKILL`);
      }
      for (const pid of alive) signalPid(pid, 'SIGKILL');
      await sleep(20);
    }
  }

  /** Sends `signal` to the leader; if it has not exited after `ms`, SIGKILLs the group. */
  async terminate(signal: NodeJS.Signals, ms: number): Promise<void> {
    if (this.running) {
      try {
        process.kill(this.pid, signal);
      } catch {
        // already gone
      }
      await this.waitExit(ms);
    }
    // Also reaps stragglers (and is a no-op when the graceful shutdown worked).
    await this.killGroup();
  }

  killGroupSync(): void {
    if (this.running) killTreeSync(this.pid);
  }
}

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

export class PostgresServer {
  readonly host = '127.0.0.1';
  private proc: SpawnedProcess | undefined;
  private unregister: () => void;
  private destroyed = false;

  private constructor(
    readonly name: string,
    readonly binDir: string,
    /** Temp dir holding data/, sock/ and postgres.log. */
    readonly dir: string,
    private portValue: number,
    readonly maxPreparedTransactions: number,
    readonly durable: boolean,
  ) {
    this.unregister = registerCleanup(() => {
      this.proc?.killGroupSync();
      removeDirSync(this.dir);
    });
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
    let server: PostgresServer | undefined;
    try {
      await execFileP('cp', ['-a', template, path.join(dir, 'data')], { timeout: 60_000, killSignal: 'SIGKILL' });
      fs.mkdirSync(path.join(dir, 'sock'));
      if (owner) fs.chownSync(path.join(dir, 'sock'), owner.uid, owner.gid);
      server = new PostgresServer(name, binDir, dir, await getFreePort(), max, opts.durable === true);
      // The free port may be taken between probing and binding: retry on a new port.
      for (let attempt = 1; ; attempt++) {
        try {
          await server.launch();
          return server;
        } catch (err) {
          const tail = logTail(server.logFile, 20);
          if (attempt < 4 && /could not (bind|create listen)|Address already in use/i.test(tail)) {
            server.portValue = await getFreePort();
            continue;
          }
          throw err;
        }
      }
    } catch (err) {
      if (server) await server.destroy().catch(() => undefined);
      else removeDirSync(dir);
      throw err;
    }
  }

  get port(): number {
    return this.portValue;
  }

  get dataDir(): string {
    return path.join(this.dir, 'data');
  }

  get logFile(): string {
    return path.join(this.dir, 'postgres.log');
  }

  /** Pid of the postmaster, or undefined when it is not running. */
  get pid(): number | undefined {
    return this.proc?.running ? this.proc.pid : undefined;
  }

  get running(): boolean {
    return this.proc?.running ?? false;
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

  logTail(lines = 40): string {
    return logTail(this.logFile, lines);
  }

  /** Fast shutdown (SIGINT): rolls back open transactions, keeps prepared ones. */
  async stop(): Promise<void> {
    const proc = this.proc;
    if (!proc) return;
    await proc.terminate('SIGINT', 30_000);
    this.proc = undefined;
  }

  /** Simulates a crash: SIGKILL the postmaster and every backend. */
  async kill(): Promise<void> {
    const proc = this.proc;
    if (!proc) return;
    await proc.killGroup();
    this.proc = undefined;
  }

  /** Starts again on the same port and data dir (crash recovery runs if it was killed). */
  async restart(): Promise<void> {
    if (this.destroyed) throw new Error(`PostgresServer ${this.name}: restart() after destroy()`);
    await this.stop();
    await this.launch();
  }

  async destroy(): Promise<void> {
    if (this.destroyed) return;
    this.destroyed = true;
    try {
      await this.stop();
    } finally {
      this.unregister();
      removeDirSync(this.dir);
    }
  }

  private async launch(): Promise<void> {
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
    this.proc = proc;
    try {
      await this.waitReady(proc, 60_000);
    } catch (err) {
      await proc.killGroup().catch(() => undefined);
      this.proc = undefined;
      throw err;
    }
  }

  private async waitReady(proc: SpawnedProcess, ms: number): Promise<void> {
    const deadline = Date.now() + ms;
    let lastError = '';
    while (Date.now() < deadline) {
      if (!proc.running) {
        throw new Error(
          `PostgresServer ${this.name}: postgres on port ${this.port} ${proc.describeExit()} before accepting connections; ` +
            `log ${this.logFile}:\n${this.logTail()}`,
        );
      }
      const client = new pg.Client({ host: this.host, port: this.port, user: 'postgres', database: 'postgres', connectionTimeoutMillis: 2_000 });
      client.on('error', () => undefined);
      try {
        await client.connect();
        await client.query('SELECT 1');
        return;
      } catch (err) {
        lastError = err instanceof Error ? err.message : String(err);
      } finally {
        await client.end().catch(() => undefined);
      }
      await sleep(50);
    }
    throw new Error(
      `PostgresServer ${this.name}: postgres on port ${this.port} did not accept connections within ${ms} ms ` +
        `(last error: ${lastError}); log ${this.logFile}:\n${this.logTail()}`,
    );
  }
}
