/**
 * An example HTTP participant: a tiny ledger of account balances that takes
 * part in coordinator transactions through the participant kit. Branch
 * payload: `{ "account": "alice", "delta": -25 }`. Prepare reserves (votes no
 * when the balance would go negative), commit applies, abort releases.
 *
 *   PORT=7081 LEDGER_FILE=./ledger COORDINATOR_URL=http://127.0.0.1:7070 \
 *     node dist/examples/ledger-service.js
 *
 * HOST is the listen address (default 127.0.0.1; 0.0.0.0 in a container).
 * It speaks 2PC and 3PC. COORDINATOR_URL is where an uncertain or
 * precommitted 3PC branch asks for the outcome when its timeout expires
 * (UNCERTAIN_TIMEOUT_MS, PRECOMMIT_TIMEOUT_MS; ON_UNREACHABLE_UNCERTAIN=wait|abort,
 * see src/participant-kit/termination.ts before choosing abort), with
 * COORDINATOR_TOKEN as its bearer token when the coordinator requires one.
 *
 * GET /accounts shows the balances. Balances and branch state are kept in
 * files next to each other and fsynced on every change.
 */

import fs from 'node:fs/promises';
import Fastify, { type FastifyInstance } from 'fastify';
import { FileBranchStore, MemoryBranchStore, type BranchStore } from '../participant-kit/branch-store.js';
import { participantRoutes, type ParticipantKitOptions } from '../participant-kit/participant-routes.js';

export interface LedgerPayload {
  readonly account: string;
  readonly delta: number;
}

export interface LedgerOptions {
  readonly balances: Record<string, number>;
  readonly store?: BranchStore;
  /** When set, balances are persisted here (JSON, fsynced). */
  readonly balancesFile?: string;
  /** 3PC timeouts, coordinator URL, retry policy, ... of the participant kit. */
  readonly kit?: ParticipantKitOptions;
}

export interface Ledger {
  readonly app: FastifyInstance;
  balances(): Record<string, number>;
  reserved(): number;
}

function isLedgerPayload(p: unknown): p is LedgerPayload {
  return (
    typeof p === 'object' &&
    p !== null &&
    typeof (p as LedgerPayload).account === 'string' &&
    Number.isSafeInteger((p as LedgerPayload).delta)
  );
}

export async function buildLedger(options: LedgerOptions): Promise<Ledger> {
  const balances = new Map(Object.entries(options.balances));
  // Branches whose commit reached the balances file. The kit marks a branch committed only after
  // the handler returns, so a crash in between re-runs commit after the restart: this set makes
  // that repeat a no-op. Keys leave it once the branch store durably says committed.
  const applied = new Map<string, { transactionId: string; branchId: string }>();
  if (options.balancesFile !== undefined) {
    try {
      const saved = JSON.parse(await fs.readFile(options.balancesFile, 'utf8')) as
        | Record<string, number>
        | { balances: Record<string, number>; applied?: Array<[string, string, string]> };
      const savedBalances = typeof saved.balances === 'object' ? (saved.balances as Record<string, number>) : (saved as Record<string, number>);
      for (const [k, v] of Object.entries(savedBalances)) balances.set(k, v);
      if (Array.isArray(saved.applied)) {
        for (const [k, transactionId, branchId] of saved.applied as Array<[string, string, string]>) applied.set(k, { transactionId, branchId });
      }
    } catch {
      // first start: keep the initial balances
    }
  }
  const store = options.store ?? new MemoryBranchStore();
  const keyOf = (transactionId: string, branchId: string, account: string): string => `${transactionId}/${branchId}#${account}`;
  const reservations = new Map<string, number>(); // branch key -> amount withdrawn and held
  // Branches prepared before a restart hold their reservation again.
  for (const e of await store.list()) {
    if ((e.status === 'prepared' || e.status === 'precommitted') && isLedgerPayload(e.payload) && e.payload.delta < 0) {
      reservations.set(keyOf(e.transactionId, e.branchId, e.payload.account), -e.payload.delta);
    }
  }
  const held = (account: string, payloads: Iterable<[string, number]>): number => {
    let sum = 0;
    for (const [k, v] of payloads) if (k.endsWith(`#${account}`)) sum += v;
    return sum;
  };
  let persisting: Promise<void> = Promise.resolve();
  const persist = (): Promise<void> => {
    const file = options.balancesFile;
    if (file === undefined) return Promise.resolve();
    const write = persisting.then(async () => {
      for (const [k, b] of applied) {
        if ((await store.get(b.transactionId, b.branchId))?.status === 'committed') applied.delete(k);
      }
      const tmp = `${file}.tmp`;
      const fh = await fs.open(tmp, 'w');
      try {
        const appliedList = [...applied].map(([k, b]) => [k, b.transactionId, b.branchId]);
        await fh.writeFile(JSON.stringify({ balances: Object.fromEntries(balances), applied: appliedList }));
        await fh.datasync();
      } finally {
        await fh.close();
      }
      await fs.rename(tmp, file);
    });
    persisting = write.catch(() => undefined);
    return write;
  };

  const app = Fastify({ logger: false });
  app.get('/accounts', async () => Object.fromEntries(balances));
  await app.register(
    participantRoutes<unknown>({
      ...options.kit,
      store,
      handlers: {
        async prepare({ transactionId, branchId, payload }) {
          if (!isLedgerPayload(payload)) return { vote: 'no', reason: 'payload must be {account, delta}' };
          const balance = balances.get(payload.account);
          if (balance === undefined) return { vote: 'no', reason: `unknown account ${payload.account}` };
          if (payload.delta < 0) {
            const available = balance - held(payload.account, reservations);
            if (available + payload.delta < 0) return { vote: 'no', reason: `insufficient funds in ${payload.account}` };
            reservations.set(keyOf(transactionId, branchId, payload.account), -payload.delta);
          }
          return { vote: 'yes' };
        },
        async commit({ transactionId, branchId, payload }) {
          if (!isLedgerPayload(payload)) return;
          const k = keyOf(transactionId, branchId, payload.account);
          if (!applied.has(k)) {
            balances.set(payload.account, (balances.get(payload.account) ?? 0) + payload.delta);
            if (options.balancesFile !== undefined) applied.set(k, { transactionId, branchId });
          }
          reservations.delete(k);
          await persist();
        },
        async abort({ transactionId, branchId, payload }) {
          if (!isLedgerPayload(payload)) return;
          reservations.delete(keyOf(transactionId, branchId, payload.account));
        },
      },
    }),
  );
  return {
    app,
    balances: () => Object.fromEntries(balances),
    reserved: () => [...reservations.values()].reduce((a, b) => a + b, 0),
  };
}

async function main(): Promise<void> {
  const port = Number(process.env.PORT ?? 7081);
  const file = process.env.LEDGER_FILE ?? './ledger';
  const store = await FileBranchStore.open(`${file}.branches.jsonl`);
  const num = (name: string): number | undefined => (process.env[name] === undefined ? undefined : Number(process.env[name]));
  const policy = process.env.ON_UNREACHABLE_UNCERTAIN;
  if (policy !== undefined && policy !== 'wait' && policy !== 'abort') throw new Error('ON_UNREACHABLE_UNCERTAIN must be wait or abort');
  const kit: ParticipantKitOptions = {
    ...(process.env.COORDINATOR_URL === undefined ? {} : { coordinatorUrl: process.env.COORDINATOR_URL }),
    ...(process.env.COORDINATOR_TOKEN === undefined ? {} : { coordinatorToken: process.env.COORDINATOR_TOKEN }),
    ...(num('UNCERTAIN_TIMEOUT_MS') === undefined ? {} : { uncertainTimeoutMs: num('UNCERTAIN_TIMEOUT_MS') }),
    ...(num('PRECOMMIT_TIMEOUT_MS') === undefined ? {} : { precommitTimeoutMs: num('PRECOMMIT_TIMEOUT_MS') }),
    ...(policy === undefined ? {} : { onUnreachableUncertain: policy }),
  };
  const ledger = await buildLedger({ balances: { alice: 100, bob: 100 }, store, balancesFile: `${file}.balances.json`, kit });
  const host = process.env.HOST ?? '127.0.0.1';
  await ledger.app.listen({ host, port });
  process.stdout.write(`ledger service listening on http://${host}:${port}\n`);
  const stop = (): void => {
    // Clears the kit's 3PC timers, then lets the last fsync finish.
    void ledger.app
      .close()
      .then(() => store.close())
      .finally(() => process.exit(0));
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
}

if (import.meta.url === `file://${process.argv[1]}`) void main();
