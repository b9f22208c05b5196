/**
 * An example HTTP participant: a tiny ledger of account balances that takes
 * part in coordinator transactions through the participant kit. Branch
 * payload: `{ "account": "alice", "delta": -25 }`. Prepare reserves (votes no
 * when the balance would go negative), commit applies, abort releases.
 *
 *   PORT=7081 LEDGER_FILE=./ledger.json node dist/examples/ledger-service.js
 *
 * GET /accounts shows the balances. Balances and branch state are kept in
 * files next to each other and fsynced on every change.
 */

import fs from 'node:fs/promises';
import Fastify, { type FastifyInstance } from 'fastify';
import { FileBranchStore, MemoryBranchStore, type BranchStore } from '../participant-kit/branch-store.js';
import { participantRoutes } from '../participant-kit/participant-routes.js';

export interface LedgerPayload {
  readonly account: string;
  readonly delta: number;
}

export interface LedgerOptions {
  readonly balances: Record<string, number>;
  readonly store?: BranchStore;
  /** When set, balances are persisted here (JSON, fsynced). */
  readonly balancesFile?: string;
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
  if (options.balancesFile !== undefined) {
    try {
      const saved = JSON.parse(await fs.readFile(options.balancesFile, 'utf8')) as Record<string, number>;
      for (const [k, v] of Object.entries(saved)) balances.set(k, v);
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
  const persist = async (): Promise<void> => {
    if (options.balancesFile === undefined) return;
    const tmp = `${options.balancesFile}.tmp`;
    const fh = await fs.open(tmp, 'w');
    await fh.writeFile(JSON.stringify(Object.fromEntries(balances)));
    await fh.datasync();
    await fh.close();
    await fs.rename(tmp, options.balancesFile);
  };

  const app = Fastify({ logger: false });
  app.get('/accounts', async () => Object.fromEntries(balances));
  await app.register(
    participantRoutes<unknown>({
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
          balances.set(payload.account, (balances.get(payload.account) ?? 0) + payload.delta);
          reservations.delete(keyOf(transactionId, branchId, payload.account));
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
  const ledger = await buildLedger({ balances: { alice: 100, bob: 100 }, store, balancesFile: `${file}.balances.json` });
  await ledger.app.listen({ host: '127.0.0.1', port });
  process.stdout.write(`ledger service listening on http://127.0.0.1:${port}\n`);
}

if (import.meta.url === `file://${process.argv[1]}`) void main();
