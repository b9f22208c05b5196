/**
 * The work of a transaction's branches: each entry of a request checked before
 * any runs and tied to its branch (one per store, created on first use), then
 * run — in request order, or different branches at once — on the participants.
 * When the commit follows, a branch whose store can prepare without a forced
 * record first is prepared as soon as its last entry has run (while later work
 * runs), or in the same round trip as that entry: voting follows the work
 * immediately anyway.
 */

import { CoordinatorError, errorMessage } from '../errors.js';
import type { EnlistResult, ParticipantAdapter } from '../participants/participant.js';
import { observeCall } from '../observability/events.js';
import { makeGid } from '../participants/gid.js';
import { branchRef, type LiveBranch, type LiveTransaction } from './live-transaction.js';
import type { ParticipantRegistry } from './participant-registry.js';
import type { TransactionDriver } from './transaction-driver.js';

export interface EnlistRequest {
  readonly participant: string;
  readonly operations?: unknown;
  readonly payload?: unknown;
  readonly messages?: unknown;
}

const WORK_FIELDS = ['operations', 'payload', 'messages'] as const;

/** Branches one transaction may have: every branch is named in its log records. */
export const MAX_BRANCHES_PER_TRANSACTION = 1_000;
/**
 * Work kept in the log (http payloads, nats messages) one transaction may carry, JSON bytes:
 * it goes into one forced record, which must stay far below the log's record limit
 * (MAX_RECORD_BYTES, 64 MiB) — a decision that cannot be written would leave prepared
 * branches waiting.
 */
export const MAX_LOGGED_WORK_BYTES = 16 * 1024 * 1024;

/** The JSON bytes work kept in the log takes there. */
const loggedBytes = (work: unknown): number => Buffer.byteLength(JSON.stringify(work) ?? '');

export interface EnlistAnswer {
  readonly transactionId: string;
  readonly branchId: string;
  readonly participant: string;
  readonly state: string;
  readonly results?: EnlistResult['results'];
}

/** What running the entries of a request came to: the answers, and the first entry that failed. */
export interface WorkOutcome {
  readonly results: EnlistAnswer[];
  readonly failed?: PlannedWork;
  readonly error?: unknown;
}

/** One branch entry of a request, checked and tied to its branch, ready to run. */
export interface PlannedWork {
  readonly branch: LiveBranch;
  readonly adapter: ParticipantAdapter;
  readonly work: unknown;
  /** Its branch may be prepared right after (or with) this work: the commit follows. */
  prepareAfter: boolean;
  /** Its branch commits in one phase right after this work. */
  onePhaseFollows?: boolean;
}

export class BranchWork {
  readonly #deps: { readonly registry: ParticipantRegistry; readonly driver: TransactionDriver; readonly coordinatorId: string };

  constructor(deps: { registry: ParticipantRegistry; driver: TransactionDriver; coordinatorId: string }) {
    this.#deps = deps;
  }

  /**
   * One entry after the other, in request order; a branch that may prepare early starts its
   * prepare once its last entry has run, and the request's last entry prepares with its work.
   */
  async runInOrder(tx: LiveTransaction, planned: readonly PlannedWork[]): Promise<WorkOutcome> {
    const results: EnlistAnswer[] = [];
    for (const [index, entry] of planned.entries()) {
      const last = index === planned.length - 1;
      try {
        results.push(await this.runWork(tx, { ...entry, prepareAfter: entry.prepareAfter && last }));
      } catch (error) {
        return { results, failed: entry, error };
      }
      if (entry.prepareAfter && !last) this.#prepareEarly(tx, entry);
    }
    return { results };
  }

  /** Every branch's entries in order, different branches at once; each may prepare with its last entry. */
  async runAtOnce(tx: LiveTransaction, planned: readonly PlannedWork[]): Promise<WorkOutcome> {
    const byBranch = new Map<string, PlannedWork[]>();
    for (const p of planned) {
      const entries = byBranch.get(p.branch.branchId);
      if (entries === undefined) byBranch.set(p.branch.branchId, [p]);
      else entries.push(p);
    }
    const answers = new Map<PlannedWork, EnlistAnswer>();
    const errors = new Map<PlannedWork, unknown>();
    await Promise.all(
      [...byBranch.values()].map(async (entries) => {
        for (const entry of entries) {
          try {
            answers.set(entry, await this.runWork(tx, entry));
          } catch (err) {
            errors.set(entry, err);
            return;
          }
        }
      }),
    );
    // The answers in request order, up to the first entry (in that order) that failed.
    const results: EnlistAnswer[] = [];
    for (const p of planned) {
      if (errors.has(p)) return { results, failed: p, error: errors.get(p) };
      const answer = answers.get(p);
      if (answer !== undefined) results.push(answer);
    }
    return { results };
  }

  /** Starts the branch's prepare now; the driver takes its vote when the machine asks for it. */
  #prepareEarly(tx: LiveTransaction, entry: PlannedWork): void {
    const { branch, adapter } = entry;
    branch.prepareSent = true;
    branch.earlyPrepare = adapter.prepare(branchRef(tx, branch), { decisionFollows: true }).catch((err: unknown) => ({
      vote: 'no' as const,
      reason: `prepare on ${branch.participant} failed: ${errorMessage(err)}`,
    }));
  }

  /** Checks every entry before any work runs, then ties each to its branch (created on first use). */
  plan(tx: LiveTransaction, requests: readonly EnlistRequest[], commitFollows: boolean): PlannedWork[] {
    const checked = requests.map((request) => {
      const adapter = this.#deps.registry.adapterForNewBranch(request.participant);
      const work = request[adapter.work];
      const misplaced = WORK_FIELDS.find((field) => field !== adapter.work && request[field] !== undefined);
      if (misplaced !== undefined) {
        throw new CoordinatorError(
          'VALIDATION_FAILED',
          `${adapter.kind} branches take ${adapter.work}, not ${misplaced} (participant ${request.participant})`,
        );
      }
      adapter.validateWork(work);
      return { request, adapter, work };
    });
    this.#checkSize(tx, checked);
    const planned = checked.map(({ request, adapter, work }) => ({
      branch: this.#branchFor(tx, request.participant, adapter, work),
      adapter,
      work,
      prepareAfter: false,
    }));
    if (commitFollows) {
      // The last entry of each branch may prepare early — only where no forced record must
      // precede the prepare, and where 3PC's can-commit is the prepare itself (rule 3).
      const last = new Map<string, PlannedWork>();
      for (const p of planned) last.set(p.branch.branchId, p);
      for (const p of last.values()) {
        p.prepareAfter = p.adapter.listsPreparedBranches && (tx.protocol === '2pc' || p.adapter.canCommit === undefined);
      }
    }
    return planned;
  }

  /** Refuses work that would take the transaction past its branch count or its logged-work bytes. */
  #checkSize(tx: LiveTransaction, checked: readonly { request: EnlistRequest; adapter: ParticipantAdapter; work: unknown }[]): void {
    let branches = tx.branches.size;
    let bytes = tx.loggedWorkBytes;
    const joined = new Set<string>();
    for (const { request, adapter, work } of checked) {
      const existing = adapter.oneBranchPerStore && ([...tx.branches.values()].some((b) => b.participant === request.participant) || joined.has(request.participant));
      if (!existing) branches++;
      if (adapter.oneBranchPerStore) joined.add(request.participant);
      if (adapter.work !== 'operations') bytes += loggedBytes(work);
    }
    if (branches > MAX_BRANCHES_PER_TRANSACTION) {
      throw new CoordinatorError('VALIDATION_FAILED', `a transaction has at most ${MAX_BRANCHES_PER_TRANSACTION} branches (transaction ${tx.id})`);
    }
    if (bytes > MAX_LOGGED_WORK_BYTES) {
      throw new CoordinatorError('VALIDATION_FAILED', `the payloads and messages of a transaction are at most ${MAX_LOGGED_WORK_BYTES} bytes together (transaction ${tx.id})`);
    }
  }

  #branchFor(tx: LiveTransaction, participant: string, adapter: ParticipantAdapter, work: unknown): LiveBranch {
    if (adapter.oneBranchPerStore) {
      // All work for one store runs in one branch: two branches of one transaction would
      // deadlock each other (postgres) or collide on each other's key locks (redis).
      for (const b of tx.branches.values()) if (b.participant === participant) return b;
    }
    const branchNo = tx.nextBranchNo++;
    const branch: LiveBranch = {
      branchId: `b${branchNo}`,
      participant,
      kind: adapter.kind,
      gid: makeGid(this.#deps.coordinatorId, tx.id, branchNo),
      prepareSent: false,
      attempts: 0,
      ...(adapter.work === 'operations' ? {} : { payload: work }),
    };
    if (adapter.work !== 'operations') tx.loggedWorkBytes += loggedBytes(work);
    tx.branches.set(branch.branchId, branch);
    this.#deps.driver.apply(tx, { type: 'enlist', branchId: branch.branchId });
    return branch;
  }

  async runWork(tx: LiveTransaction, planned: PlannedWork): Promise<EnlistAnswer> {
    const { branch, adapter, work } = planned;
    const ref = branchRef(tx, branch);
    const result = await observeCall(adapter, 'work', () => adapter.enlist(ref, work, tx.cancelWork.signal, { prepareAfter: planned.prepareAfter, onePhaseFollows: planned.onePhaseFollows === true }),
    );
    if (result.vote !== undefined) {
      branch.prepareSent = true;
      branch.earlyPrepare = Promise.resolve(result.vote);
    }
    return {
      transactionId: tx.id,
      branchId: branch.branchId,
      participant: branch.participant,
      state: tx.state.phase,
      ...(result.results === undefined ? {} : { results: result.results }),
    };
  }
}
