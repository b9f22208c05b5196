/**
 * The transfer workload: C clients, each moving an amount between two of the four stores
 * (A, B: UPDATE with CHECK balance >= 0; R: incrby with min 0; L: the ledger's reserve and
 * apply), 2PC or 3PC at random. Every leg also leaves the store's own evidence of its
 * outcome — a row in chaos_marks (Postgres), a mark key (Redis), the branch status in the
 * ledger's store — so the checks can compare outcomes branch by branch.
 *
 * Transfers run step by step (begin, enlist in the fixed order A, B, R, L, commit), so the
 * client knows every transaction id, also of a transfer whose request died with the
 * coordinator. The plan of each client is seeded.
 */
import type { ApiAnswer, CoordinatorProcess } from '../../test/support/coordinator-process.js';
import { ACCOUNTS, account, PARTICIPANT, redisAccountKey, redisMarkPrefix, STORES, type Store } from './environment.js';
import { between, choose, pick, rng, type Rng } from '../../test/support/seeded-random.js';

export const TX_TIMEOUT_MS = 8_000;
/** Longer than the coordinator's bound for one commit request (prepare round + commit wait). */
export const REQUEST_TIMEOUT_MS = 25_000;

export interface Leg {
  readonly store: Store;
  readonly account: number;
  readonly delta: number;
}

export type Seen = 'committed' | 'committing' | 'aborted' | 'refused' | 'unknown';

export interface Transfer {
  readonly client: number;
  readonly seq: number;
  readonly protocol: '2pc' | '3pc';
  /** Ordered A, B, R, L. */
  readonly legs: readonly Leg[];
  id?: string;
  /** Branch id of each enlisted leg, by store. */
  branchIds: Partial<Record<Store, string>>;
  /** Did the client send commit (only then may the transaction commit)? */
  commitSent: boolean;
  seen?: Seen;
  detail?: string;
}

export function planTransfer(r: Rng, client: number, seq: number): Transfer {
  const from = choose(r, STORES);
  const to = choose(
    r,
    STORES.filter((s) => s !== from),
  );
  // Mostly affordable amounts; one in seven is large enough to be refused often.
  const amount = r() < 1 / 7 ? between(r, 60, 150) : between(r, 1, 40);
  const legs: Leg[] = [
    { store: from, account: pick(r, ACCOUNTS), delta: -amount },
    { store: to, account: pick(r, ACCOUNTS), delta: amount },
  ].sort((x, y) => STORES.indexOf(x.store) - STORES.indexOf(y.store));
  return { client, seq, protocol: r() < 0.5 ? '2pc' : '3pc', legs, branchIds: {}, commitSent: false };
}

export function branchBody(runId: string, txId: string, leg: Leg): unknown {
  switch (leg.store) {
    case 'A':
    case 'B':
      return {
        participant: PARTICIPANT[leg.store],
        operations: [
          { sql: 'UPDATE accounts SET balance = balance + $1 WHERE id = $2 RETURNING balance', params: [leg.delta, account(leg.account)] },
          { sql: 'INSERT INTO chaos_marks (tx, delta) VALUES ($1, $2)', params: [txId, leg.delta] },
        ],
      };
    case 'R':
      return {
        participant: PARTICIPANT.R,
        operations: [
          { op: 'incrby', key: redisAccountKey(runId, leg.account), by: leg.delta, min: 0 },
          { op: 'set', key: `${redisMarkPrefix(runId)}${txId}`, value: String(leg.delta) },
        ],
      };
    case 'L':
      return { participant: PARTICIPANT.L, payload: { account: account(leg.account), delta: leg.delta } };
  }
}

type Settled = { ok: true; value: ApiAnswer } | { ok: false; error: unknown };

export interface WorkloadOptions {
  readonly runId: string;
  readonly seed: number;
  readonly clients: number;
  readonly coord: CoordinatorProcess;
  /** Set to stop: every client finishes its current transfer and returns. */
  readonly stopped: () => boolean;
}

/** Runs the clients until `stopped()`; resolves with every transfer that was begun. */
export async function runWorkload(options: WorkloadOptions): Promise<Transfer[]> {
  const { coord, runId } = options;
  const transfers: Transfer[] = [];
  const call = (method: 'GET' | 'POST', urlPath: string, body?: unknown): Promise<Settled> =>
    coord.request(method, urlPath, body, REQUEST_TIMEOUT_MS).then(
      (value) => ({ ok: true as const, value }),
      (error: unknown) => ({ ok: false as const, error }),
    );
  const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

  /** After a connection error: wait (bounded) until the coordinator answers again. */
  const waitUp = async (): Promise<void> => {
    const deadline = Date.now() + 30_000;
    while (!options.stopped() && Date.now() < deadline) {
      const h = await call('GET', '/healthz');
      if (h.ok && h.value.status === 200) return;
      await sleep(50);
    }
  };

  async function runOne(t: Transfer): Promise<'done' | 'not-begun'> {
    const begun = await call('POST', '/v1/transactions', { protocol: t.protocol, timeoutMs: TX_TIMEOUT_MS });
    if (!begun.ok) {
      await waitUp();
      return 'not-begun';
    }
    if (begun.value.status !== 201) {
      await sleep(20); // 429 / 503: try again
      return 'not-begun';
    }
    const id = begun.value.body.id as string;
    t.id = id;
    transfers.push(t);
    for (const leg of t.legs) {
      const res = await call('POST', `/v1/transactions/${id}/branches`, branchBody(runId, id, leg));
      if (!res.ok) {
        t.seen = 'unknown';
        t.detail = `enlist ${leg.store}: ${errorText(res.error)}`;
        await waitUp();
        return 'done';
      }
      if (res.value.status !== 201) {
        // 422: a CHECK constraint refused the debit (the transaction is aborted); anything else: the
        // enlist failed (the transaction aborts) or the coordinator restarted and does not know it.
        // Commit was never sent, so it can never commit; abort it so nothing waits for the timeout.
        t.seen = res.value.status === 422 ? 'refused' : 'aborted';
        t.detail = `enlist ${leg.store} ${res.value.status}: ${String(res.value.body?.error?.message ?? JSON.stringify(res.value.body))}`;
        await call('POST', `/v1/transactions/${id}/abort`, { reason: 'chaos client: enlist failed' });
        return 'done';
      }
      t.branchIds[leg.store] = res.value.body.branchId as string;
    }
    t.commitSent = true;
    const committed = await call('POST', `/v1/transactions/${id}/commit`);
    if (!committed.ok) {
      t.seen = 'unknown';
      t.detail = `commit: ${errorText(committed.error)}`;
      await waitUp();
      return 'done';
    }
    const { status, body } = committed.value;
    if (status === 200 && body.state === 'committed') t.seen = 'committed';
    else if (status === 202 && body.state === 'committing') t.seen = 'committing';
    else if (status === 409 || status === 404) t.seen = 'aborted';
    else t.seen = 'unknown';
    t.detail = `commit ${status}: ${String(body?.reason ?? body?.error?.message ?? body?.state)}`;
    return 'done';
  }

  async function client(n: number): Promise<void> {
    const r = rng(options.seed * 31 + n);
    for (let seq = 0; !options.stopped(); seq++) {
      const t = planTransfer(r, n, seq);
      // The same planned transfer is retried (as a new transaction) until it is begun.
      while (!options.stopped() && (await runOne(t)) === 'not-begun');
    }
  }

  await Promise.all(Array.from({ length: options.clients }, (_, n) => client(n)));
  return transfers;
}

export function errorText(err: unknown): string {
  if (err instanceof Error) {
    const cause = (err as { cause?: unknown }).cause;
    return cause instanceof Error ? `${err.message} (${cause.message})` : err.message;
  }
  return String(err);
}
