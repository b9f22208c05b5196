/**
 * The coordinator as a child process (`node dist/main.js`), for crash tests: start it with
 * a fail point armed, let it SIGKILL itself, restart it on the same data dir and port, and
 * look at what it logged. Every wait is bounded; children are SIGKILLed when the test
 * process exits.
 *
 * Needs the build: run `npm run build` first (dist/main.js).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Agent, request as undiciRequest } from 'undici';
import { getFreePort } from './free-port.js';
import { registerCleanup, removeDirSync, sleep } from './spawned-process.js';
import { recordAnswer } from './response-contract.js';

export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
export const MAIN_JS = path.join(REPO_ROOT, 'dist', 'main.js');

/** One pino JSON line, plus the generation (0 = first process, 1 = first restart, ...). */
export type LogLine = Record<string, unknown> & { readonly msg?: string; readonly level?: number; readonly gen: number };

export interface ExitInfo {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
}

export interface ApiAnswer {
  readonly status: number;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- JSON answers are inspected freely in tests
  readonly body: any;
}

export interface CoordinatorProcessOptions {
  /** Kept across restarts. Default: a new temp dir, removed by destroy(). */
  readonly dataDir?: string;
  /** Extra TCX_* settings (TCX_FAIL_POINT, TCX_COMMIT_WAIT_MS, ...). */
  readonly env?: Readonly<Record<string, string>>;
  /** Default: a free port. */
  readonly port?: number;
  /** How long to wait for GET /healthz to answer 200. Default 20 s. */
  readonly readyTimeoutMs?: number;
}

/** Settings that make crash tests fast; callers override any of them. */
const TEST_DEFAULTS: Readonly<Record<string, string>> = {
  TCX_HOST: '127.0.0.1',
  TCX_LOG_LEVEL: 'info',
  TCX_RETRY_INITIAL_MS: '20',
  TCX_RETRY_MAX_MS: '300',
};

const READY_TIMEOUT_MS = 20_000;
const REQUEST_TIMEOUT_MS = 15_000;
const STOP_TIMEOUT_MS = 15_000;
const KILL_TIMEOUT_MS = 10_000;

interface Generation {
  readonly gen: number;
  readonly child: ChildProcess;
  readonly agent: Agent;
  readonly exited: Promise<ExitInfo>;
  exit: ExitInfo | undefined;
}

export class CoordinatorProcess {
  readonly dataDir: string;
  readonly #ownsDataDir: boolean;
  #port: number;
  #env: Record<string, string>;
  #current: Generation | undefined;
  #generations = 0;
  readonly #output: { gen: number; stream: 'out' | 'err'; line: string }[] = [];
  readonly #unregister: () => void;
  #destroyed = false;

  private constructor(dataDir: string, ownsDataDir: boolean, port: number, env: Record<string, string>) {
    this.dataDir = dataDir;
    this.#ownsDataDir = ownsDataDir;
    this.#port = port;
    this.#env = env;
    this.#unregister = registerCleanup(() => {
      const child = this.#current?.child;
      if (child?.pid !== undefined && this.#current?.exit === undefined) {
        try {
          process.kill(child.pid, 'SIGKILL');
        } catch {
          // already gone
        }
      }
      if (this.#ownsDataDir) removeDirSync(this.dataDir);
    });
  }

  /** Spawns `node dist/main.js` and waits until GET /healthz answers 200. */
  static async start(options: CoordinatorProcessOptions = {}): Promise<CoordinatorProcess> {
    if (!fs.existsSync(MAIN_JS)) {
      throw new Error(`CoordinatorProcess: ${MAIN_JS} is missing; run \`npm run build\` first`);
    }
    const ownsDataDir = options.dataDir === undefined;
    const dataDir = options.dataDir ?? fs.mkdtempSync(path.join(os.tmpdir(), 'tcx-crash-'));
    const fixedPort = options.port !== undefined;
    const proc = new CoordinatorProcess(dataDir, ownsDataDir, options.port ?? (await getFreePort()), { ...(options.env ?? {}) });
    // The free port may be taken between probing and binding: retry on a new one.
    for (let attempt = 1; ; attempt++) {
      try {
        await proc.#launch(options.readyTimeoutMs ?? READY_TIMEOUT_MS);
        return proc;
      } catch (err) {
        if (!fixedPort && attempt < 4 && proc.#current?.exit !== undefined && /EADDRINUSE/.test(proc.output(proc.#generations - 1))) {
          proc.#port = await getFreePort();
          continue;
        }
        await proc.destroy().catch(() => undefined);
        throw err;
      }
    }
  }

  get port(): number {
    return this.#port;
  }

  get url(): string {
    return `http://127.0.0.1:${this.#port}`;
  }

  /** Pid of the current process (also after it exited). */
  get pid(): number {
    return this.#current?.child.pid ?? -1;
  }

  get running(): boolean {
    return this.#current !== undefined && this.#current.exit === undefined;
  }

  /** Resolves when the current process exits. */
  get exited(): Promise<ExitInfo> {
    if (this.#current === undefined) return Promise.reject(new Error('CoordinatorProcess: not started'));
    return this.#current.exited;
  }

  /** Number of the current process: 0 for the first, 1 after the first restart, ... */
  get generation(): number {
    return this.#generations - 1;
  }

  /** Waits (bounded) for the current process to exit; throws with the log tail when it does not. */
  async waitExit(ms = KILL_TIMEOUT_MS): Promise<ExitInfo> {
    const current = this.#current;
    if (current === undefined) throw new Error('CoordinatorProcess: not started');
    const result = await Promise.race([current.exited, sleep(ms).then(() => undefined)]);
    if (result === undefined) throw new Error(`coordinator pid ${this.pid} did not exit within ${ms} ms\n${this.tail()}`);
    return result;
  }

  /**
   * An API call with a deadline. Network failures (the process died mid-request) reject;
   * any HTTP status resolves. Every answer is checked against openapi.yaml: a mismatch fails
   * the test (response-contract-setup.ts).
   */
  async request(method: 'GET' | 'POST' | 'DELETE', urlPath: string, body?: unknown, timeoutMs = REQUEST_TIMEOUT_MS): Promise<ApiAnswer> {
    const current = this.#current;
    if (current === undefined) throw new Error('CoordinatorProcess: not started');
    const res = await undiciRequest(`${this.url}${urlPath}`, {
      method,
      dispatcher: current.agent,
      headersTimeout: timeoutMs,
      bodyTimeout: timeoutMs,
      signal: AbortSignal.timeout(timeoutMs),
      ...(body === undefined ? {} : { body: JSON.stringify(body), headers: { 'content-type': 'application/json' } }),
    });
    const text = await res.body.text();
    const contentType = res.headers['content-type'];
    recordAnswer({ method, url: urlPath, status: res.statusCode, contentType: typeof contentType === 'string' ? contentType : undefined, body: text });
    let parsed: unknown = undefined;
    if (text !== '') {
      try {
        parsed = JSON.parse(text);
      } catch {
        parsed = text;
      }
    }
    return { status: res.statusCode, body: parsed };
  }

  /** SIGKILL (a crash) and wait until the process is gone. */
  async kill(): Promise<ExitInfo> {
    const current = this.#current;
    if (current === undefined) throw new Error('CoordinatorProcess: not started');
    if (current.exit === undefined && current.child.pid !== undefined) {
      try {
        process.kill(current.child.pid, 'SIGKILL');
      } catch {
        // exited meanwhile
      }
    }
    return this.waitExit(KILL_TIMEOUT_MS);
  }

  /** SIGTERM (graceful stop), then wait; SIGKILL if it has not exited after `ms`. */
  async stop(ms = STOP_TIMEOUT_MS): Promise<ExitInfo> {
    const current = this.#current;
    if (current === undefined) throw new Error('CoordinatorProcess: not started');
    if (current.exit !== undefined) return current.exit;
    if (current.child.pid !== undefined) {
      try {
        process.kill(current.child.pid, 'SIGTERM');
      } catch {
        // exited meanwhile
      }
    }
    const result = await Promise.race([current.exited, sleep(ms).then(() => undefined)]);
    if (result !== undefined) return result;
    return this.kill();
  }

  /**
   * A new process on the same data dir and port. The fail point is cleared unless
   * `envOverrides` sets TCX_FAIL_POINT; other overrides are kept for later restarts.
   * A still running process is stopped gracefully first.
   */
  async restart(envOverrides: Readonly<Record<string, string>> = {}, readyTimeoutMs = READY_TIMEOUT_MS): Promise<void> {
    if (this.#destroyed) throw new Error('CoordinatorProcess: restart() after destroy()');
    if (this.running) await this.stop();
    const env = { ...this.#env };
    delete env.TCX_FAIL_POINT;
    this.#env = { ...env, ...envOverrides };
    await this.#launch(readyTimeoutMs);
  }

  /** Kills the process and removes the data dir if this object created it. */
  async destroy(): Promise<void> {
    if (this.#destroyed) return;
    this.#destroyed = true;
    try {
      if (this.running) await this.kill();
      await this.#current?.agent.close().catch(() => undefined);
    } finally {
      this.#unregister();
      if (this.#ownsDataDir) removeDirSync(this.dataDir);
    }
  }

  /** Parsed JSON log lines (stdout), of every process or of one generation. */
  logLines(generation?: number): LogLine[] {
    const out: LogLine[] = [];
    for (const o of this.#output) {
      if (o.stream !== 'out' || (generation !== undefined && o.gen !== generation)) continue;
      try {
        const parsed = JSON.parse(o.line) as unknown;
        if (typeof parsed === 'object' && parsed !== null) out.push({ ...(parsed as Record<string, unknown>), gen: o.gen });
      } catch {
        // not a JSON line
      }
    }
    return out;
  }

  /** Raw output (stdout and stderr interleaved as received). */
  output(generation?: number): string {
    return this.#output
      .filter((o) => generation === undefined || o.gen === generation)
      .map((o) => o.line)
      .join('\n');
  }

  /** The last `lines` lines of output, labelled with generation and stream: for failure messages. */
  tail(lines = 60): string {
    const picked = this.#output.slice(-lines).map((o) => `[coordinator#${o.gen} ${o.stream}] ${o.line}`);
    return `--- coordinator ${this.url} (data dir ${this.dataDir}), last ${picked.length} lines:\n${picked.join('\n')}`;
  }

  /** Waits (bounded) until a log line of the current process matches. */
  async waitForLog(predicate: (line: LogLine) => boolean, ms = 10_000): Promise<LogLine> {
    const deadline = Date.now() + ms;
    for (;;) {
      const hit = this.logLines(this.generation).find(predicate);
      if (hit !== undefined) return hit;
      if (Date.now() > deadline) throw new Error(`no matching coordinator log line within ${ms} ms\n${this.tail()}`);
      await sleep(25);
    }
  }

  // ---------------------------------------------------------------------------------------

  async #launch(readyTimeoutMs: number): Promise<void> {
    if (this.#current !== undefined && this.#current.exit === undefined) {
      throw new Error(`CoordinatorProcess: pid ${this.pid} is still running`);
    }
    await this.#current?.agent.close().catch(() => undefined);
    const gen = this.#generations++;
    const env: Record<string, string> = {};
    for (const [k, v] of Object.entries(process.env)) {
      // Never inherit coordinator settings (a stray TCX_FAIL_POINT) from the test environment.
      if (v !== undefined && !(k.startsWith('TCX_') && !k.startsWith('TCX_TEST_'))) env[k] = v;
    }
    Object.assign(env, TEST_DEFAULTS, this.#env, { TCX_PORT: String(this.#port), TCX_DATA_DIR: this.dataDir });
    const child = spawn(process.execPath, [MAIN_JS], { cwd: REPO_ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
    const generation: Generation = {
      gen,
      child,
      agent: new Agent({ connect: { timeout: 5_000 }, keepAliveTimeout: 1_000, pipelining: 0 }),
      exited: new Promise<ExitInfo>((resolve) => {
        child.once('exit', (code, signal) => {
          generation.exit = { code, signal };
          resolve(generation.exit);
        });
        child.once('error', (err) => {
          this.#output.push({ gen, stream: 'err', line: `spawn error: ${err.message}` });
          if (child.pid === undefined) {
            generation.exit = { code: null, signal: null };
            resolve(generation.exit);
          }
        });
      }),
      exit: undefined,
    };
    this.#current = generation;
    this.#capture(gen, 'out', child.stdout);
    this.#capture(gen, 'err', child.stderr);
    await this.#waitHealthy(generation, readyTimeoutMs);
  }

  #capture(gen: number, stream: 'out' | 'err', readable: NodeJS.ReadableStream | null): void {
    if (readable === null) return;
    let pending = '';
    readable.setEncoding('utf8');
    readable.on('data', (chunk: string) => {
      pending += chunk;
      const parts = pending.split('\n');
      pending = parts.pop() ?? '';
      for (const line of parts) if (line !== '') this.#output.push({ gen, stream, line });
    });
    readable.on('end', () => {
      if (pending !== '') this.#output.push({ gen, stream, line: pending });
      pending = '';
    });
  }

  async #waitHealthy(generation: Generation, ms: number): Promise<void> {
    const deadline = Date.now() + ms;
    let last = '';
    while (Date.now() < deadline) {
      if (generation.exit !== undefined) {
        throw new Error(
          `coordinator (node dist/main.js) exited with code ${String(generation.exit.code)} signal ${String(generation.exit.signal)} ` +
            `before it was ready\n${this.tail()}`,
        );
      }
      try {
        const res = await this.request('GET', '/healthz', undefined, 2_000);
        if (res.status === 200) return;
        last = `healthz answered ${res.status} ${JSON.stringify(res.body)}`;
      } catch (err) {
        last = err instanceof Error ? err.message : String(err);
      }
      await sleep(50);
    }
    if (generation.exit === undefined && generation.child.pid !== undefined) {
      try {
        process.kill(generation.child.pid, 'SIGKILL');
      } catch {
        // gone
      }
    }
    throw new Error(`coordinator was not ready within ${ms} ms (last: ${last})\n${this.tail()}`);
  }
}
