import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

/** Ports handed out by this process, so two servers started back to back never share one. */
const handedOut = new Set<number>();

/**
 * Ports handed out by any test process on this machine, one file each (its owner's pid): a
 * server killed for a moment (a coordinator restarted on its port, a participant crashed and
 * restarted) keeps its port reserved, so another test file's server cannot take it meanwhile.
 * A file whose owner is gone is taken over; ours are removed when this process exits.
 */
const RESERVED_DIR = path.join(os.tmpdir(), 'tcx-test-ports');
const reservedHere: string[] = [];
let exitHook = false;

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Removes the reservations of processes that are gone (workers killed rather than exited). */
export function releaseStalePortReservations(): void {
  let names: string[];
  try {
    names = fs.readdirSync(RESERVED_DIR);
  } catch {
    return;
  }
  for (const name of names) {
    const file = path.join(RESERVED_DIR, name);
    try {
      const owner = Number(fs.readFileSync(file, 'utf8').trim());
      if (!(Number.isInteger(owner) && owner > 0 && alive(owner))) fs.rmSync(file, { force: true });
    } catch {
      // gone meanwhile
    }
  }
}

/** Reserves `port` for this process; false when a live process holds it. */
function reserve(port: number): boolean {
  fs.mkdirSync(RESERVED_DIR, { recursive: true });
  const file = path.join(RESERVED_DIR, String(port));
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      fs.writeFileSync(file, String(process.pid), { flag: 'wx' });
      reservedHere.push(file);
      if (!exitHook) {
        exitHook = true;
        process.once('exit', () => {
          for (const f of reservedHere) fs.rmSync(f, { force: true });
        });
      }
      return true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const owner = Number(fs.readFileSync(file, 'utf8').trim());
      if (Number.isInteger(owner) && owner > 0 && alive(owner)) return false;
      fs.rmSync(file, { force: true }); // its owner is gone
    }
  }
  return false;
}

/**
 * The range the kernel takes source ports of outgoing connections from (and port-0 binds).
 * A listening port picked inside it can be taken by any new connection (a database pool's)
 * in the window before the caller binds it; ports below it are only ever taken by listeners.
 */
function ephemeralLow(): number {
  try {
    const low = Number(fs.readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0]);
    return Number.isInteger(low) && low > 0 ? low : 32768;
  } catch {
    return 32768;
  }
}

const LOWEST = 10_000;
const BELOW_EPHEMERAL = ephemeralLow();

/** Binds `port` (0: any) on `host` and lets it go; the port bound, or 0 when it was taken. */
function probe(host: string, port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.once('error', (err: NodeJS.ErrnoException) => (err.code === 'EADDRINUSE' || err.code === 'EACCES' ? resolve(0) : reject(err)));
    srv.listen({ port, host, exclusive: true }, () => {
      const addr = srv.address();
      const bound = typeof addr === 'object' && addr !== null ? addr.port : 0;
      srv.close((err) => (err ? reject(err) : resolve(bound)));
    });
  });
}

/**
 * A TCP port that is free on 127.0.0.1 right now: a random one below the ephemeral range when
 * there is room (no outgoing connection can take it meanwhile), else one the OS picks. There is
 * still a window before the caller binds it (a listener that is not the suite's), so callers
 * retry on EADDRINUSE. Reserved across the suite's processes until this one exits.
 */
export async function getFreePort(host = '127.0.0.1'): Promise<number> {
  const room = BELOW_EPHEMERAL - LOWEST;
  for (let attempt = 0; attempt < 50; attempt++) {
    const candidate = room >= 1_000 ? LOWEST + Math.floor(Math.random() * room) : 0;
    const port = await probe(host, candidate);
    if (port > 0 && !handedOut.has(port) && reserve(port)) {
      handedOut.add(port);
      return port;
    }
  }
  throw new Error(`getFreePort: could not find a free port on ${host} after 50 attempts`);
}
