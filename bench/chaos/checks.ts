/**
 * After the chaos: wait (bounded) until nothing is in doubt, then check the stores directly
 * (never through the proxies):
 *
 *   leftovers     no prepared Postgres transaction, no `tcx:*` key in Redis (staged record,
 *                 index entry, lock), no ledger branch prepared/precommitted, nothing reserved
 *   outcomes      every transfer has a final outcome at the coordinator; every leg's own
 *                 evidence (chaos_marks row, Redis mark key, ledger branch committed) agrees
 *                 with it, so no transaction has different outcomes on different branches
 *   promises      every transfer the client saw committed (200, or 202 committing) is
 *                 committed; every one it saw aborted, or never asked to commit, is aborted
 *   money         every account equals its start plus the committed transfers' deltas, so
 *                 each store's total is its start plus its committed net flow, and the total
 *                 over the four stores is conserved
 *
 * With several instances the API checks go to every running instance: any of them answers for
 * any transaction (forwarded to its owner, or its adopter's), so an answer depends on nothing
 * but the transaction; two instances giving different outcomes is a violation. An instance
 * left down for good must have been adopted: a survivor's GET /v1/cluster shows its id held
 * by another instance.
 */
import { Redis } from 'ioredis';
import type { BranchEntry } from '../../src/participant-kit/branch-store.js';
import type { CoordinatorProcess } from '../../test/support/coordinator-process.js';
import { withClient } from '../../test/support/databases.js';
import { scanKeys } from '../../test/support/redis-keys.js';
import { sleep } from '../../test/support/spawned-process.js';
import {
  ACCOUNTS,
  account,
  redisAccountKey,
  redisMarkPrefix,
  runningInstances,
  START_BALANCE,
  STORES,
  type ChaosEnvironment,
  type ChaosInstance,
  type Store,
} from './environment.js';
import type { Transfer } from './workload.js';

export type Final = 'committed' | 'aborted';

export interface Leftovers {
  readonly prepared: Record<'A' | 'B', string[]>;
  readonly redisKeys: string[];
  readonly ledgerOpen: BranchEntry[];
  readonly ledgerReserved: number;
}

const leftoverCount = (l: Leftovers): number =>
  l.prepared.A.length + l.prepared.B.length + l.redisKeys.length + l.ledgerOpen.length + (l.ledgerReserved > 0 ? 1 : 0);


async function withRedis<T>(env: ChaosEnvironment, fn: (r: Redis) => Promise<T>): Promise<T> {
  const r = new Redis(env.redis.url, { maxRetriesPerRequest: 2, connectTimeout: 2_000, lazyConnect: true });
  r.on('error', () => undefined);
  try {
    await r.connect();
    return await fn(r);
  } finally {
    r.disconnect();
  }
}

const preparedIn = (db: string): Promise<string[]> =>
  withClient(db, async (c) =>
    (await c.query("SELECT gid FROM pg_prepared_xacts WHERE database = current_database() AND starts_with(gid, 'tcx:') ORDER BY gid")).rows.map(
      (r: { gid: string }) => r.gid,
    ),
  );

export async function leftovers(env: ChaosEnvironment): Promise<Leftovers> {
  const [A, B, redisKeys, branches] = await Promise.all([
    preparedIn(env.dbA),
    preparedIn(env.dbB),
    withRedis(env, (r) => scanKeys(r, 'tcx:*')),
    env.ledger.branches(),
  ]);
  return {
    prepared: { A, B },
    redisKeys,
    ledgerOpen: branches.filter((b) => b.status === 'prepared' || b.status === 'precommitted'),
    ledgerReserved: env.ledger.reserved(),
  };
}

export interface SettleResult {
  readonly settled: boolean;
  readonly ms: number;
  readonly live: number;
  readonly inDoubt: { id: string; state: string; branches: { participant: string; state: string; lastError?: string }[] }[];
  readonly leftovers: Leftovers;
  /** Several instances: what kept the cluster from idle (an instance the listing did not reach, an id of an instance left down that nobody adopted). */
  readonly cluster?: { readonly unreachable: string[]; readonly unadopted: string[] };
}

/** The first running instance (the checks' way in); throws when none runs. */
export function anyInstance(env: ChaosEnvironment): CoordinatorProcess {
  const first = runningInstances(env)[0];
  if (first === undefined) throw new Error('chaos: no coordinator instance is running');
  return first.proc;
}

/** Several instances: instances a listing did not reach, and ids of instances not running that no other instance holds. */
async function clusterState(env: ChaosEnvironment, listed: { unreachable?: string[] } | undefined): Promise<{ unreachable: string[]; unadopted: string[] }> {
  const down = env.instances.filter((i) => !i.proc.running).map((i) => i.id);
  let unadopted = down;
  if (down.length > 0) {
    const view = await anyInstance(env).request('GET', '/v1/cluster', undefined, 5_000);
    const leases = (view.body?.leases ?? []) as { coordinatorId: string; holder: string }[];
    unadopted = down.filter((id) => !leases.some((l) => l.coordinatorId === id && l.holder !== id));
  }
  return { unreachable: listed?.unreachable ?? [], unadopted };
}

/**
 * Waits until the coordinator has nothing live and nothing in doubt and the stores hold no
 * leftovers. Bounded by `maxMs`; once the coordinator is idle, leftovers get `idleGraceMs`
 * more (recovery sweeps, the ledger's 3PC timeouts) before the wait gives up.
 */
export async function settle(env: ChaosEnvironment, maxMs = 90_000, idleGraceMs = 15_000): Promise<SettleResult> {
  const t0 = Date.now();
  let idleSince: number | undefined;
  const cluster = env.instances.length > 1;
  for (;;) {
    let live = -1;
    let inDoubt: SettleResult['inDoubt'] = [];
    let state: SettleResult['cluster'];
    try {
      live = 0;
      for (const i of cluster ? runningInstances(env) : env.instances) {
        const health = await i.proc.request('GET', '/healthz', undefined, 5_000);
        live += Number(health.body?.liveTransactions ?? NaN);
      }
      if (Number.isNaN(live)) live = -1;
      const listed = await anyInstance(env).request('GET', '/v1/transactions?state=in-doubt', undefined, 5_000);
      inDoubt = (listed.body?.transactions ?? []) as SettleResult['inDoubt'];
      if (cluster) state = await clusterState(env, listed.body as { unreachable?: string[] } | undefined);
    } catch {
      live = -1;
    }
    let left: Leftovers | undefined;
    try {
      left = await leftovers(env);
    } catch {
      left = undefined;
    }
    const idle = live === 0 && inDoubt.length === 0 && (!cluster || (state !== undefined && state.unreachable.length === 0 && state.unadopted.length === 0));
    if (idle && left !== undefined && leftoverCount(left) === 0) {
      return { settled: true, ms: Date.now() - t0, live, inDoubt, leftovers: left, ...(state === undefined ? {} : { cluster: state }) };
    }
    if (idle) idleSince ??= Date.now();
    else idleSince = undefined;
    const now = Date.now();
    if (now - t0 > maxMs || (idleSince !== undefined && now - idleSince > idleGraceMs)) {
      return {
        settled: false,
        ms: now - t0,
        live,
        inDoubt,
        leftovers: left ?? (await leftovers(env)),
        ...(state === undefined ? {} : { cluster: state }),
      };
    }
    await sleep(250);
  }
}

// ---- outcomes and money ----------------------------------------------------------------

export interface Evidence {
  /** Transaction ids with a committed effect on each store. */
  readonly committed: Record<Store, Set<string>>;
  readonly balances: Record<Store, number[]>;
}

export async function collectEvidence(env: ChaosEnvironment): Promise<Evidence> {
  const pg = async (db: string): Promise<{ marks: Set<string>; balances: number[] }> =>
    withClient(db, async (c) => {
      const marks = new Set((await c.query('SELECT tx FROM chaos_marks')).rows.map((r: { tx: string }) => r.tx));
      const rows = (await c.query('SELECT id, balance FROM accounts')).rows as { id: string; balance: string }[];
      const byId = new Map(rows.map((r) => [r.id, Number(r.balance)]));
      return { marks, balances: Array.from({ length: ACCOUNTS }, (_, i) => byId.get(account(i)) ?? NaN) };
    });
  const [a, b, r] = await Promise.all([
    pg(env.dbA),
    pg(env.dbB),
    withRedis(env, async (redis) => {
      const prefix = redisMarkPrefix(env.runId);
      const marks = new Set((await scanKeys(redis, `${prefix}*`)).map((k) => k.slice(prefix.length)));
      const values = await redis.mget(...Array.from({ length: ACCOUNTS }, (_, i) => redisAccountKey(env.runId, i)));
      return { marks, balances: values.map((v) => (v === null ? NaN : Number(v))) };
    }),
  ]);
  const ledgerBalances = env.ledger.balances();
  const ledgerCommitted = new Set((await env.ledger.branches()).filter((e) => e.status === 'committed').map((e) => e.transactionId));
  return {
    committed: { A: a.marks, B: b.marks, R: r.marks, L: ledgerCommitted },
    balances: {
      A: a.balances,
      B: b.balances,
      R: r.balances,
      L: Array.from({ length: ACCOUNTS }, (_, i) => ledgerBalances[account(i)] ?? NaN),
    },
  };
}

/** What one coordinator answers about a transaction: its final state (if any) and what it said. */
async function askOutcome(proc: CoordinatorProcess, id: string): Promise<{ final?: Final; said: string }> {
  try {
    const got = await proc.request('GET', `/v1/transactions/${id}`, undefined, 10_000);
    if (got.status === 404 && got.body?.error?.code === 'UNKNOWN_TRANSACTION') {
      const by = got.body.error.details?.coordinatorId as unknown;
      return { final: 'aborted', said: `404 UNKNOWN_TRANSACTION${typeof by === 'string' ? ` (from ${by})` : ''}` };
    }
    if (got.status === 200 && (got.body.state === 'committed' || got.body.state === 'aborted')) return { final: got.body.state as Final, said: got.body.state as string };
    return { said: `GET ${got.status} ${String(got.body?.state ?? JSON.stringify(got.body))}` };
  } catch (err) {
    return { said: `GET failed: ${err instanceof Error ? err.message : String(err)}` };
  }
}

/** Which coordinator ids' logs in the shared log database hold records of the transaction (and how many). */
export async function logRecordsOf(env: ChaosEnvironment, txId: string): Promise<string> {
  if (env.logUrl === undefined) return '';
  try {
    return await withClient(env.logUrl, async (c) => {
      const log = await c.query<{ coordinator_id: string; n: string; epochs: string }>(
        `SELECT coordinator_id, count(*)::text AS n, string_agg(DISTINCT epoch::text, ',') AS epochs FROM tcx_log WHERE strpos(record, $1) > 0 GROUP BY 1 ORDER BY 1`,
        [txId],
      );
      const snap = await c.query<{ coordinator_id: string }>('SELECT coordinator_id FROM tcx_log_snapshot WHERE strpos(records, $1) > 0 ORDER BY 1', [txId]);
      const rows = log.rows.map((r) => `${r.coordinator_id} ${r.n} records (epochs ${r.epochs})`);
      return `shared log: ${rows.join(', ') || 'no records'}${snap.rows.length === 0 ? '' : `; in the snapshot of ${snap.rows.map((r) => r.coordinator_id).join(', ')}`}`;
    });
  } catch (err) {
    return `shared log: ${err instanceof Error ? err.message : String(err)}`;
  }
}

/**
 * The final outcome of every begun transfer (404 = presumed abort). With several instances,
 * every running instance is asked, and a commit any of them reports counts. Instances that
 * disagree (one says committed, another aborted or 404 unknown) are listed in `disagreements`
 * (a violation: an instance tells a client the opposite of the outcome), each asked again
 * once a lease later; an instance that answered nothing definite while another did is noted
 * in `odd`.
 */
export async function finalOutcomes(
  env: ChaosEnvironment,
  transfers: readonly Transfer[],
  notes: { readonly odd: string[]; readonly disagreements: string[]; readonly unknownToAll?: Set<string> } = { odd: [], disagreements: [] },
): Promise<Map<string, Final | string>> {
  const out = new Map<string, Final | string>();
  const queue = transfers.filter((t) => t.id !== undefined).map((t) => t.id as string);
  const cluster = env.instances.length > 1;
  const asked: readonly ChaosInstance[] = cluster ? runningInstances(env) : env.instances;
  const disagreed: { id: string; said: string; at: string }[] = [];
  const askAll = async (id: string): Promise<{ id: string; final?: Final; said: string }[]> =>
    Promise.all(asked.map(async (i) => ({ id: i.id, ...(await askOutcome(i.proc, id)) })));
  const show = (answers: readonly { id: string; said: string }[]): string => answers.map((a) => `${a.id}: ${a.said}`).join('; ');
  await Promise.all(
    Array.from({ length: 8 }, async () => {
      for (let id = queue.shift(); id !== undefined; id = queue.shift()) {
        if (!cluster) {
          const got = await (env.instances[0] as ChaosInstance).proc.request('GET', `/v1/transactions/${id}`, undefined, 10_000);
          if (got.status === 404 && got.body?.error?.code === 'UNKNOWN_TRANSACTION') {
            out.set(id, 'aborted');
            notes.unknownToAll?.add(id);
          } else if (got.status === 200 && (got.body.state === 'committed' || got.body.state === 'aborted')) out.set(id, got.body.state as Final);
          else out.set(id, `GET ${got.status} ${String(got.body?.state ?? JSON.stringify(got.body))}`);
          continue;
        }
        const at = new Date().toISOString().slice(11, 23);
        const answers = await askAll(id);
        const definite = new Set(answers.flatMap((a) => (a.final === undefined ? [] : [a.final])));
        if (definite.size === 0) {
          out.set(id, `instances answer ${show(answers)}`);
          continue;
        }
        out.set(id, definite.has('committed') ? 'committed' : 'aborted');
        if (answers.every((a) => a.said.startsWith('404 '))) notes.unknownToAll?.add(id);
        if (definite.size > 1) disagreed.push({ id, said: show(answers), at });
        else if (answers.some((a) => a.final === undefined)) notes.odd.push(`tx ${id}: ${show(answers)}`);
      }
    }),
  );
  if (disagreed.length > 0) await sleep(2_000);
  for (const [n, d] of disagreed.entries()) {
    const again = n < 20 ? `; asked again at ${new Date().toISOString().slice(11, 23)}: ${show(await askAll(d.id))}` : '';
    const log = n < 20 ? `; ${await logRecordsOf(env, d.id)}` : '';
    notes.disagreements.push(`tx ${d.id}: at ${d.at} ${d.said}${again}${log}`);
  }
  return out;
}

export interface CheckResult {
  readonly violations: string[];
  readonly committed: number;
  readonly aborted: number;
  readonly unresolved: number;
  /** One-phase commits no instance knows (killed before the end record): the store's evidence decides. */
  readonly onePhaseUnknown: number;
  readonly totals: Record<Store, { actual: number; expected: number }>;
}

const sum = (xs: readonly number[]): number => xs.reduce((s, x) => s + x, 0);

/**
 * `unknownToAll`: transactions no instance knows (404 everywhere). For 2PC and 3PC that is
 * presumed abort. A one-phase commit cut short by a coordinator kill (before its end record)
 * is unknown too, and its store alone knows what it did (README, known limits): its outcome is
 * the store's evidence, and every other check holds against that — a client told "aborted"
 * needs it not applied; one told "committed" needs the coordinator to know it (its end record
 * is forced before that answer).
 */
export function checkInvariants(
  transfers: readonly Transfer[],
  finals: Map<string, Final | string>,
  evidence: Evidence,
  unknownToAll: ReadonlySet<string> = new Set(),
): CheckResult {
  const violations: string[] = [];
  const expected: Record<Store, number[]> = {
    A: Array<number>(ACCOUNTS).fill(START_BALANCE),
    B: Array<number>(ACCOUNTS).fill(START_BALANCE),
    R: Array<number>(ACCOUNTS).fill(START_BALANCE),
    L: Array<number>(ACCOUNTS).fill(START_BALANCE),
  };
  let committed = 0;
  let aborted = 0;
  let unresolved = 0;
  let onePhaseUnknown = 0;
  const known = new Set<string>();
  for (const t of transfers) {
    if (t.id === undefined) continue;
    const id = t.id;
    known.add(id);
    const applied = t.legs.filter((l) => evidence.committed[l.store].has(id)).map((l) => l.store);
    const storeDecides = t.onePhase === true && unknownToAll.has(id);
    if (storeDecides) onePhaseUnknown++;
    const final = storeDecides ? (applied.length > 0 ? 'committed' : 'aborted') : (finals.get(id) ?? 'missing');
    const label = `tx ${id} (${t.begunOn === undefined ? '' : `begun on ${t.begunOn} at ${t.begunAt ?? '?'}${t.via === undefined ? '' : ` via ${t.via}`}${t.answeredAt === undefined ? '' : `, answered at ${t.answeredAt}`}, `}${t.protocol}, ${t.legs.map((l) => `${l.store}${l.delta > 0 ? '+' : ''}${l.delta}`).join(' ')}; client saw ${t.seen ?? 'nothing'}${t.detail === undefined ? '' : `: ${t.detail}`})`;
    if (final !== 'committed' && final !== 'aborted') {
      unresolved++;
      violations.push(`no final outcome: ${label}: coordinator ${final}`);
      continue;
    }
    if (final === 'committed') committed++;
    else aborted++;
    if (applied.length > 0 && applied.length < t.legs.length) {
      violations.push(`different outcomes on different branches: ${label}: applied on ${applied.join(',')} only; coordinator ${final}`);
    } else if (final === 'committed' && applied.length === 0) {
      violations.push(`committed but applied nowhere: ${label}`);
    } else if (final === 'aborted' && applied.length > 0) {
      violations.push(`aborted but applied: ${label}: applied on ${applied.join(',')}`);
    }
    if (storeDecides && t.seen === 'committed') {
      // Its end record is forced before the answer: a commit the client heard is never forgotten.
      violations.push(`client saw committed but no instance knows the transaction (404): ${label}`);
    }
    if ((t.seen === 'committed' || t.seen === 'committing') && final !== 'committed') {
      violations.push(`client saw ${t.seen} but the transaction is ${final}: ${label}`);
    }
    if ((t.seen === 'aborted' || t.seen === 'refused' || !t.commitSent) && final !== 'aborted') {
      violations.push(`client saw ${t.seen ?? 'nothing'} (commit ${t.commitSent ? '' : 'never '}sent) but the transaction is ${final}: ${label}`);
    }
    if (final === 'committed') {
      for (const leg of t.legs) expected[leg.store][leg.account] = (expected[leg.store][leg.account] ?? NaN) + leg.delta;
    }
  }
  for (const s of STORES) {
    for (const id of evidence.committed[s]) if (!known.has(id)) violations.push(`store ${s} holds an effect of a transaction no client began: ${id}`);
  }
  const totals = {} as Record<Store, { actual: number; expected: number }>;
  for (const s of STORES) {
    totals[s] = { actual: sum(evidence.balances[s]), expected: sum(expected[s]) };
    if (totals[s].actual !== totals[s].expected) {
      violations.push(`store ${s} total is ${totals[s].actual}, expected ${totals[s].expected} (start ${ACCOUNTS * START_BALANCE} + committed net flow)`);
    }
    for (let i = 0; i < ACCOUNTS; i++) {
      if (evidence.balances[s][i] !== expected[s][i]) {
        violations.push(`store ${s} ${account(i)} is ${String(evidence.balances[s][i])}, expected ${String(expected[s][i])} (start + committed deltas)`);
      }
    }
  }
  const grand = sum(STORES.map((s) => totals[s].actual));
  if (grand !== STORES.length * ACCOUNTS * START_BALANCE) {
    violations.push(`money not conserved: total over the four stores is ${grand}, expected ${STORES.length * ACCOUNTS * START_BALANCE}`);
  }
  return { violations, committed, aborted, unresolved, onePhaseUnknown, totals };
}

/** Violations for what settle() left behind, with what the coordinator says about each transaction. */
export async function leftoverViolations(env: ChaosEnvironment, result: SettleResult): Promise<string[]> {
  const out: string[] = [];
  if (result.live !== 0) out.push(`coordinator still has ${result.live} live transactions ${result.ms} ms after healing`);
  for (const id of result.cluster?.unreachable ?? []) out.push(`the in-doubt listing did not reach instance ${id} ${result.ms} ms after healing`);
  for (const id of result.cluster?.unadopted ?? []) out.push(`${id} is down and no other instance holds its id (GET /v1/cluster) ${result.ms} ms after healing`);
  for (const tx of result.inDoubt) {
    const pending = tx.branches.filter((b) => b.state !== 'committed' && b.state !== 'aborted' && b.state !== 'read-only');
    out.push(
      `still in doubt: tx ${tx.id} ${tx.state}: ${pending.map((b) => `${b.participant} ${b.state}${b.lastError === undefined ? '' : ` (${b.lastError})`}`).join('; ')}`,
    );
  }
  const outcome = async (txId: string): Promise<string> => {
    try {
      const got = await anyInstance(env).request('GET', `/v1/transactions/${txId}`, undefined, 5_000);
      if (got.status !== 200) return `coordinator: ${got.status}`;
      const branches = (got.body.branches as { participant: string; state: string; vote?: string }[])
        .map((b) => `${b.participant} ${b.state}${b.vote === undefined ? '' : ` vote ${b.vote}`}`)
        .join(', ');
      return `coordinator: ${String(got.body.state)} [${branches}]`;
    } catch (err) {
      return `coordinator: ${String(err)}`;
    }
  };
  const l = result.leftovers;
  for (const s of ['A', 'B'] as const) {
    for (const gid of l.prepared[s]) out.push(`left prepared in postgres ${s}: ${gid}; ${await outcome(gid.split(':')[2] ?? '')}`);
  }
  for (const key of l.redisKeys) out.push(`left in redis: ${key}`);
  for (const e of l.ledgerOpen) {
    const said = await outcome(e.transactionId);
    // The ledger voted yes, its answer was lost, the coordinator counted a no: it must still send abort.
    const known = /^coordinator: aborted \[.*ledger aborted vote no/.test(said)
      ? ' — a lost prepare answer whose branch never heard the abort (compare test/crash/network-faults.test.ts (e))'
      : '';
    out.push(`left ${e.status} in the ledger: ${e.transactionId}/${e.branchId} (${e.protocol ?? '2pc'}, since ${e.updatedAt}); ${said}${known}`);
  }
  if (l.ledgerReserved > 0) out.push(`ledger still reserves ${l.ledgerReserved}`);
  return out;
}
