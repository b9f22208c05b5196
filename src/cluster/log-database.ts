/**
 * Reaching the shared log's database at start-up: it may start after the coordinator, or be
 * restarting after a crash that made this instance step down (its supervisor restarted it).
 */

import type pg from 'pg';
import type { Logger } from 'pino';
import { backoffDelay, sleep } from '../coordinator/backoff.js';
import { errorMessage } from '../errors.js';
import { migrate } from '../log/postgres-log-schema.js';

/**
 * Creates or migrates the log's schema, waiting (bounded by `waitMs`, with backoff) while the log
 * database cannot be reached: it may start after the coordinator, or be restarting after a crash
 * that made this instance step down.
 */
export async function migrateWhenReachable(pool: pg.Pool, waitMs: number, logger: Logger): Promise<void> {
  const deadline = performance.now() + waitMs;
  for (let attempt = 0; ; attempt++) {
    let client: pg.PoolClient | undefined;
    try {
      client = await pool.connect();
      await migrate(client);
    } catch (err) {
      client?.release(true);
      // Not answering yet (or another instance holds the schema lock): wait. A wrong password, a
      // missing database or pg_hba.conf turning the connection away is an answer: fail at once.
      const unreachable = isConnectionError(err);
      const delay = backoffDelay({ initialMs: 200, maxMs: 2_000 }, attempt);
      if (!unreachable || performance.now() + delay > deadline) throw err;
      logger.warn({ err: errorMessage(err), attempt: attempt + 1, retryInMs: delay }, 'the log database cannot be reached yet; waiting (TCX_LOG_WAIT_MS)');
      await sleep(delay);
      continue;
    }
    client.release();
    return;
  }
}

/** A failure to reach the server (refused, reset, shutting down, starting up), not an answer it gave. */
function isConnectionError(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  if (typeof code === 'string' && /^(ECONNREFUSED|ECONNRESET|ETIMEDOUT|EPIPE|EHOSTUNREACH|ENETUNREACH|EAI_AGAIN|57P0[1-3]|55P03)$/.test(code)) return true;
  return /Connection terminated|connection timeout|timeout exceeded when trying to connect/i.test(errorMessage(err));
}
