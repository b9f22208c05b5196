/**
 * The transfer workload: C clients, each moving an amount between two of the four stores
 * (A, B: UPDATE with CHECK balance >= 0; R: incrby with min 0; L: the ledger's reserve and
 * apply), 2PC or 3PC at random. One transfer in six moves money between two accounts of
 * one Postgres store instead: a lone branch, so a one-phase commit. Every leg also leaves the
 * store's own evidence of its outcome — a row in chaos_marks (Postgres, one per branch), a
 * mark key (Redis), the branch status in the ledger's store — so the checks can compare
 * outcomes branch by branch.
 *
 * Transfers run step by step (begin, enlist in the fixed order A, B, R, L, commit), so the
 * client knows every transaction id, also of a transfer whose request died with the
 * coordinator. The plan of each client is seeded.
 *
 * With several coordinator instances the clients are spread over them round-robin (client n
 * starts on instance n mod N); a client whose instance fails with a connection error (or
 * answers 503 to a begin) moves to the next instance that answers, and goes back to its own
 * once that answers again. One transfer in four sends its enlists and its commit through
 * another instance than the one that began it, so they are forwarded to the owner
 * (src/cluster/forwarding.ts).
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
  /** Ordered A, B, R, L (within one store by account: a consistent lock order). */
  readonly legs: readonly Leg[];
  /** Both legs on one Postgres store: one branch, committed one-phase. */
  readonly onePhase?: true;
  id?: string;
  /** Several instances: the instance it was begun on, and the one its later requests went through when another. */
  begunOn?: string;
  via?: string;
  /** Wall-clock time (HH:MM:SS.mmm) of the begin and of the last answer, as the scheduler's notes show it. */
  begunAt?: string;
  answeredAt?: string;
  /** Branch id of each enlisted leg, by store. */
  branchIds: Partial<Record<Store, string>>;
  /** Did the client send commit (only then may the transaction commit)? */
  commitSent: boolean;
  seen?: Seen;
  detail?: string;
}

/** Mostly affordable amounts; one in seven is large enough to be refused often. */
function plannedAmount(r: Rng): number {
  return r() < 1 / 7 ? between(r, 60, 150) : between(r, 1, 40);
}

export function planTransfer(r: Rng, client: number, seq: number): Transfer {
  if (r() < 1 / 6) {
    const store = choose(r, ['A', 'B'] as const);
    const from = pick(r, ACCOUNTS);
    const to = (from + 1 + pick(r, ACCOUNTS - 1)) % ACCOUNTS;
    const amount = plannedAmount(r);
    const legs: Leg[] = [
      { store, account: from, delta: -amount },
      { store, account: to, delta: amount },
    ].sort((x, y) => x.account - y.account);
    return { client, seq, protocol: r() < 0.5 ? '2pc' : '3pc', legs, onePhase: true, branchIds: {}, commitSent: false };
  }
  const from = choose(r, STORES);
  const to = choose(
    r,
    STORES.filter((s) => s !== from),
  );
  const amount = plannedAmount(r);
  const legs: Leg[] = [
    { store: from, account: pick(r, ACCOUNTS), delta: -amount },
    { store: to, account: pick(r, ACCOUNTS), delta: amount },
  ].sort((x, y) => STORES.indexOf(x.store) - STORES.indexOf(y.store));
  return { client, seq, protocol: r() < 0.5 ? '2pc' : '3pc', legs, branchIds: {}, commitSent: false };
}

/** The enlist of one leg; `marked`: its store's evidence row is already part of the branch (a second leg on one Postgres store). */
export function branchBody(runId: string, txId: string, leg: Leg, marked = false): unknown {
  switch (leg.store) {
    case 'A':
    case 'B':
      return {
        participant: PARTICIPANT[leg.store],
        operations: [
          { sql: 'UPDATE accounts SET balance = balance + $1 WHERE id = $2 RETURNING balance', params: [leg.delta, account(leg.account)] },
          ...(marked ? [] : [{ sql: 'INSERT INTO chaos_marks (tx, delta) VALUES ($1, $2)', params: [txId, leg.delta] }]),
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

export interface WorkloadProgress {
  begun: number;
  /** Answered 200 committed. */
  committed: number;
}

/** A coordinator process the clients can send to. */
export interface Endpoint {
  readonly id: string;
  readonly proc: CoordinatorProcess;
}

export interface WorkloadOptions {
  readonly runId: string;
  readonly seed: number;
  readonly clients: number;
  /** The coordinator instances (one without a shared log). */
  readonly instances: readonly Endpoint[];
  /** Counted as the clients go (for progress lines). */
  readonly progress?: WorkloadProgress;
  /** Set to stop: every client finishes its current transfer and returns. */
  readonly stopped: () => boolean;
}

/** Runs the clients until `stopped()`; resolves with every transfer that was begun. */
export async function runWorkload(options: WorkloadOptions): Promise<Transfer[]> {
  const { instances, runId } = options;
  const n = instances.length;
  const transfers: Transfer[] = [];
  const endpoint = (i: number): Endpoint => instances[((i % n) + n) % n] as Endpoint;
  const call = (at: number, method: 'GET' | 'POST', urlPath: string, body?: unknown): Promise<Settled> =>
    endpoint(at)
      .proc.request(method, urlPath, body, REQUEST_TIMEOUT_MS)
      .then(
        (value) => ({ ok: true as const, value }),
        (error: unknown) => ({ ok: false as const, error }),
      );
  const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

  /** A client: where it sends (an index into the instances). */
  interface Client {
    at: number;
  }

  /**
   * After a connection error: wait (bounded) until an instance answers again — the same one with
   * one instance; else the next ones in turn, starting after the one that failed.
   */
  const waitUp = async (c: Client): Promise<void> => {
    const deadline = Date.now() + 30_000;
    for (let k = n > 1 ? 1 : 0; !options.stopped() && Date.now() < deadline; k++) {
      const at = c.at + k;
      const h = await call(at, 'GET', '/healthz');
      if (h.ok && h.value.status === 200) {
        c.at = at % n;
        return;
      }
      if (n === 1 || k % n === 0) await sleep(50);
    }
  };

  async function runOne(c: Client, t: Transfer, forward: boolean): Promise<'done' | 'not-begun'> {
    const begun = await call(c.at, 'POST', '/v1/transactions', { protocol: t.protocol, timeoutMs: TX_TIMEOUT_MS });
    if (!begun.ok) {
      await waitUp(c);
      return 'not-begun';
    }
    if (begun.value.status !== 201) {
      // 429 / 503: try again (with several instances, a 503 sends the client to another one).
      if (n > 1 && begun.value.status === 503) await waitUp(c);
      else await sleep(20);
      return 'not-begun';
    }
    const id = begun.value.body.id as string;
    t.id = id;
    t.begunAt = clock();
    transfers.push(t);
    if (options.progress !== undefined) options.progress.begun++;
    // With several instances, maybe through another running one (forwarded to the owner).
    let at = c.at;
    if (n > 1) {
      t.begunOn = endpoint(at).id;
      if (forward) {
        // The next other instance that answers (a process that is starting runs, but does not listen yet).
        for (let k = 1; k < n; k++) {
          if (!endpoint(c.at + k).proc.running) continue;
          const h = await call(c.at + k, 'GET', '/healthz');
          if (h.ok && h.value.status === 200) {
            at = (c.at + k) % n;
            t.via = endpoint(at).id;
            break;
          }
        }
      }
    }
    const movedOn = async (): Promise<void> => {
      // The instance that failed is the one the request went to.
      if (at === c.at || n === 1) await waitUp(c);
      else {
        const via: Client = { at };
        await waitUp(via);
      }
    };
    const marked = new Set<Store>();
    for (const leg of t.legs) {
      const res = await call(at, 'POST', `/v1/transactions/${id}/branches`, branchBody(runId, id, leg, marked.has(leg.store)));
      marked.add(leg.store);
      if (!res.ok) {
        t.seen = 'unknown';
        t.detail = `enlist ${leg.store}: ${errorText(res.error)}`;
        await movedOn();
        return 'done';
      }
      if (res.value.status !== 201) {
        // 422: a CHECK constraint refused the debit (the transaction is aborted); anything else: the
        // enlist failed (the transaction aborts) or the coordinator restarted and does not know it.
        // Commit was never sent, so it can never commit; abort it so nothing waits for the timeout.
        t.seen = res.value.status === 422 ? 'refused' : 'aborted';
        t.detail = `enlist ${leg.store} ${res.value.status}: ${String(res.value.body?.error?.message ?? JSON.stringify(res.value.body))}`;
        await call(at, 'POST', `/v1/transactions/${id}/abort`, { reason: 'chaos client: enlist failed' });
        return 'done';
      }
      t.branchIds[leg.store] = res.value.body.branchId as string;
    }
    t.commitSent = true;
    const committed = await call(at, 'POST', `/v1/transactions/${id}/commit`);
    if (!committed.ok) {
      t.seen = 'unknown';
      t.detail = `commit: ${errorText(committed.error)}`;
      await movedOn();
      return 'done';
    }
    t.answeredAt = clock();
    const { status, body } = committed.value;
    if (status === 200 && body.state === 'committed') {
      t.seen = 'committed';
      if (options.progress !== undefined) options.progress.committed++;
    } else if (status === 202 && body.state === 'committing') t.seen = 'committing';
    else if (status === 409 || status === 404) t.seen = 'aborted';
    else t.seen = 'unknown';
    t.detail = `commit ${status}: ${String(body?.reason ?? body?.error?.message ?? body?.state)}`;
    return 'done';
  }

  async function client(k: number): Promise<void> {
    const r = rng(options.seed * 31 + k);
    // Which transfers go through another instance: a stream of its own, so the transfers are the same for any N.
    const routing = rng((options.seed * 31 + k) ^ 0x0f0f_5a5a);
    const home = k % n;
    const c: Client = { at: home };
    for (let seq = 0; !options.stopped(); seq++) {
      const t = planTransfer(r, k, seq);
      const forward = n > 1 && routing() < 0.25;
      if (c.at !== home && seq % 5 === 0 && endpoint(home).proc.running) {
        // Moved away after a failure: back home once it answers again, so the clients stay spread.
        const h = await call(home, 'GET', '/healthz');
        if (h.ok && h.value.status === 200) c.at = home;
      }
      // The same planned transfer is retried (as a new transaction) until it is begun.
      while (!options.stopped() && (await runOne(c, t, forward)) === 'not-begun');
    }
  }

  await Promise.all(Array.from({ length: options.clients }, (_, k) => client(k)));
  return transfers;
}

const clock = (): string => new Date().toISOString().slice(11, 23);

export function errorText(err: unknown): string {
  if (err instanceof Error) {
    const cause = (err as { cause?: unknown }).cause;
    return cause instanceof Error ? `${err.message} (${cause.message})` : err.message;
  }
  return String(err);
}
