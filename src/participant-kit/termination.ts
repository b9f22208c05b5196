/**
 * The participant kit's 3PC timeouts (participant side of Skeen's termination).
 * They run from the moment the branch entered its state (`updatedAt`), so a
 * restarted service re-arms them from the store. The inquiry is
 * `GET {coordinatorUrl}/v1/transactions/{transactionId}` with a bounded
 * timeout; coordinatorUrl is the plugin option if set, else the one the
 * can-commit body carried.
 *
 *   UNCERTAIN (voted yes, no pre-commit) for `uncertainTimeoutMs`:
 *     404 UNKNOWN_TRANSACTION          abort (presumed abort: no durable
 *                                       pre-commit/commit decision exists)
 *     decision 'abort' or state aborting/aborted          abort
 *     state precommitted/committing/committed             commit
 *     decision 'commit' in a state past 'deciding'        commit
 *     active/preparing/prepared/deciding or anything else  ask again later
 *     unreachable (network error, timeout, 5xx, a 404 that is not the
 *     coordinator's UNKNOWN_TRANSACTION, unreadable answer):
 *       onUnreachableUncertain 'wait' (default): ask again with backoff.
 *         Blocking, like 2PC, but safe.
 *       onUnreachableUncertain 'abort': Skeen's textbook rule, abort.
 *         NOT SAFE when the coordinator crashed (or is partitioned away) after
 *         forcing its pre-commit decision and reached some participants but
 *         not this one: those time out as PRECOMMITTED and commit while this
 *         one aborts. 3PC is non-blocking only under crash failures with a
 *         termination protocol among the participants; this kit has none
 *         (participants do not talk to each other), so choose 'abort' only if
 *         availability matters more than atomicity.
 *   PRECOMMITTED for `precommitTimeoutMs`: ask the same way; decision 'abort'
 *     or state aborting/aborted → abort; anything else, including 404 and
 *     unreachable → commit. Safe: the coordinator forces its pre-commit
 *     decision before the first pre-commit leaves, so commit is the outcome.
 *
 * Every re-inquiry and every retry of a failed timeout decision waits with
 * exponential backoff (`retry`), each request is bounded (`inquiryTimeoutMs`);
 * close() (the plugin's app.close()) clears all timers and cancels inquiries in
 * flight.
 * 2PC-prepared branches have no timers: they wait for the coordinator, whose
 * recovery delivers the outcome.
 */

import { Agent, request } from 'undici';
import type { BranchEntry, BranchStore } from './branch-store.js';
import { readBounded } from '../lib/read-bounded.js';

/** A coordinator's answer is a small JSON document; a larger one is cut off and ignored. */
const MAX_INQUIRY_ANSWER_BYTES = 256 * 1024;

/** What the coordinator said, before the branch's status gives it a meaning. */
export type Inquiry =
  | { readonly kind: 'abort' | 'commit' | 'pending' | 'no-record' | 'unreachable'; readonly detail: string };

const ABORT_STATES = new Set(['aborting', 'aborted']);
const COMMIT_STATES = new Set(['precommitted', 'committing', 'committed']);
/** States in which a decision, even if already named, may not be durable yet. */
const UNDECIDED_STATES = new Set(['active', 'preparing', 'prepared', 'deciding']);

/**
 * Reads a coordinator answer to GET /v1/transactions/{id}. Exported for tests.
 * `expectedCoordinatorId` (from the branch's gid) guards presumed abort: a 404 from a
 * different coordinator — a new instance after a lost log, a wrong URL — says nothing.
 */
export function classifyInquiry(status: number, body: unknown, expectedCoordinatorId?: string): Inquiry {
  const b = typeof body === 'object' && body !== null ? (body as Record<string, unknown>) : undefined;
  if (status === 404) {
    const error = b?.error as { code?: unknown; details?: { coordinatorId?: unknown } } | undefined;
    const code = error?.code;
    const answeredBy = error?.details?.coordinatorId;
    if (expectedCoordinatorId !== undefined && typeof answeredBy === 'string' && answeredBy !== expectedCoordinatorId) {
      return { kind: 'unreachable', detail: `a different coordinator (${answeredBy}) answered 404` };
    }
    // Only the coordinator's own "no such transaction" is a presumed abort; a missing route
    // (wrong coordinatorUrl, a proxy) says nothing about the transaction.
    if (code === 'UNKNOWN_TRANSACTION') return { kind: 'no-record', detail: 'coordinator has no record of the transaction' };
    return { kind: 'unreachable', detail: `coordinator answered 404 ${typeof code === 'string' ? code : 'without UNKNOWN_TRANSACTION'}` };
  }
  if (status < 200 || status >= 300) return { kind: 'unreachable', detail: `coordinator answered ${status}` };
  const state = typeof b?.state === 'string' ? b.state : undefined;
  const decision = b?.decision;
  if (state === undefined) return { kind: 'unreachable', detail: 'coordinator answer has no state' };
  if (decision === 'abort' || ABORT_STATES.has(state)) return { kind: 'abort', detail: `coordinator state ${state}, decision abort` };
  if (COMMIT_STATES.has(state)) return { kind: 'commit', detail: `coordinator state ${state}` };
  if (decision === 'commit' && !UNDECIDED_STATES.has(state)) return { kind: 'commit', detail: `coordinator state ${state}, decision commit` };
  return { kind: 'pending', detail: `coordinator state ${state}, not decided yet` };
}

interface Watch {
  readonly transactionId: string;
  readonly branchId: string;
  /** Bumped whenever the branch changes state; a check started for an older generation does not re-arm. */
  gen: number;
  attempts: number;
  timer?: NodeJS.Timeout;
  nextAt?: number;
  last?: string;
}

const errorText = (err: unknown): string => (err instanceof Error ? err.message : String(err));
/** setTimeout's ceiling; a later deadline is simply re-checked. */
const MAX_DELAY_MS = 2_000_000_000;

export type UnreachablePolicy = 'wait' | 'abort';

export interface RetryPolicy {
  readonly initialMs: number;
  readonly maxMs: number;
}

export interface TerminationSettings {
  readonly uncertainTimeoutMs: number;
  readonly precommitTimeoutMs: number;
  readonly onUnreachable: UnreachablePolicy;
  readonly inquiryTimeoutMs: number;
  readonly retry: RetryPolicy;
  /** The configured coordinator URL (no trailing slash); else the branch's own. */
  readonly configuredUrl: string | undefined;
  /** Read at every inquiry (a service may rotate it). */
  readonly coordinatorToken: () => string | undefined;
}

interface TerminationLog {
  info(fields: object, message: string): void;
  warn(fields: object, message: string): void;
  error(fields: object, message: string): void;
}

export interface TerminationDeps {
  readonly store: BranchStore;
  readonly log: TerminationLog;
  /** Runs `fn` after every earlier call for the same branch key (the kit's per-branch lock). */
  readonly serialized: <T>(key: string, fn: () => Promise<T>) => Promise<T>;
  /** Applies an outcome to a prepared or precommitted branch: the handler, then the durable state (which calls watch). */
  readonly resolve: (e: BranchEntry, outcome: 'commit' | 'abort', by: 'timeout', reason: string) => Promise<unknown>;
}

/** What GET /branches shows of a branch's pending inquiry. */
export interface InquiryView {
  readonly attempts: number;
  readonly nextAt?: string;
  readonly last?: string;
}

export interface TerminationTimers {
  /** Starts (or stops) the timeout of a branch after a durable state change, or at start-up. */
  watch(e: BranchEntry): void;
  /** The pending inquiry of a watched branch; undefined when it has no timeout running. */
  inquiry(transactionId: string, branchId: string): InquiryView | undefined;
  /** Clears every timer and cancels the inquiries in flight. */
  close(): Promise<void>;
}

export const branchKey = (transactionId: string, branchId: string): string => `${transactionId}/${branchId}`;

export function terminationTimers(settings: TerminationSettings, deps: TerminationDeps): TerminationTimers {
  const { store, log, serialized, resolve } = deps;
  const { uncertainTimeoutMs, precommitTimeoutMs, onUnreachable, inquiryTimeoutMs, retry, configuredUrl } = settings;
  const watches = new Map<string, Watch>();
  const inflight = new Set<Promise<void>>();
  const closing = new AbortController();
  let closed = false;
  const agent = new Agent({
    connect: { timeout: inquiryTimeoutMs },
    headersTimeout: inquiryTimeoutMs,
    bodyTimeout: inquiryTimeoutMs,
  });

  const backoff = (attempt: number): number => {
    const ceiling = Math.min(retry.maxMs, retry.initialMs * 2 ** Math.min(attempt, 30));
    return Math.round(ceiling / 2 + (Math.random() * ceiling) / 2);
  };

  function arm(w: Watch, at: number): void {
    if (closed) return;
    clearTimeout(w.timer);
    w.nextAt = at;
    const gen = w.gen;
    w.timer = setTimeout(() => {
      w.timer = undefined;
      if (Date.now() < at - 5) arm(w, at); // past setTimeout's ceiling
      else track(check(w, gen));
    }, Math.min(MAX_DELAY_MS, Math.max(0, at - Date.now())));
    w.timer.unref();
  }

  function track(p: Promise<void>): void {
    inflight.add(p);
    void p.finally(() => inflight.delete(p));
  }

  /** Starts (or stops) the timeout of a branch after a durable state change, or at start-up. */
  function watch(e: BranchEntry): void {
    const k = branchKey(e.transactionId, e.branchId);
    const old = watches.get(k);
    const timed = (e.status === 'prepared' && e.protocol === '3pc') || e.status === 'precommitted';
    if (old !== undefined) {
      clearTimeout(old.timer);
      old.gen++;
    }
    if (!timed || closed) {
      watches.delete(k);
      return;
    }
    const w: Watch = old ?? { transactionId: e.transactionId, branchId: e.branchId, gen: 0, attempts: 0 };
    w.attempts = 0;
    watches.set(k, w);
    const timeout = e.status === 'precommitted' ? precommitTimeoutMs : (e.uncertainTimeoutMs ?? uncertainTimeoutMs);
    const since = Date.parse(e.updatedAt);
    arm(w, (Number.isNaN(since) ? Date.now() : since) + timeout);
  }

  async function inquire(e: BranchEntry): Promise<Inquiry> {
    const base = configuredUrl ?? e.coordinatorUrl?.replace(/\/+$/, '');
    if (base === undefined) return { kind: 'unreachable', detail: 'no coordinatorUrl known for this branch' };
    const token = settings.coordinatorToken();
    try {
      const res = await request(`${base}/v1/transactions/${encodeURIComponent(e.transactionId)}`, {
        method: 'GET',
        dispatcher: agent,
        headers: {
          accept: 'application/json',
          ...(token === undefined ? {} : { authorization: `Bearer ${token}` }),
        },
        signal: AbortSignal.any([AbortSignal.timeout(inquiryTimeoutMs), closing.signal]),
      });
      const text = await readBounded(res.body, MAX_INQUIRY_ANSWER_BYTES);
      let body: unknown = null;
      try {
        body = text === '' ? null : JSON.parse(text);
      } catch {
        body = null;
      }
      const expected = e.gid === undefined ? undefined : /^tcx:([^:]+):/.exec(e.gid)?.[1];
      return classifyInquiry(res.statusCode, body, expected);
    } catch (err) {
      return { kind: 'unreachable', detail: `inquiry failed: ${errorText(err)}` };
    }
  }

  /** One timeout round for a watched branch: inquire, then decide, wait, or retry. */
  async function check(w: Watch, gen: number): Promise<void> {
    const k = branchKey(w.transactionId, w.branchId);
    try {
      const e = await store.get(w.transactionId, w.branchId);
      if (closed || w.gen !== gen || e === undefined) return;
      if (!((e.status === 'prepared' && e.protocol === '3pc') || e.status === 'precommitted')) return;
      const answer = await inquire(e);
      if (closed || w.gen !== gen) return;
      w.attempts++;
      w.last = `${answer.kind}: ${answer.detail}`;
      let outcome: 'commit' | 'abort' | 'wait';
      if (e.status === 'precommitted') {
        outcome = answer.kind === 'abort' ? 'abort' : 'commit';
      } else if (answer.kind === 'abort' || answer.kind === 'no-record') {
        outcome = 'abort';
      } else if (answer.kind === 'commit') {
        outcome = 'commit';
      } else if (answer.kind === 'unreachable' && onUnreachable === 'abort') {
        outcome = 'abort';
      } else {
        outcome = 'wait';
      }
      const state = e.status === 'precommitted' ? 'precommitted' : 'uncertain';
      if (outcome === 'wait') {
        log.warn({ transactionId: e.transactionId, branchId: e.branchId, attempt: w.attempts, answer: w.last }, `3pc: branch still ${state}`);
        arm(w, Date.now() + backoff(w.attempts - 1));
        return;
      }
      const reason = `${state} timeout, ${answer.kind === 'unreachable' && outcome === 'abort' ? 'policy abort on unreachable coordinator: ' : ''}${w.last}`;
      await serialized(k, async () => {
        const now = await store.get(w.transactionId, w.branchId);
        // A coordinator message got here first (or the branch moved on): its own watch() took over.
        if (closed || w.gen !== gen || now === undefined || now.status !== e.status || now.updatedAt !== e.updatedAt) return;
        log.info({ transactionId: e.transactionId, branchId: e.branchId, outcome, reason }, `3pc: resolving ${state} branch on timeout`);
        await resolve(now, outcome, 'timeout', reason);
      });
    } catch (err) {
      if (closed || w.gen !== gen) return;
      w.attempts++;
      w.last = `error: ${errorText(err)}`;
      log.error({ transactionId: w.transactionId, branchId: w.branchId, err: w.last }, '3pc: timeout handling failed; retrying');
      arm(w, Date.now() + backoff(w.attempts - 1));
    }
  }

  return {
    watch,
    inquiry(transactionId, branchId) {
      const w = watches.get(branchKey(transactionId, branchId));
      if (w === undefined) return undefined;
      return {
        attempts: w.attempts,
        ...(w.nextAt === undefined ? {} : { nextAt: new Date(w.nextAt).toISOString() }),
        ...(w.last === undefined ? {} : { last: w.last }),
      };
    },
    async close() {
      closed = true;
      for (const w of watches.values()) clearTimeout(w.timer);
      watches.clear();
      closing.abort();
      await Promise.allSettled([...inflight]);
      await agent.close();
    },
  };
}
