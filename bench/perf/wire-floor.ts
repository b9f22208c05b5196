/**
 * Starts the wire floor (wire-floor-process.ts) in its own process, the way the coordinator
 * runs in the bench: the load reaches it over loopback HTTP from the bench's process.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Pool } from 'undici';
import { firstJsonLine } from './child-handshake.js';
import { requestJson, type JsonService } from './coordinator-child.js';

const PROCESS_JS = path.join(path.dirname(fileURLToPath(import.meta.url)), 'wire-floor-process.js');

export class WireFloorChild implements JsonService {
  readonly #child: ChildProcess;
  readonly #pool: Pool;
  readonly #dir: string;

  private constructor(child: ChildProcess, port: number, dir: string, connections: number) {
    this.#child = child;
    this.#dir = dir;
    this.#pool = new Pool(`http://127.0.0.1:${port}`, { connections, pipelining: 1, keepAliveTimeout: 30_000 });
  }

  /** `postgres` with the two databases' URLs (the transfer), or `http` with the two participants' ports (empty-http). */
  static async start(target: { postgres: readonly [string, string] } | { http: readonly [number, number] }, connections = 64): Promise<WireFloorChild> {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tcx-bench-floor-'));
    const args = 'postgres' in target ? ['postgres', ...target.postgres] : ['http', ...target.http.map(String)];
    const child = spawn(process.execPath, [PROCESS_JS, ...args, path.join(dir, 'decisions.log')], { stdio: ['ignore', 'pipe', 'inherit'] });
    let port: number;
    try {
      port = ((await firstJsonLine(child, 'the wire floor')) as { port: number }).port;
    } catch (err) {
      fs.rmSync(dir, { recursive: true, force: true });
      throw err;
    }
    return new WireFloorChild(child, port, dir, connections);
  }

  get pid(): number {
    return this.#child.pid ?? -1;
  }

  request(method: 'GET' | 'POST', urlPath: string, body?: unknown): Promise<{ status: number; json: unknown }> {
    return requestJson(this.#pool, method, urlPath, body);
  }

  async stop(): Promise<void> {
    await this.#pool.close().catch(() => undefined);
    if (this.#child.exitCode === null && this.#child.signalCode === null) {
      const exited = new Promise((resolve) => this.#child.once('exit', resolve));
      this.#child.kill('SIGTERM');
      const timer = setTimeout(() => this.#child.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(timer);
    }
    fs.rmSync(this.#dir, { recursive: true, force: true });
  }
}
