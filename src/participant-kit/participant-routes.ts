/**
 * The participant side of the coordinator's HTTP protocol, as a Fastify
 * plugin. A service supplies three handlers for its own work; the plugin
 * makes them safe to call under retries, duplicates and crashes:
 *
 *   POST /prepare  runs `prepare` once per branch and stores the vote durably
 *                  before answering; a repeated prepare answers the stored
 *                  vote; a prepare that arrives after an abort votes no.
 *   POST /commit   applies `commit` once; repeated commits answer 200.
 *   POST /abort    applies `abort` once (only if the branch was prepared);
 *                  an abort for an unknown branch is remembered, so a late
 *                  prepare cannot resurrect it.
 *
 * Bodies are `{ transactionId, branchId, gid, payload }`.
 */

import type { FastifyInstance, FastifyReply } from 'fastify';
import type { BranchEntry, BranchStore } from './branch-store.js';

export interface BranchCall<P> {
  readonly transactionId: string;
  readonly branchId: string;
  readonly payload: P;
}

export interface ParticipantHandlers<P> {
  /** Check and reserve; return the vote. Must not apply the work yet. */
  prepare(call: BranchCall<P>): Promise<{ vote: 'yes' | 'no' | 'read-only'; reason?: string }>;
  /** Apply the reserved work. Called once per prepared branch (also after the service restarts). */
  commit(call: BranchCall<P>): Promise<void>;
  /** Release the reservation. Called once per prepared branch. */
  abort(call: BranchCall<P>): Promise<void>;
}

export interface ParticipantRoutesOptions<P> {
  readonly store: BranchStore;
  readonly handlers: ParticipantHandlers<P>;
}

const callBody = {
  type: 'object',
  required: ['transactionId', 'branchId'],
  properties: {
    transactionId: { type: 'string', minLength: 1, maxLength: 64 },
    branchId: { type: 'string', minLength: 1, maxLength: 64 },
    gid: { type: 'string' },
    payload: {},
  },
} as const;

interface CallBody {
  transactionId: string;
  branchId: string;
  payload?: unknown;
}

export function participantRoutes<P>(options: ParticipantRoutesOptions<P>) {
  const { store, handlers } = options;
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
  const entry = (b: CallBody, status: BranchEntry['status']): BranchEntry => ({
    transactionId: b.transactionId,
    branchId: b.branchId,
    status,
    payload: b.payload ?? null,
    updatedAt: new Date().toISOString(),
  });
  const call = (b: CallBody, payload?: unknown): BranchCall<P> => ({
    transactionId: b.transactionId,
    branchId: b.branchId,
    payload: (payload ?? b.payload) as P,
  });

  return async function plugin(app: FastifyInstance): Promise<void> {
    app.post('/prepare', { schema: { body: callBody } }, async (request, reply: FastifyReply) => {
      const b = request.body as CallBody;
      return serialized(`${b.transactionId}/${b.branchId}`, async () => {
        const known = await store.get(b.transactionId, b.branchId);
        if (known !== undefined) {
          if (known.status === 'aborted') return reply.send({ vote: 'no', reason: 'branch already aborted' });
          if (known.status === 'read-only') return reply.send({ vote: 'read-only' });
          return reply.send({ vote: 'yes' });
        }
        const result = await handlers.prepare(call(b));
        if (result.vote === 'yes') await store.put(entry(b, 'prepared'));
        else if (result.vote === 'read-only') await store.put(entry(b, 'read-only'));
        else await store.put(entry(b, 'aborted'));
        return reply.send(result);
      });
    });

    app.post('/commit', { schema: { body: callBody } }, async (request, reply: FastifyReply) => {
      const b = request.body as CallBody;
      return serialized(`${b.transactionId}/${b.branchId}`, async () => {
        const known = await store.get(b.transactionId, b.branchId);
        if (known === undefined || known.status === 'aborted') {
          return reply.status(409).send({ error: 'branch is not prepared', status: known?.status ?? 'unknown' });
        }
        if (known.status === 'prepared' || known.status === 'precommitted') {
          await handlers.commit(call(b, known.payload));
          await store.put(entry({ ...b, payload: known.payload }, 'committed'));
        }
        return reply.send({ status: 'committed' });
      });
    });

    app.post('/abort', { schema: { body: callBody } }, async (request, reply: FastifyReply) => {
      const b = request.body as CallBody;
      return serialized(`${b.transactionId}/${b.branchId}`, async () => {
        const known = await store.get(b.transactionId, b.branchId);
        if (known?.status === 'committed') return reply.status(409).send({ error: 'branch already committed' });
        if (known?.status === 'prepared' || known?.status === 'precommitted') await handlers.abort(call(b, known.payload));
        if (known?.status !== 'aborted') await store.put(entry({ ...b, payload: known?.payload ?? b.payload }, 'aborted'));
        return reply.send({ status: 'aborted' });
      });
    });
  };
}
