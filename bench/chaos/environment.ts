/**
 * What the chaos run starts and breaks: two Postgres servers (A, B), one Redis (R), the
 * example ledger as an in-process HTTP participant (L, FileBranchStore), a FaultProxy in
 * front of each, and the coordinator as a child process (`node dist/main.js`) that reaches
 * every participant only through its proxy. The checks reach the stores directly.
 *
 * With `instances` > 1: a third Postgres server holds the shared log (its own server, never
 * behind a proxy and never restarted, so the log outlives every participant fault), and N
 * coordinator processes inst-1..inst-N run over it (TCX_LOG_URL, a short TCX_LEASE_MS so
 * takeovers happen within the run). The participants are registered through inst-1 only and
 * reach the others through the shared registry.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Redis } from 'ioredis';
import { buildLedger, type Ledger } from '../../src/examples/ledger-service.js';
import { FileBranchStore, type BranchEntry } from '../../src/participant-kit/branch-store.js';
import { CoordinatorProcess, MAIN_JS } from '../../test/support/coordinator-process.js';
import { createAccounts, withClient } from '../../test/support/databases.js';
import { FaultProxy } from '../../test/support/fault-proxy.js';
import { PostgresServer } from '../../test/support/postgres-server.js';
import { makeTempDir, removeDirSync, sleep } from '../../test/support/spawned-process.js';
import { RedisServer } from '../../test/support/redis-server.js';

export type Store = 'A' | 'B' | 'R' | 'L';
/** The fixed enlist order: every transfer enlists its legs in this order. */
export const STORES: readonly Store[] = ['A', 'B', 'R', 'L'];
export const PARTICIPANT: Record<Store, string> = { A: 'bank-a', B: 'bank-b', R: 'wallets', L: 'ledger' };

export const ACCOUNTS = 6;
export const START_BALANCE = 100;
export const account = (i: number): string => `acct_${i}`;

/** Coordinator settings: short deadlines so faults resolve quickly, sweeps often. */
export const COORDINATOR_ENV: Readonly<Record<string, string>> = {
  TCX_LOG_LEVEL: 'warn',
  TCX_COMMIT_WAIT_MS: '1500',
  TCX_CONNECT_TIMEOUT_MS: '1000',
  TCX_PARTICIPANT_TIMEOUT_MS: '2000',
  TCX_STATEMENT_TIMEOUT_MS: '3000',
  TCX_RECOVERY_INTERVAL_MS: '2000',
  TCX_UNCERTAIN_TIMEOUT_MS: '3000',
  TCX_RETRY_INITIAL_MS: '50',
  TCX_RETRY_MAX_MS: '500',
};
/** With several instances: how long a coordinator id's lease lasts unrenewed (TCX_LEASE_MS). */
export const CLUSTER_LEASE_MS = 2_000;
/** A restarted instance may wait for its adopter to hand its id back (up to 6 leases) before it is ready. */
export const CLUSTER_READY_MS = 60_000;

export const instanceId = (index: number): string => `inst-${index + 1}`;

/** statement + participant + connect + 5 s: the coordinator's bound for a prepare round. */
export const PREPARE_WAIT_MS = 3_000 + 2_000 + 1_000 + 5_000;

// ---- the build -------------------------------------------------------------------------

/** The repository root: the nearest directory above this module with the project's package.json. */
export function repoRoot(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const pkg = path.join(dir, 'package.json');
    if (fs.existsSync(pkg)) {
      try {
        if ((JSON.parse(fs.readFileSync(pkg, 'utf8')) as { name?: string }).name === 'tx-coordinator') return dir;
      } catch {
        // not ours
      }
    }
    const up = path.dirname(dir);
    if (up === dir) throw new Error('chaos: cannot find the repository root (package.json of tx-coordinator)');
    dir = up;
  }
}

function newestMtime(dir: string): number {
  let newest = 0;
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, entry.name);
    if (entry.isDirectory()) newest = Math.max(newest, newestMtime(p));
    else newest = Math.max(newest, fs.statSync(p).mtimeMs);
  }
  return newest;
}

/**
 * Makes sure `dist/main.js` exists and is not older than src/ (runs `npm run build`), and that
 * CoordinatorProcess finds it: compiled into dist-bench/, CoordinatorProcess looks for
 * dist-bench/dist/main.js, so that path is linked to the real dist/.
 */
export function ensureBuild(log: (line: string) => void): void {
  const root = repoRoot();
  const mainJs = path.join(root, 'dist', 'main.js');
  const missing = !fs.existsSync(mainJs);
  if (missing || newestMtime(path.join(root, 'src')) > fs.statSync(mainJs).mtimeMs) {
    log(`chaos: ${missing ? `${mainJs} is missing` : 'src/ is newer than dist/'}; running \`npm run build\``);
    execFileSync('npm', ['run', 'build', '--silent'], { cwd: root, stdio: ['ignore', 'inherit', 'inherit'], timeout: 300_000 });
  }
  if (path.resolve(MAIN_JS) !== path.resolve(mainJs) && !fs.existsSync(MAIN_JS)) {
    const linkDir = path.dirname(MAIN_JS);
    fs.mkdirSync(path.dirname(linkDir), { recursive: true });
    try {
      fs.rmSync(linkDir, { force: true }); // a dangling link
    } catch {
      // a real directory: leave it, the check below fails with a clear message
    }
    fs.symlinkSync(path.join(root, 'dist'), linkDir, 'dir');
  }
  if (!fs.existsSync(MAIN_JS)) throw new Error(`chaos: ${MAIN_JS} does not exist after the build`);
}

// ---- the ledger (in process, restartable over the same files) -------------------------

export class LedgerHost {
  #ledger: Ledger | undefined;
  #store: FileBranchStore | undefined;
  #port = 0;
  /** Requests being handled: what a close has to wait for. */
  readonly #inFlight = new Map<number, string>();
  #requestNo = 0;

  /**
   * `coordinatorUrl`: where the ledger sends 3PC inquiries. Undefined (several instances): the
   * URL each can-commit carries, i.e. the instance that ran the transaction.
   */
  constructor(
    readonly dir: string,
    readonly coordinatorUrl: string | undefined,
    private readonly log: (line: string) => void = () => undefined,
  ) {}

  get port(): number {
    return this.#port;
  }

  get running(): boolean {
    return this.#ledger !== undefined;
  }

  /** Opens the files (replaying them) and listens; on the previous port after a restart. */
  async start(): Promise<void> {
    if (this.#ledger !== undefined) return;
    const store = await FileBranchStore.open(path.join(this.dir, 'ledger.branches.jsonl'));
    let ledger: Ledger;
    try {
      ledger = await buildLedger({
        balances: Object.fromEntries(Array.from({ length: ACCOUNTS }, (_, i) => [account(i), START_BALANCE])),
        store,
        balancesFile: path.join(this.dir, 'ledger.balances.json'),
        kit: {
          ...(this.coordinatorUrl === undefined ? {} : { coordinatorUrl: this.coordinatorUrl }),
          precommitTimeoutMs: 3_000,
          uncertainTimeoutMs: 3_000,
          inquiryTimeoutMs: 1_000,
          retry: { initialMs: 200, maxMs: 1_000 },
        },
      });
    } catch (err) {
      await store.close();
      throw err;
    }
    const inFlight = this.#inFlight;
    ledger.app.addHook('preHandler', async (request) => {
      const no = ++this.#requestNo;
      (request as unknown as { chaosNo: number }).chaosNo = no;
      const body = request.body as { transactionId?: unknown; branchId?: unknown } | undefined;
      inFlight.set(no, `${request.method} ${request.url} ${String(body?.transactionId ?? '')}/${String(body?.branchId ?? '')} since ${new Date().toISOString()}`);
    });
    const done = async (request: unknown): Promise<void> => {
      inFlight.delete((request as { chaosNo?: number }).chaosNo ?? -1);
    };
    ledger.app.addHook('onResponse', done);
    ledger.app.addHook('onRequestAbort', done);
    for (let attempt = 1; ; attempt++) {
      try {
        await ledger.app.listen({ host: '127.0.0.1', port: this.#port });
        break;
      } catch (err) {
        if (attempt >= 20 || (err as NodeJS.ErrnoException).code !== 'EADDRINUSE') {
          await ledger.app.close().catch(() => undefined);
          await store.close();
          throw err;
        }
        await sleep(100); // the old socket is still closing
      }
    }
    this.#port = (ledger.app.server.address() as { port: number }).port;
    this.#ledger = ledger;
    this.#store = store;
  }

  /**
   * Closes the service and its files. Calls in flight get 5 s to finish; connections still
   * open after that (a request whose bytes a fault held back) are destroyed.
   */
  async stop(): Promise<void> {
    const ledger = this.#ledger;
    const store = this.#store;
    this.#ledger = undefined;
    this.#store = undefined;
    if (ledger === undefined || store === undefined) return;
    const closing = ledger.app.close().then(() => true);
    // server.close() closes the connections idle at that instant; one whose request was in flight
    // becomes idle later and would linger for the keep-alive timeout, so reap them as they go idle.
    const reaper = setInterval(() => ledger.app.server.closeIdleConnections(), 50);
    let closed = await Promise.race([closing, sleep(5_000).then(() => false)]).finally(() => clearInterval(reaper));
    if (!closed) {
      const connections = await new Promise<number>((resolve) => ledger.app.server.getConnections((_err, n) => resolve(n)));
      this.log(
        `chaos: ledger close still waits after 5 s (${connections} connections, in flight: ${[...this.#inFlight.values()].join('; ') || 'none'}); destroying its connections`,
      );
      ledger.app.server.closeAllConnections();
      closed = await Promise.race([closing, sleep(10_000).then(() => false)]);
      if (!closed) throw new Error(`chaos: the ledger did not close within 15 s (in flight: ${[...this.#inFlight.values()].join('; ') || 'none'})`);
    }
    this.#inFlight.clear();
    await store.close();
  }

  balances(): Record<string, number> {
    if (this.#ledger === undefined) throw new Error('chaos: the ledger is not running');
    return this.#ledger.balances();
  }

  reserved(): number {
    if (this.#ledger === undefined) throw new Error('chaos: the ledger is not running');
    return this.#ledger.reserved();
  }

  async branches(): Promise<BranchEntry[]> {
    if (this.#store === undefined) throw new Error('chaos: the ledger is not running');
    return this.#store.list();
  }
}

// ---- everything together ----------------------------------------------------------------

/** One coordinator process: `inst-<n>` with a shared log, or the one coordinator (its id generated) without. */
export interface ChaosInstance {
  readonly index: number;
  readonly id: string;
  readonly proc: CoordinatorProcess;
}

export interface ChaosEnvironment {
  readonly runId: string;
  readonly pgA: PostgresServer;
  readonly pgB: PostgresServer;
  readonly redis: RedisServer;
  /** Direct (not proxied) URLs of the chaos databases. */
  readonly dbA: string;
  readonly dbB: string;
  readonly ledger: LedgerHost;
  readonly proxies: Record<Store, FaultProxy>;
  /** The coordinator processes; one without a shared log. */
  readonly instances: readonly ChaosInstance[];
  /** The shared log's server and database (several instances only). */
  readonly logServer?: PostgresServer;
  readonly logUrl?: string;
  readonly tempDir: string;
  destroy(): Promise<void>;
}

export const redisAccountKey = (runId: string, i: number): string => `chaos:${runId}:acct:${i}`;
export const redisMarkPrefix = (runId: string): string => `chaos:${runId}:mark:`;

async function prepareDatabase(server: PostgresServer): Promise<string> {
  const url = await server.createDatabase('chaos');
  await createAccounts(url, Object.fromEntries(Array.from({ length: ACCOUNTS }, (_, i) => [account(i), START_BALANCE])));
  // One row per committed branch of a transfer: the store's own evidence of the outcome.
  await withClient(url, (c) => c.query('CREATE TABLE chaos_marks (tx text PRIMARY KEY, delta bigint NOT NULL)'));
  // Async commit loses the last commits on a SIGKILL: make the set-up durable before any kill.
  await withClient(url, (c) => c.query('CHECKPOINT'));
  return url;
}

/** The running coordinator processes, the first one first. */
export const runningInstances = (env: ChaosEnvironment): ChaosInstance[] => env.instances.filter((i) => i.proc.running);

/** Output tails of every coordinator process (for a harness error). */
export const instanceTails = (env: ChaosEnvironment, lines = 40): string => env.instances.map((i) => `[${i.id}] ${i.proc.tail(lines)}`).join('\n');

export async function startEnvironment(runId: string, log: (line: string) => void, instanceCount = 1): Promise<ChaosEnvironment> {
  const cleanups: (() => Promise<void>)[] = [];
  const destroy = async (): Promise<void> => {
    for (const fn of cleanups.reverse()) await fn().catch(() => undefined);
    cleanups.length = 0;
  };
  try {
    const tempDir = makeTempDir('chaos-');
    cleanups.push(async () => removeDirSync(tempDir));
    const cluster = instanceCount > 1;
    const [pgA, pgB, redis, logServer] = await Promise.all([
      PostgresServer.start({ name: 'chaos-a' }),
      PostgresServer.start({ name: 'chaos-b' }),
      RedisServer.start({ name: 'chaos-r' }),
      cluster ? PostgresServer.start({ name: 'chaos-log' }) : Promise.resolve(undefined),
    ]);
    cleanups.push(() => pgA.destroy(), () => pgB.destroy(), () => redis.destroy(), async () => logServer?.destroy());
    const [dbA, dbB] = await Promise.all([prepareDatabase(pgA), prepareDatabase(pgB)]);
    const logUrl = logServer === undefined ? undefined : await logServer.createDatabase('tcxlog');
    const r = new Redis(redis.url, { maxRetriesPerRequest: 2 });
    try {
      for (let i = 0; i < ACCOUNTS; i++) await r.set(redisAccountKey(runId, i), String(START_BALANCE));
    } finally {
      r.disconnect();
    }
    log(`chaos: postgres A ${pgA.url()} B ${pgB.url()}, redis ${redis.url}${logUrl === undefined ? '' : `, shared log ${logUrl}`}`);

    const instances: ChaosInstance[] = [];
    for (let index = 0; index < instanceCount; index++) {
      const env =
        logUrl === undefined
          ? COORDINATOR_ENV
          : { ...COORDINATOR_ENV, TCX_LOG_URL: logUrl, TCX_COORDINATOR_ID: instanceId(index), TCX_LEASE_MS: String(CLUSTER_LEASE_MS) };
      const proc = await CoordinatorProcess.start({ env, ...(cluster ? { readyTimeoutMs: CLUSTER_READY_MS } : {}) });
      cleanups.push(() => proc.destroy());
      const id = cluster ? instanceId(index) : ((await proc.request('GET', '/healthz')).body.coordinatorId as string);
      instances.push({ index, id, proc });
    }
    const coord = (instances[0] as ChaosInstance).proc;
    const ledger = new LedgerHost(path.join(tempDir, 'ledger'), cluster ? undefined : coord.url, log);
    fs.mkdirSync(ledger.dir, { recursive: true });
    await ledger.start();
    cleanups.push(() => ledger.stop());

    const mk = (name: string, port: number): Promise<FaultProxy> => FaultProxy.start({ name, target: { host: '127.0.0.1', port } });
    const proxies: Record<Store, FaultProxy> = {
      A: await mk('proxy-a', pgA.port),
      B: await mk('proxy-b', pgB.port),
      R: await mk('proxy-r', redis.port),
      L: await mk('proxy-l', ledger.port),
    };
    cleanups.push(async () => {
      for (const p of Object.values(proxies)) await p.close();
    });

    for (const p of [
      { name: PARTICIPANT.A, kind: 'postgres', connectionString: proxies.A.rewriteUrl(dbA) },
      { name: PARTICIPANT.B, kind: 'postgres', connectionString: proxies.B.rewriteUrl(dbB) },
      { name: PARTICIPANT.R, kind: 'redis', url: proxies.R.rewriteUrl(redis.url) },
      { name: PARTICIPANT.L, kind: 'http', baseUrl: proxies.L.url() },
    ]) {
      const res = await coord.request('POST', '/v1/participants', p);
      if (res.status !== 201) throw new Error(`chaos: registering ${p.name} answered ${res.status} ${JSON.stringify(res.body)}`);
    }
    // Registered through the first instance only: every other one takes them from the shared registry.
    for (const other of instances.slice(1)) await waitForParticipants(other, Object.values(PARTICIPANT));
    for (const i of instances) {
      log(`chaos: coordinator ${i.proc.url} (id ${i.id}, pid ${i.proc.pid})`);
    }
    log(`chaos: ledger :${ledger.port}, proxies ${STORES.map((s) => `${s}:${proxies[s].port}`).join(' ')}`);
    return { runId, pgA, pgB, redis, dbA, dbB, ledger, proxies, instances, ...(logServer === undefined ? {} : { logServer, logUrl }), tempDir, destroy };
  } catch (err) {
    await destroy();
    throw err;
  }
}

/** Waits (bounded, 10 s; the shared registry syncs every third of a lease) until GET /v1/participants on `instance` lists every name. */
async function waitForParticipants(instance: ChaosInstance, names: readonly string[]): Promise<void> {
  const deadline = Date.now() + 10_000;
  let last = '';
  for (;;) {
    const res = await instance.proc.request('GET', '/v1/participants', undefined, 5_000);
    const listed = new Set(((res.body?.participants ?? []) as { name: string }[]).map((p) => p.name));
    if (res.status === 200 && names.every((n) => listed.has(n))) return;
    last = `${res.status} ${[...listed].join(',') || 'none'}`;
    if (Date.now() > deadline) throw new Error(`chaos: ${instance.id} does not list the participants registered through inst-1 (GET /v1/participants: ${last})`);
    await sleep(100);
  }
}
