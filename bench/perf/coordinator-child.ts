/**
 * The built coordinator (`node dist/main.js`) as a separate process, as a real
 * deployment runs it: its own event loop, its own CPU, its output in a file.
 * The bench's load comes from the bench process over loopback HTTP.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Pool } from 'undici';
import { getFreePort } from '../../test/support/free-port.js';

const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const MAIN_JS = path.join(REPO_ROOT, 'dist', 'main.js');

export interface Health {
  readonly log: { readonly fsyncs: number; readonly appendedRecords: number };
  readonly retainedTransactions?: number;
  readonly memory?: { readonly rssBytes: number; readonly heapUsedBytes: number; readonly externalBytes: number };
}

export class CoordinatorChild implements JsonService {
  readonly url: string;
  readonly dataDir: string;
  readonly outputFile: string;
  readonly #child: ChildProcess;
  readonly #exited: Promise<number | null>;
  readonly pool: Pool;

  private constructor(child: ChildProcess, url: string, dataDir: string, outputFile: string, connections: number) {
    this.#child = child;
    this.url = url;
    this.dataDir = dataDir;
    this.outputFile = outputFile;
    this.#exited = new Promise((resolve) => child.once('exit', (code) => resolve(code)));
    this.pool = new Pool(url, { connections, pipelining: 1, keepAliveTimeout: 30_000 });
  }

  /** Starts the coordinator; resolves with the time from spawn until /healthz answered 200. */
  static async start(options: {
    dataDir?: string;
    env?: Record<string, string>;
    nodeFlags?: string[];
    connections?: number;
    readyTimeoutMs?: number;
  }): Promise<{ child: CoordinatorChild; readyMs: number }> {
    if (!fs.existsSync(MAIN_JS)) throw new Error(`${MAIN_JS} is missing: run npm run build first`);
    const dataDir = options.dataDir ?? fs.mkdtempSync(path.join(os.tmpdir(), 'tcx-bench-coord-'));
    const port = await getFreePort();
    const outputFile = path.join(os.tmpdir(), `tcx-bench-coordinator-${process.pid}-${port}.log`);
    const out = fs.openSync(outputFile, 'w');
    const env: Record<string, string> = {};
    for (const [k, v] of Object.entries(process.env)) if (v !== undefined && !k.startsWith('TCX_')) env[k] = v;
    Object.assign(env, { TCX_HOST: '127.0.0.1', TCX_PORT: String(port), TCX_DATA_DIR: dataDir }, options.env ?? {});
    const started = process.hrtime.bigint();
    const child = spawn(process.execPath, [...(options.nodeFlags ?? []), MAIN_JS], { cwd: REPO_ROOT, env, stdio: ['ignore', out, out] });
    fs.closeSync(out);
    const coordinator = new CoordinatorChild(child, `http://127.0.0.1:${port}`, dataDir, outputFile, options.connections ?? 64);
    const deadline = Date.now() + (options.readyTimeoutMs ?? 120_000);
    for (;;) {
      if (child.exitCode !== null) throw new Error(`coordinator exited with ${child.exitCode}:\n${fs.readFileSync(outputFile, 'utf8').slice(-3000)}`);
      try {
        const res = await coordinator.pool.request({ method: 'GET', path: '/healthz', headersTimeout: 1000, bodyTimeout: 1000 });
        await res.body.dump();
        if (res.statusCode === 200) break;
      } catch {
        // not listening yet
      }
      if (Date.now() > deadline) throw new Error('coordinator did not become ready');
      await new Promise((r) => setTimeout(r, 5));
    }
    return { child: coordinator, readyMs: Number(process.hrtime.bigint() - started) / 1e6 };
  }

  get pid(): number {
    return this.#child.pid ?? -1;
  }

  request(method: 'GET' | 'POST', urlPath: string, body?: unknown): Promise<{ status: number; json: unknown }> {
    return requestJson(this.pool, method, urlPath, body);
  }

  async health(): Promise<Health> {
    return (await this.request('GET', '/healthz')).json as Health;
  }

  /** SIGTERM (graceful), SIGKILL after the deadline. Removes the data dir unless kept. */
  async stop(options: { keepDataDir?: boolean } = {}): Promise<void> {
    await this.pool.close().catch(() => undefined);
    if (this.#child.exitCode === null && this.#child.signalCode === null) {
      this.#child.kill('SIGTERM');
      const timer = setTimeout(() => this.#child.kill('SIGKILL'), 15_000);
      await this.#exited;
      clearTimeout(timer);
    }
    if (options.keepDataDir !== true) fs.rmSync(this.dataDir, { recursive: true, force: true });
    // With extra node flags (traces, profiles) the output is what was asked for: keep it.
    if (process.env.TCX_BENCH_NODE_FLAGS) console.log(`coordinator output kept: ${this.outputFile}`);
    else fs.rmSync(this.outputFile, { force: true });
  }
}

/** What a bench client sends the coordinator (or the wire floor): a JSON request, its status and JSON answer. */
export interface JsonService {
  request(method: 'GET' | 'POST', urlPath: string, body?: unknown): Promise<{ status: number; json: unknown }>;
}

export async function requestJson(pool: Pool, method: 'GET' | 'POST', urlPath: string, body?: unknown): Promise<{ status: number; json: unknown }> {
  const res = await pool.request({
    method,
    path: urlPath,
    headers: body === undefined ? {} : { 'content-type': 'application/json' },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    headersTimeout: 30_000,
    bodyTimeout: 30_000,
  });
  const text = await res.body.text();
  return { status: res.statusCode, json: text === '' ? null : JSON.parse(text) };
}
