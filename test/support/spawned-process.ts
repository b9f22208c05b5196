/**
 * Processes the test suite starts (servers, mostly): temp dirs, spawned process groups that
 * are SIGKILLed when the test process exits, bounded waits, log tails. Shared by every
 * server harness in test/support.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

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
