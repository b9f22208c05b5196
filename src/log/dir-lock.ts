/**
 * One coordinator per data directory: two processes appending to the same
 * segments would interleave frames and corrupt the log.
 *
 * On Linux the lock is a Unix socket in the abstract namespace, named from
 * the directory's real path: binding it is atomic, and the kernel releases it
 * when the process dies — however it dies — so there is no stale lock to take
 * over and no race in taking one over. Elsewhere, a pid file created
 * exclusively (a stale one, whose pid no longer runs, is taken over; that
 * takeover is not race-free). Either way the LOCK file in the directory tells
 * operators which pid holds it.
 */

import { createHash } from 'node:crypto';
import { open, readFile, realpath, unlink, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:net';
import { join } from 'node:path';

export class DataDirLockedError extends Error {
  constructor(dir: string, holder: string) {
    super(`data directory ${dir} is in use by another coordinator (${holder}); one coordinator per data directory`);
    this.name = 'DataDirLockedError';
  }
}

export interface DirLock {
  release(): Promise<void>;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

async function holderOf(path: string): Promise<string> {
  const pid = (await readFile(path, 'utf8').catch(() => '')).trim();
  return pid === '' ? 'unknown pid' : `pid ${pid}`;
}

function listenAbstract(name: string): Promise<Server> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen({ path: `\0${name}`, exclusive: true }, () => {
      server.off('error', reject);
      server.unref();
      resolve(server);
    });
  });
}

async function lockWithAbstractSocket(dir: string): Promise<DirLock> {
  const real = await realpath(dir);
  const name = `tcx-data-dir-${createHash('sha256').update(real).digest('hex').slice(0, 32)}`;
  const pidFile = join(dir, 'LOCK');
  let server: Server;
  try {
    server = await listenAbstract(name);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EADDRINUSE') throw new DataDirLockedError(dir, await holderOf(pidFile));
    throw err;
  }
  await writeFile(pidFile, String(process.pid), { mode: 0o600 });
  return {
    release: async () => {
      await unlink(pidFile).catch(() => undefined);
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

async function lockWithPidFile(dir: string): Promise<DirLock> {
  const path = join(dir, 'LOCK');
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      const fh = await open(path, 'wx', 0o600);
      await fh.writeFile(String(process.pid));
      await fh.sync();
      await fh.close();
      return { release: () => unlink(path).catch(() => undefined) };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    const owner = Number((await readFile(path, 'utf8').catch(() => '')).trim());
    if (Number.isInteger(owner) && owner > 0 && owner !== process.pid && alive(owner)) throw new DataDirLockedError(dir, `pid ${owner}`);
    await unlink(path).catch(() => undefined); // stale: its owner is gone
  }
  throw new Error(`could not lock data directory ${dir}`);
}

export function lockDataDir(dir: string): Promise<DirLock> {
  return process.platform === 'linux' ? lockWithAbstractSocket(dir) : lockWithPidFile(dir);
}
