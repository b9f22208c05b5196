/**
 * Shared pieces of the crash tests: transfer operations, bounded polling, waiting until a
 * restarted coordinator has nothing left in doubt.
 */
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { FastifyInstance } from 'fastify';
import { onTestFailed } from 'vitest';
import { buildLedger, type Ledger } from '../../src/examples/ledger-service.js';
import { FileBranchStore } from '../../src/participant-kit/branch-store.js';
import type { ParticipantKitOptions } from '../../src/participant-kit/participant-routes.js';
import { CoordinatorProcess } from '../support/coordinator-process.js';
import { freshDatabase, preparedGids } from '../support/databases.js';

export const transferSql = (account: string, delta: number): { sql: string; params: unknown[] } => ({
  sql: 'UPDATE accounts SET balance = balance + $1 WHERE id = $2 RETURNING balance',
  params: [delta, account],
});

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Polls `probe` until it returns something other than undefined/false, at most `ms`. */
export async function until<T>(what: string, probe: () => Promise<T | undefined | false>, ms = 15_000, everyMs = 100): Promise<T> {
  const deadline = Date.now() + ms;
  let lastError: unknown;
  for (;;) {
    try {
      const value = await probe();
      if (value !== undefined && value !== false) return value;
    } catch (err) {
      lastError = err;
    }
    if (Date.now() > deadline) {
      const why = lastError === undefined ? '' : ` (last error: ${lastError instanceof Error ? lastError.message : String(lastError)})`;
      throw new Error(`timed out after ${ms} ms waiting for ${what}${why}`);
    }
    await sleep(everyMs);
  }
}

/** Prints the coordinators' output when the current test fails. */
export function reportOnFailure(...procs: (CoordinatorProcess | undefined)[]): void {
  onTestFailed(() => {
    for (const p of procs) if (p !== undefined) console.log(p.tail(80));
  });
}

/**
 * Waits until the coordinator has nothing in doubt and nothing live, and the databases
 * hold no prepared transaction of any tcx coordinator.
 */
export async function waitSettled(coord: CoordinatorProcess, databases: string[], ms = 15_000): Promise<void> {
  await until(
    'the restarted coordinator to resolve every transaction',
    async () => {
      const inDoubt = await coord.request('GET', '/v1/transactions?state=in-doubt');
      if (inDoubt.status !== 200 || inDoubt.body.transactions.length > 0) return false;
      const health = await coord.request('GET', '/healthz');
      if (health.body.liveTransactions !== 0) return false;
      for (const db of databases) if ((await preparedGids(db)).length > 0) return false;
      return true;
    },
    ms,
  );
}

/**
 * A coordinator child process as the crash tests run it — short timeouts, no periodic
 * recovery sweep (only start-up recovery and the transactions' own retries resolve anything)
 * — with `participants` registered through its API. Its output is printed if the test fails.
 */
export async function startCrashCoordinator(participants: readonly object[], env: Readonly<Record<string, string>> = {}): Promise<CoordinatorProcess> {
  const c = await CoordinatorProcess.start({
    env: {
      TCX_COMMIT_WAIT_MS: '1000',
      TCX_CONNECT_TIMEOUT_MS: '1000',
      TCX_PARTICIPANT_TIMEOUT_MS: '2000',
      TCX_RECOVERY_INTERVAL_MS: '600000',
      ...env,
    },
  });
  reportOnFailure(c);
  for (const p of participants) {
    const res = await c.request('POST', '/v1/participants', p);
    if (res.status !== 201) {
      await c.destroy();
      throw new Error(`registering ${JSON.stringify(p)} answered ${res.status}: ${JSON.stringify(res.body)}`);
    }
  }
  return c;
}

/**
 * The 2PC fail points and what a transaction killed at each ends as once the coordinator is
 * restarted: before the decision is durable, aborted (presumed abort); from it on, committed.
 */
export const TWO_PHASE_FAIL_POINTS = [
  { failPoint: 'after-prepare', outcome: 'aborted' },
  { failPoint: 'after-decision-logged', outcome: 'committed' },
  { failPoint: 'between-commits', outcome: 'committed' },
  { failPoint: 'before-end-record', outcome: 'committed' },
] as const;

/** Resolves with the answer, or with the error when the request failed (the process died). */
export function settle<T>(p: Promise<T>): Promise<{ ok: true; value: T } | { ok: false; error: unknown }> {
  return p.then(
    (value) => ({ ok: true as const, value }),
    (error: unknown) => ({ ok: false as const, error }),
  );
}

/** Transaction id of a gid `tcx:<coordinatorId>:<txId>:<branchNo>`. */
export function txIdOfGid(gid: string): string {
  const parts = gid.split(':');
  return parts[2] ?? '';
}

// ---- 3PC crash tests: a ledger participant with a durable branch store, Redis scans, a seeded rng ----

/** One branch as the ledger's GET /branches lists it. */
export interface LedgerBranchInfo {
  readonly transactionId: string;
  readonly branchId: string;
  readonly status: 'prepared' | 'precommitted' | 'committed' | 'aborted' | 'read-only';
  readonly protocol: '2pc' | '3pc';
  readonly updatedAt: string;
  readonly reason?: string;
  readonly resolvedBy?: 'coordinator' | 'timeout';
  readonly inquiry?: { readonly attempts: number; readonly nextAt?: string; readonly last?: string };
}

/** The example ledger on a free port, its branch state (and balances) in fsynced files in a temp dir. */
export interface FileLedger {
  readonly ledger: Ledger;
  readonly store: FileBranchStore;
  readonly url: string;
  readonly dir: string;
  /** GET {url}/branches over HTTP. */
  branches(): Promise<LedgerBranchInfo[]>;
  /** Closes the server (clears the kit's 3PC timers) and the store, removes the dir. */
  close(): Promise<void>;
}

export async function startFileLedger(
  balances: Record<string, number>,
  kit: ParticipantKitOptions,
  beforeListen?: (app: FastifyInstance) => void,
): Promise<FileLedger> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'tcx-ledger-'));
  const store = await FileBranchStore.open(path.join(dir, 'branches.jsonl'));
  const ledger = await buildLedger({ balances, store, balancesFile: path.join(dir, 'balances.json'), kit });
  beforeListen?.(ledger.app);
  const url = await ledger.app.listen({ host: '127.0.0.1', port: 0 });
  let closed = false;
  return {
    ledger,
    store,
    url,
    dir,
    async branches() {
      const res = await fetch(`${url}/branches`, { signal: AbortSignal.timeout(5_000) });
      if (res.status !== 200) throw new Error(`GET ${url}/branches answered ${res.status}`);
      return ((await res.json()) as { branches: LedgerBranchInfo[] }).branches;
    },
    async close() {
      if (closed) return;
      closed = true;
      await ledger.app.close().catch(() => undefined);
      await store.close().catch(() => undefined);
      await fs.rm(dir, { recursive: true, force: true }).catch(() => undefined);
    },
  };
}

export { scanKeys } from '../support/redis-keys.js';

/** Seedable PRNG (mulberry32) for reproducible workloads: the one in test/support. */
export { rng as seededRandom } from '../support/seeded-random.js';

/**
 * The coordinator's two logs, for crash tests that run with each: the file log (in the
 * process's data dir), or the Postgres log (TCX_LOG_URL) in a database of its own on `serverUrl`.
 */
export function crashLogs(serverUrl: () => string): readonly { log: 'file' | 'postgres'; env: (name: string) => Promise<Record<string, string>> }[] {
  return [
    { log: 'file', env: async () => ({}) },
    {
      log: 'postgres',
      env: async (name: string) => ({
        TCX_LOG_URL: await freshDatabase(serverUrl(), 'wal'),
        TCX_COORDINATOR_ID: `crash-${name.replace(/[^A-Za-z0-9-]/g, '-')}`.slice(0, 40),
        // A restart right after a kill waits for the killed process's lease to lapse: keep it short.
        TCX_LEASE_MS: '1500',
      }),
    },
  ];
}
