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
 * 3PC branches time out and ask the coordinator for the outcome: termination.ts says how,
 * and which answer means what. 2PC-prepared branches have no timers: they wait for the
 * coordinator, whose recovery delivers the outcome.
 */

import type { FastifyInstance, FastifyReply } from 'fastify';
import type { BranchEntry, BranchProtocol, BranchStatus, BranchStore } from './branch-store.js';
import { branchKey, terminationTimers, type RetryPolicy, type UnreachablePolicy } from './termination.js';

export { classifyInquiry, type RetryPolicy, type UnreachablePolicy } from './termination.js';

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

/** Everything but the store and the handlers: what a service tunes. */
export interface ParticipantKitOptions {
  /** Coordinator base URL for 3PC inquiries; wins over the coordinatorUrl of the can-commit body. */
  readonly coordinatorUrl?: string;
  /** Uncertain timeout when the can-commit body carries none. Default 30 s. */
  readonly uncertainTimeoutMs?: number;
  /** How long a branch may stay precommitted before it inquires (and then commits). Default 30 s. */
  readonly precommitTimeoutMs?: number;
  /** What an uncertain branch does while the coordinator cannot be reached. Default 'wait'; 'abort' can break atomicity (termination.ts says when). */
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

export function participantRoutes<P>(options: ParticipantRoutesOptions<P>) {
  const { store, handlers } = options;
  const uncertainTimeoutMs = options.uncertainTimeoutMs ?? 30_000;
  const configuredUrl = options.coordinatorUrl?.replace(/\/+$/, '');
  const settings = {
    uncertainTimeoutMs,
    precommitTimeoutMs: options.precommitTimeoutMs ?? 30_000,
    onUnreachable: options.onUnreachableUncertain ?? 'wait',
    inquiryTimeoutMs: options.inquiryTimeoutMs ?? 5_000,
    retry: options.retry ?? { initialMs: 1_000, maxMs: 30_000 },
    configuredUrl,
    coordinatorToken: () => options.coordinatorToken,
  } as const;

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
    const timers = terminationTimers(settings, { store, log: app.log, serialized, resolve: (e, outcome, by, reason) => resolve(e, outcome, by, reason) });
    const watch = (e: BranchEntry): void => timers.watch(e);
    app.addHook('onClose', () => timers.close());

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

    // Branches left uncertain or precommitted by an earlier run get their timeouts back.
    for (const e of await store.list()) watch(e);

    async function vote(verb: 'prepare' | 'can-commit', b: CallBody, reply: FastifyReply): Promise<FastifyReply> {
      return serialized(branchKey(b.transactionId, b.branchId), async () => {
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
      return serialized(branchKey(b.transactionId, b.branchId), async () => {
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
      return serialized(branchKey(b.transactionId, b.branchId), async () => {
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
      return serialized(branchKey(b.transactionId, b.branchId), async () => {
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
            const inquiry = timers.inquiry(e.transactionId, e.branchId);
            return {
              transactionId: e.transactionId,
              branchId: e.branchId,
              status: e.status,
              protocol: e.protocol ?? '2pc',
              updatedAt: e.updatedAt,
              ...(e.reason === undefined ? {} : { reason: e.reason }),
              ...(e.resolvedBy === undefined ? {} : { resolvedBy: e.resolvedBy }),
              ...(inquiry === undefined ? {} : { inquiry }),
            };
          }),
        };
      });
    }
  };
}
