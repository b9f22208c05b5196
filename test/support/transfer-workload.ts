/**
 * The transfer workload the crash acceptance tests share: concurrent clients move money
 * between accounts held in several stores through a coordinator child process, while a
 * controller SIGKILLs the coordinator (plainly, then at fail points) and restarts it.
 *
 * Each transfer moves an amount between two stores (a debit leg and a credit leg), enlisted in
 * the stores' fixed order (no cross-database deadlock can form), plus any extra branches the
 * test adds (the event it publishes). Transfers run step by step (begin, enlist…, commit), so
 * the client knows every transaction id, even of a transfer whose request died with the
 * coordinator. Mostly affordable amounts; one in seven is large enough to be refused often
 * (CHECK constraints, Redis bounds).
 *
 * After the run, `finalOutcomes` asks the restarted coordinator for each transaction and
 * `reconcile` checks what clients were told against it and computes every account's
 * expected balance: its start plus the deltas of the transfers reported committed.
 */
import { expect } from 'vitest';
import { settle, sleep } from '../crash/helpers.js';
import type { ApiAnswer, CoordinatorProcess } from './coordinator-process.js';
import { pick, rng, type Rng } from './seeded-random.js';

export interface WorkloadStore {
  /** Short name used in transfers and reports ('A', 'M', 'R', …). */
  readonly name: string;
  /** The branch entry (request body) that adds `delta` to `account`. */
  branch(account: number, delta: number): unknown;
  balances(): Promise<number[]>;
}

export interface Leg {
  readonly store: string;
  readonly account: number;
  readonly delta: number;
}

export interface Transfer {
  readonly client: number;
  readonly seq: number;
  /** In the stores' order. */
  readonly legs: readonly Leg[];
  id?: string;
  /** What the client saw. */
  seen?: 'committed' | 'committing' | 'aborted' | 'refused' | 'unknown';
  detail?: string;
  /** What the coordinator reports after the final restart. */
  final?: 'committed' | 'aborted';
}

export interface WorkloadOptions {
  readonly coordinator: CoordinatorProcess;
  readonly stores: readonly WorkloadStore[];
  readonly accounts: number;
  readonly clients: number;
  readonly seed: number;
  readonly txTimeoutMs: number;
  readonly requestTimeoutMs: number;
  /** Workload after the last restart, before the clients are told to stop. */
  readonly tailMs: number;
  /** How long a restart armed with a fail point may run before it is killed by hand. */
  readonly failPointWaitMs: number;
  /** Branches a transfer carries after its legs (e.g. the event it publishes). */
  extraBranches?(t: Transfer): unknown[];
}

export interface WorkloadRun {
  readonly transfers: Transfer[];
  readonly kills: string[];
}

export type Balances = Record<string, number[]>;

function planTransfer(r: Rng, stores: readonly WorkloadStore[], accounts: number, client: number, seq: number): Transfer {
  const names = stores.map((s) => s.name);
  const from = names[pick(r, names.length)] as string;
  const others = names.filter((s) => s !== from);
  const to = others[pick(r, others.length)] as string;
  const amount = r() < 1 / 7 ? 60 + pick(r, 91) : 1 + pick(r, 40);
  const legs: Leg[] = [
    { store: from, account: pick(r, accounts), delta: -amount },
    { store: to, account: pick(r, accounts), delta: amount },
  ].sort((x, y) => names.indexOf(x.store) - names.indexOf(y.store));
  return { client, seq, legs };
}

export async function allBalances(stores: readonly WorkloadStore[]): Promise<Balances> {
  const out: Balances = {};
  for (const s of stores) out[s.name] = await s.balances();
  return out;
}

/**
 * Runs the clients while the coordinator is SIGKILLed mid-flight, then restarted armed with
 * `after-decision-logged:N` and then `after-prepare:N` (each killed there, or by hand when not
 * reached), then restarted clean for the tail. Resolves when every client has stopped.
 */
export async function runTransferWorkload(o: WorkloadOptions): Promise<WorkloadRun> {
  const c = o.coordinator;
  const started = Date.now();
  const byName = new Map(o.stores.map((s) => [s.name, s]));
  const transfers: Transfer[] = [];
  let stop = false;
  const call = (method: 'GET' | 'POST', path: string, body?: unknown): Promise<{ ok: true; value: ApiAnswer } | { ok: false; error: unknown }> =>
    settle(c.request(method, path, body, o.requestTimeoutMs));

  /** After a connection error: wait (bounded) until the coordinator answers again. */
  const waitUp = async (): Promise<void> => {
    const deadline = Date.now() + 20_000;
    while (!stop && Date.now() < deadline) {
      const h = await call('GET', '/healthz');
      if (h.ok && h.value.status === 200) return;
      await sleep(50);
    }
  };

  async function runOne(t: Transfer): Promise<'done' | 'not-begun'> {
    const begun = await call('POST', '/v1/transactions', { timeoutMs: o.txTimeoutMs });
    if (!begun.ok) {
      await waitUp();
      return 'not-begun';
    }
    if (begun.value.status !== 201) {
      await sleep(20); // 429 / 503 while shutting down: try again
      return 'not-begun';
    }
    const id = begun.value.body.id as string;
    t.id = id;
    transfers.push(t);
    const branches = [...t.legs.map((leg) => (byName.get(leg.store) as WorkloadStore).branch(leg.account, leg.delta)), ...(o.extraBranches?.(t) ?? [])];
    for (const branch of branches) {
      const res = await call('POST', `/v1/transactions/${id}/branches`, branch);
      if (!res.ok) {
        t.seen = 'unknown';
        t.detail = `enlist: ${String(res.error)}`;
        await waitUp();
        return 'done';
      }
      if (res.value.status !== 201) {
        // 422: a CHECK constraint refused the debit (the transaction is aborted); 404/409:
        // the coordinator restarted meanwhile and does not know, or aborted, this transaction.
        t.seen = res.value.status === 422 ? 'refused' : 'aborted';
        t.detail = `enlist ${res.value.status}: ${JSON.stringify(res.value.body?.error?.message ?? res.value.body)}`;
        return 'done';
      }
    }
    const committed = await call('POST', `/v1/transactions/${id}/commit`);
    if (!committed.ok) {
      t.seen = 'unknown';
      t.detail = `commit: ${String(committed.error)}`;
      await waitUp();
      return 'done';
    }
    const { status, body } = committed.value;
    if (status === 200 && body.state === 'committed') t.seen = 'committed';
    else if (status === 202 && body.state === 'committing') t.seen = 'committing';
    else if (status === 409 || status === 404) t.seen = 'aborted';
    else t.seen = 'unknown';
    t.detail = `commit ${status}: ${String(body?.reason ?? body?.error?.code ?? body?.state)}`;
    return 'done';
  }

  async function client(n: number): Promise<void> {
    const r = rng(o.seed * 31 + n);
    for (let seq = 0; !stop; seq++) {
      const t = planTransfer(r, o.stores, o.accounts, n, seq);
      // The same planned transfer is retried (as a new transaction) until it is begun.
      while (!stop && (await runOne(t)) === 'not-begun');
    }
  }

  const ctl = rng(o.seed);
  const kills: string[] = [];
  const expectKilled = async (): Promise<void> => {
    const exit = await c.waitExit();
    expect(exit.signal, `coordinator exit ${JSON.stringify(exit)}`).toBe('SIGKILL');
  };
  /** Restart; with a fail point armed the new process may die before it answered /healthz. */
  const restart = async (failPoint?: string): Promise<void> => {
    try {
      await c.restart(failPoint === undefined ? {} : { TCX_FAIL_POINT: failPoint });
    } catch (err) {
      if (failPoint === undefined || c.running) throw err;
    }
  };
  /** Armed restart: waits for the fail point to fire (bounded), else SIGKILLs by hand. */
  const killAtFailPoint = async (failPoint: string): Promise<void> => {
    const fired = await Promise.race([c.exited.then(() => true), sleep(o.failPointWaitMs).then(() => false)]);
    if (!fired) await c.kill();
    await expectKilled();
    kills.push(fired ? `${failPoint} @${Date.now() - started} ms` : `${failPoint} not reached: plain kill @${Date.now() - started} ms`);
  };

  const workload = Promise.all(Array.from({ length: o.clients }, (_, n) => client(n)));
  const controller = (async () => {
    await sleep(2_000 + pick(ctl, 2_000));
    await c.kill();
    await expectKilled();
    kills.push(`plain SIGKILL mid-flight @${Date.now() - started} ms`);
    const fp1 = `after-decision-logged:${10 + pick(ctl, 20)}`;
    await restart(fp1);
    await killAtFailPoint(fp1);
    const fp2 = `after-prepare:${10 + pick(ctl, 20)}`;
    await restart(fp2);
    await killAtFailPoint(fp2);
    await restart();
    await sleep(o.tailMs);
  })();
  try {
    await controller;
  } finally {
    stop = true;
    await workload;
  }
  return { transfers, kills };
}

/** Sets `final` on every transfer from the coordinator's answers; returns what could not be read. */
export async function finalOutcomes(c: CoordinatorProcess, transfers: readonly Transfer[]): Promise<string[]> {
  const problems: string[] = [];
  const queue = [...transfers];
  await Promise.all(
    Array.from({ length: 8 }, async () => {
      for (let t = queue.shift(); t !== undefined; t = queue.shift()) {
        const got = await c.request('GET', `/v1/transactions/${t.id as string}`);
        if (got.status === 404 && got.body?.error?.code === 'UNKNOWN_TRANSACTION') t.final = 'aborted'; // presumed abort
        else if (got.status === 200 && (got.body.state === 'committed' || got.body.state === 'aborted')) t.final = got.body.state;
        else problems.push(`transfer ${t.client}/${t.seq} ${t.id as string}: GET ${got.status} ${JSON.stringify(got.body)}`);
      }
    }),
  );
  return problems;
}

export interface Reconciliation {
  /** Every account's start plus the deltas of the transfers reported committed. */
  readonly expected: Balances;
  /** Answers a client got that the final outcome contradicts. */
  readonly problems: string[];
  readonly committed: number;
  readonly aborted: number;
  /** How many transfers each kind of answer went to, and how unknown outcomes were resolved. */
  readonly summary: string;
}

/** Checks what the clients saw against the final outcomes (call `finalOutcomes` first). */
export function reconcile(before: Balances, transfers: readonly Transfer[]): Reconciliation {
  const expected: Balances = Object.fromEntries(Object.entries(before).map(([k, v]) => [k, [...v]]));
  const problems: string[] = [];
  const seen: Record<string, number> = {};
  const unknownResolved = { committed: 0, aborted: 0 };
  const why: Record<string, number> = { check: 0, bounds: 0, locked: 0, other: 0 };
  let committed = 0;
  let aborted = 0;
  for (const t of transfers) {
    seen[t.seen ?? 'none'] = (seen[t.seen ?? 'none'] ?? 0) + 1;
    if (t.seen === 'refused' || t.seen === 'aborted') {
      const d = t.detail ?? '';
      const kind = /constraint/i.test(d) ? 'check' : /out of bounds/i.test(d) ? 'bounds' : /lock/i.test(d) ? 'locked' : 'other';
      why[kind] = (why[kind] ?? 0) + 1;
    }
    if (t.final === 'committed') {
      committed++;
      for (const leg of t.legs) {
        const row = expected[leg.store] as number[];
        row[leg.account] = (row[leg.account] ?? Number.NaN) + leg.delta;
      }
    } else aborted++;
    if (t.seen === 'unknown') unknownResolved[t.final as 'committed' | 'aborted']++;
    // What the client was told must hold: a commit answer is never undone, an abort never applied.
    if (t.seen === 'committed' || t.seen === 'committing') {
      if (t.final !== 'committed') problems.push(`transfer ${t.id as string} answered ${t.seen} but is ${String(t.final)}`);
    } else if (t.seen === 'aborted' || t.seen === 'refused') {
      if (t.final !== 'aborted') problems.push(`transfer ${t.id as string} answered ${t.seen} (${t.detail ?? ''}) but is ${String(t.final)}`);
    }
  }
  const summary =
    `${transfers.length} transfers begun, ${committed} committed, ${aborted} aborted; client saw ${JSON.stringify(seen)} ` +
    `(refusals: ${JSON.stringify(why)}); unknown outcomes resolved as ${JSON.stringify(unknownResolved)}`;
  return { expected, problems, committed, aborted, summary };
}

export const sum = (xs: readonly number[]): number => xs.reduce((s, x) => s + x, 0);
