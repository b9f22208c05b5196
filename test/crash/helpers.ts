/**
 * Shared pieces of the crash tests: transfer operations, bounded polling, waiting until a
 * restarted coordinator has nothing left in doubt.
 */
import { onTestFailed } from 'vitest';
import type { CoordinatorProcess } from '../support/coordinator-process.js';
import { preparedGids } from '../support/databases.js';

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
