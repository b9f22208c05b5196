/**
 * The participant side of the coordinator's HTTP protocol (2PC and 3PC), as a
 * Fastify plugin. A service supplies handlers for its own work; the plugin
 * makes them safe under retries, duplicates, concurrent calls and crashes.
 *
 * Every call is `POST /<verb>` with the JSON body
 *   { transactionId, branchId, gid?, payload?, protocol?: '2pc'|'3pc',
 *     coordinatorUrl?: 'http(s)://…', uncertainTimeoutMs?: integer }
 *
 *   /prepare     2PC vote. Runs `prepare` once per branch; a yes is stored
 *                durably ('prepared') before answering 200 {"vote":"yes"};
 *                also {"vote":"no","reason"} or {"vote":"read-only"}. A repeat
 *                answers the stored vote; a prepare after an abort votes no.
 *   /can-commit  3PC vote, exactly like /prepare; a yes makes the branch
 *                UNCERTAIN (stored as 'prepared' with protocol '3pc', the
 *                coordinatorUrl and uncertainTimeoutMs) and arms its timeout.
 *   /pre-commit  3PC. From 'prepared': runs `preCommit` (if any), stores
 *                'precommitted' durably, then 200 {"status":"precommitted"}.
 *                Repeats answer 200; so does a branch that already committed
 *                (its timeout may have committed it while the ack was lost).
 *                Unknown, aborted or read-only: 409 {"error","status"}.
 *   /commit      (3PC do-commit too) From 'prepared'/'precommitted': runs
 *                `commit`, stores 'committed', 200 {"status":"committed"};
 *                a repeat is 200. Unknown or aborted: 409 {"error","status"}.
 *   /abort       From 'prepared'/'precommitted' (the latter only ever sent by
 *                a coordinator whose recovery requires it): runs `abort`,
 *                stores 'aborted', 200 {"status":"aborted"}. An abort of an
 *                unknown branch is stored, so a late prepare votes no; a
 *                repeat is 200; a committed branch answers 409.
 *   GET /branches  (option `listRoute`) every stored branch with its status,
 *                protocol, updatedAt, reason and pending inquiry, for operators.
 *
 * Guarantees: calls for one branch run one at a time (including the kit's
 * own timeout decisions); `prepare` runs until it has once completed for a
 * branch, and exactly one of `commit` / `abort` completes per prepared branch.
 * A handler that throws leaves the state unchanged (answer 500, the
 * coordinator retries). If the process dies after a handler finished but
 * before the new state was fsynced, the handler runs again after restart, so
 * `commit` and `abort` must tolerate a repeat of a completed call.
 *
 * 3PC timeouts (participant side of Skeen's termination). They run from the
 * moment the branch entered its state (`updatedAt`), so a restarted service
 * re-arms them from the store. The inquiry is
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
 * app.close() clears all timers and cancels inquiries in flight.
 * 2PC-prepared branches have no timers: they wait for the coordinator, whose
 * recovery delivers the outcome.
 */

import type { FastifyInstance, FastifyReply } from 'fastify';
import { Agent, request } from 'undici';
import type { BranchEntry, BranchProtocol, BranchStatus, BranchStore } from './branch-store.js';
import { readBounded } from '../lib/read-bounded.js';

export interface BranchCall<P> {
  readonly transactionId: string;
  readonly branchId: string;
  readonly payload: P;
  readonly protocol?: BranchProtocol;
}

export type PrepareVote = { vote: 'yes' | 'no' | 'read-only'; reason?: string };

export interface ParticipantHandlers<P> {
  /** Check and reserve; return the vote. Must not apply the work yet. Used for /prepare and /can-commit. */
  prepare(call: BranchCall<P>): Promise<PrepareVote>;
  /** Apply the reserved work. Called once per prepared branch (also after the service restarts). */
  commit(call: BranchCall<P>): Promise<void>;
  /** Release the reservation. Called once per prepared branch. */
  abort(call: BranchCall<P>): Promise<void>;
  /** 3PC: optional hook run once when the branch moves from uncertain to precommitted. */
  preCommit?(call: BranchCall<P>): Promise<void>;
}

export type UnreachablePolicy = 'wait' | 'abort';

export interface RetryPolicy {
  readonly initialMs: number;
  readonly maxMs: number;
}

/** Everything but the store and the handlers: what a service tunes. */
export interface ParticipantKitOptions {
  /** Coordinator base URL for 3PC inquiries; wins over the coordinatorUrl of the can-commit body. */
  readonly coordinatorUrl?: string;
  /** Uncertain timeout when the can-commit body carries none. Default 30 s. */
  readonly uncertainTimeoutMs?: number;
  /** How long a branch may stay precommitted before it inquires (and then commits). Default 30 s. */
  readonly precommitTimeoutMs?: number;
  /** What an uncertain branch does while the coordinator cannot be reached. Default 'wait' (see header). */
  readonly onUnreachableUncertain?: UnreachablePolicy;
  /** Deadline of one inquiry request. Default 5 s. */
  readonly inquiryTimeoutMs?: number;
  /** Backoff between inquiries and between retries of a failed timeout decision. Default 1 s .. 30 s. */
  readonly retry?: RetryPolicy;
  /** Serve GET /branches. Default true. */
  readonly listRoute?: boolean;
  /** Bearer token for the inquiry, when the coordinator requires one (TCX_API_TOKENS). */
  readonly coordinatorToken?: string;
}

/** A coordinator's answer is a small JSON document; a larger one is cut off and ignored. */
const MAX_INQUIRY_ANSWER_BYTES = 256 * 1024;


export interface ParticipantRoutesOptions<P> extends ParticipantKitOptions {
  readonly store: BranchStore;
  readonly handlers: ParticipantHandlers<P>;
}

const MAX_TIMEOUT_MS = 7 * 24 * 3600 * 1000;

const callBody = {
  type: 'object',
  required: ['transactionId', 'branchId'],
  properties: {
    transactionId: { type: 'string', minLength: 1, maxLength: 64 },
    branchId: { type: 'string', minLength: 1, maxLength: 64 },
    gid: { type: 'string' },
    payload: {},
    protocol: { type: 'string', enum: ['2pc', '3pc'] },
    coordinatorUrl: { type: 'string', minLength: 8, maxLength: 2048, pattern: '^https?://' },
    uncertainTimeoutMs: { type: 'integer', minimum: 1, maximum: MAX_TIMEOUT_MS },
  },
} as const;

const listQuery = {
  type: 'object',
  properties: { status: { type: 'string', enum: ['prepared', 'precommitted', 'committed', 'aborted', 'read-only'] } },
} as const;

interface CallBody {
  transactionId: string;
  branchId: string;
  gid?: string;
  payload?: unknown;
  protocol?: BranchProtocol;
  coordinatorUrl?: string;
  uncertainTimeoutMs?: number;
}

/** What the coordinator said, before the branch's status gives it a meaning. */
type Inquiry =
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

const keyOf = (transactionId: string, branchId: string): string => `${transactionId}/${branchId}`;
const errorText = (err: unknown): string => (err instanceof Error ? err.message : String(err));
/** setTimeout's ceiling; a later deadline is simply re-checked. */
const MAX_DELAY_MS = 2_000_000_000;

export function participantRoutes<P>(options: ParticipantRoutesOptions<P>) {
  const { store, handlers } = options;
  const uncertainTimeoutMs = options.uncertainTimeoutMs ?? 30_000;
  const precommitTimeoutMs = options.precommitTimeoutMs ?? 30_000;
  const onUnreachable = options.onUnreachableUncertain ?? 'wait';
  const inquiryTimeoutMs = options.inquiryTimeoutMs ?? 5_000;
  const retry = options.retry ?? { initialMs: 1_000, maxMs: 30_000 };
  const configuredUrl = options.coordinatorUrl?.replace(/\/+$/, '');

  // One branch's calls run one at a time (a duplicate may arrive while the first is running).
  const locks = new Map<string, Promise<unknown>>();
  function serialized<T>(k: string, fn: () => Promise<T>): Promise<T> {
    const prev = locks.get(k) ?? Promise.resolve();
    const next = prev.then(fn, fn);
    const tail = next.catch(() => undefined);
    locks.set(k, tail);
    void tail.then(() => {
      if (locks.get(k) === tail) locks.delete(k);
    });
    return next;
  }

  const callOf = (e: BranchEntry): BranchCall<P> => ({
    transactionId: e.transactionId,
    branchId: e.branchId,
    payload: e.payload as P,
    protocol: e.protocol ?? '2pc',
  });
  const moved = (e: BranchEntry, status: BranchStatus, extra: Partial<BranchEntry> = {}): BranchEntry => ({
    ...e,
    status,
    updatedAt: new Date().toISOString(),
    ...extra,
  });

  return async function plugin(app: FastifyInstance): Promise<void> {
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
      const k = keyOf(e.transactionId, e.branchId);
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
      try {
        const res = await request(`${base}/v1/transactions/${encodeURIComponent(e.transactionId)}`, {
          method: 'GET',
          dispatcher: agent,
          headers: {
            accept: 'application/json',
            ...(options.coordinatorToken === undefined ? {} : { authorization: `Bearer ${options.coordinatorToken}` }),
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

    /** Applies an outcome to a prepared/precommitted branch: the handler, then the durable state. Call serialized. */
    async function resolve(e: BranchEntry, outcome: 'commit' | 'abort', by: 'coordinator' | 'timeout', reason?: string): Promise<BranchEntry> {
      const extra: Partial<BranchEntry> = { resolvedBy: by, ...(reason === undefined ? {} : { reason }) };
      let next: BranchEntry;
      if (outcome === 'commit') {
        await handlers.commit(callOf(e));
        next = moved(e, 'committed', extra);
      } else {
        await handlers.abort(callOf(e));
        next = moved(e, 'aborted', extra);
      }
      await store.put(next);
      watch(next);
      return next;
    }

    /** One timeout round for a watched branch: inquire, then decide, wait, or retry. */
    async function check(w: Watch, gen: number): Promise<void> {
      const k = keyOf(w.transactionId, w.branchId);
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
          app.log.warn({ transactionId: e.transactionId, branchId: e.branchId, attempt: w.attempts, answer: w.last }, `3pc: branch still ${state}`);
          arm(w, Date.now() + backoff(w.attempts - 1));
          return;
        }
        const reason = `${state} timeout, ${answer.kind === 'unreachable' && outcome === 'abort' ? 'policy abort on unreachable coordinator: ' : ''}${w.last}`;
        await serialized(k, async () => {
          const now = await store.get(w.transactionId, w.branchId);
          // A coordinator message got here first (or the branch moved on): its own watch() took over.
          if (closed || w.gen !== gen || now === undefined || now.status !== e.status || now.updatedAt !== e.updatedAt) return;
          app.log.info({ transactionId: e.transactionId, branchId: e.branchId, outcome, reason }, `3pc: resolving ${state} branch on timeout`);
          await resolve(now, outcome, 'timeout', reason);
        });
      } catch (err) {
        if (closed || w.gen !== gen) return;
        w.attempts++;
        w.last = `error: ${errorText(err)}`;
        app.log.error({ transactionId: w.transactionId, branchId: w.branchId, err: w.last }, '3pc: timeout handling failed; retrying');
        arm(w, Date.now() + backoff(w.attempts - 1));
      }
    }

    app.addHook('onClose', async () => {
      closed = true;
      for (const w of watches.values()) clearTimeout(w.timer);
      watches.clear();
      closing.abort();
      await Promise.allSettled([...inflight]);
      await agent.close();
    });

    // Branches left uncertain or precommitted by an earlier run get their timeouts back.
    for (const e of await store.list()) watch(e);

    async function vote(verb: 'prepare' | 'can-commit', b: CallBody, reply: FastifyReply): Promise<FastifyReply> {
      return serialized(keyOf(b.transactionId, b.branchId), async () => {
        const known = await store.get(b.transactionId, b.branchId);
        if (known !== undefined) {
          if (known.status === 'aborted') return reply.send({ vote: 'no', reason: known.reason ?? 'branch already aborted' });
          if (known.status === 'read-only') return reply.send({ vote: 'read-only' });
          return reply.send({ vote: 'yes' });
        }
        const protocol: BranchProtocol = verb === 'can-commit' ? '3pc' : '2pc';
        const announcedUrl = b.coordinatorUrl ?? configuredUrl;
        const base: BranchEntry = {
          transactionId: b.transactionId,
          branchId: b.branchId,
          status: 'prepared',
          payload: b.payload ?? null,
          updatedAt: new Date().toISOString(),
          protocol,
          ...(b.gid === undefined ? {} : { gid: b.gid }),
          ...(protocol === '3pc'
            ? {
                ...(announcedUrl === undefined ? {} : { coordinatorUrl: announcedUrl }),
                uncertainTimeoutMs: b.uncertainTimeoutMs ?? uncertainTimeoutMs,
              }
            : {}),
        };
        const result = await handlers.prepare(callOf(base));
        if (result.vote !== 'yes' && result.vote !== 'no' && result.vote !== 'read-only') {
          throw new Error(`prepare handler returned an invalid vote ${JSON.stringify(result.vote)}`);
        }
        let entry: BranchEntry;
        if (result.vote === 'yes') entry = moved(base, 'prepared');
        else if (result.vote === 'read-only') entry = moved(base, 'read-only');
        else entry = moved(base, 'aborted', { reason: result.reason ?? 'voted no' });
        try {
          await store.put(entry);
        } catch (err) {
          // The yes could not be made durable: release what the handler reserved, answer an error
          // (the coordinator counts a no and aborts).
          if (result.vote === 'yes') await handlers.abort(callOf(base)).catch(() => undefined);
          throw err;
        }
        watch(entry);
        return reply.send(result.vote === 'no' ? { vote: 'no', reason: result.reason ?? 'voted no' } : { vote: result.vote });
      });
    }

    app.post('/prepare', { schema: { body: callBody } }, async (request, reply) => vote('prepare', request.body as CallBody, reply));
    app.post('/can-commit', { schema: { body: callBody } }, async (request, reply) => vote('can-commit', request.body as CallBody, reply));

    app.post('/pre-commit', { schema: { body: callBody } }, async (request, reply) => {
      const b = request.body as CallBody;
      return serialized(keyOf(b.transactionId, b.branchId), async () => {
        const known = await store.get(b.transactionId, b.branchId);
        if (known?.status === 'precommitted' || known?.status === 'committed') return reply.send({ status: known.status });
        if (known?.status !== 'prepared') {
          return reply.status(409).send({ error: 'branch is not uncertain', status: known?.status ?? 'unknown' });
        }
        await handlers.preCommit?.(callOf(known));
        const url = known.coordinatorUrl ?? b.coordinatorUrl ?? configuredUrl;
        const next = moved(known, 'precommitted', { protocol: '3pc', ...(url === undefined ? {} : { coordinatorUrl: url }) });
        await store.put(next);
        watch(next);
        return reply.send({ status: 'precommitted' });
      });
    });

    app.post('/commit', { schema: { body: callBody } }, async (request, reply) => {
      const b = request.body as CallBody;
      return serialized(keyOf(b.transactionId, b.branchId), async () => {
        const known = await store.get(b.transactionId, b.branchId);
        if (known === undefined || known.status === 'aborted') {
          return reply.status(409).send({ error: 'branch is not prepared', status: known?.status ?? 'unknown' });
        }
        if (known.status === 'prepared' || known.status === 'precommitted') await resolve(known, 'commit', 'coordinator');
        return reply.send({ status: known.status === 'read-only' ? 'read-only' : 'committed' });
      });
    });

    app.post('/abort', { schema: { body: callBody } }, async (request, reply) => {
      const b = request.body as CallBody;
      return serialized(keyOf(b.transactionId, b.branchId), async () => {
        const known = await store.get(b.transactionId, b.branchId);
        if (known?.status === 'committed') return reply.status(409).send({ error: 'branch already committed', status: 'committed' });
        if (known?.status === 'prepared' || known?.status === 'precommitted') {
          if (known.status === 'precommitted') {
            app.log.warn({ transactionId: b.transactionId, branchId: b.branchId }, '3pc: coordinator aborts a precommitted branch');
          }
          await resolve(known, 'abort', 'coordinator');
        } else if (known === undefined) {
          // Remembered, so a prepare that arrives late (reordered, retried) votes no.
          await store.put({
            transactionId: b.transactionId,
            branchId: b.branchId,
            status: 'aborted',
            payload: b.payload ?? null,
            updatedAt: new Date().toISOString(),
            protocol: b.protocol ?? '2pc',
            reason: 'abort arrived before any prepare',
            resolvedBy: 'coordinator',
          });
        }
        return reply.send({ status: known?.status === 'read-only' ? 'read-only' : 'aborted' });
      });
    });

    if (options.listRoute !== false) {
      app.get('/branches', { schema: { querystring: listQuery } }, async (request) => {
        const { status } = request.query as { status?: BranchStatus };
        const entries = (await store.list()).filter((e) => status === undefined || e.status === status);
        return {
          branches: entries.map((e) => {
            const w = watches.get(keyOf(e.transactionId, e.branchId));
            return {
              transactionId: e.transactionId,
              branchId: e.branchId,
              status: e.status,
              protocol: e.protocol ?? '2pc',
              updatedAt: e.updatedAt,
              ...(e.reason === undefined ? {} : { reason: e.reason }),
              ...(e.resolvedBy === undefined ? {} : { resolvedBy: e.resolvedBy }),
              ...(w === undefined
                ? {}
                : {
                    inquiry: {
                      attempts: w.attempts,
                      ...(w.nextAt === undefined ? {} : { nextAt: new Date(w.nextAt).toISOString() }),
                      ...(w.last === undefined ? {} : { last: w.last }),
                    },
                  }),
            };
          }),
        };
      });
    }
  };
}
