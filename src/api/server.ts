/**
 * The REST API. Routes validate their input with the JSON schemas in
 * schemas.ts before anything runs, so bad input changes nothing.
 */

import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance } from 'fastify';
import type { Logger } from 'pino';
import { CoordinatorError } from '../errors.js';
import type { Coordinator } from '../coordinator/coordinator.js';
import type { RegistrationRequest } from '../coordinator/participant-registry.js';
import { checkRegistrationShape } from '../coordinator/participant-kinds.js';
import { actorOf, installAuth, tokenOf } from './auth.js';
import { frameworkErrors, installErrorHandling, MAX_PARAM_LENGTH } from './error-handler.js';
import { installJsonBodyParser } from './json-body.js';
import { lazyValidators } from './lazy-validators.js';
import { parseGid } from '../participants/gid.js';
import { installDashboard } from '../ui/dashboard.js';
import { coordinatorMetrics, installDocs, installMetricsRoute } from './operator-routes.js';
import type { CoordinatorMetrics } from '../observability/metrics.js';
import type { LoggedTransaction } from '../cluster/shared-log-reader.js';
import { FORWARDED_BY, type ForwardResult, type ForwardedRequest } from '../cluster/forwarding.js';
import { decodeCursor, type ListFilter } from '../coordinator/transaction-listing.js';
import { outcomeBody, statusOf } from './transaction-status.js';
import {
  abortBody,
  beginTransactionBody,
  branchBody,
  branchParams,
  forgetBranchBody,
  listTransactionsQuery,
  manualResolutionBody,
  noQuery,
  participantNameParams,
  preparedBranchesQuery,
  preparedBranchParams,
  registerParticipantBody,
  removeParticipantQuery,
  transactionIdParams,
} from './schemas.js';

/** Transactions per page of GET /v1/transactions: by default, and at most. */
const DEFAULT_PAGE = 100;
const MAX_PAGE = 1000;

/** Several instances over one Postgres log (src/cluster): who runs a transaction, and the cluster's view. */
export interface ClusterRouting {
  coordinatorFor(transactionId: string): Promise<Coordinator>;
  /** The coordinator run here for a coordinator id (own or adopted); undefined when none is. */
  coordinatorOfId(coordinatorId: string): Coordinator | undefined;
  knows(transactionId: string): Promise<boolean>;
  forward(request: ForwardedRequest): Promise<ForwardResult>;
  /** A transaction no running coordinator answers for, as the shared log holds it (see Cluster.fromLog). */
  fromLog(transactionId: string, unreachable: readonly string[], onlyHere: boolean): Promise<LoggedTransaction | undefined>;
  /** A page of the transaction listing over every instance. */
  list(filter: ListFilter, request: ForwardedRequest, forwarded: boolean): Promise<unknown>;
  /** Takes what the shared participant registry holds (a participant registered through another instance). */
  syncParticipants(): Promise<void>;
  view(): Promise<unknown>;
}

export interface ServerOptions {
  /** With a shared log: transactions of ids this instance adopted are answered by their coordinator. */
  readonly cluster?: ClusterRouting;
  readonly bodyLimitBytes?: number;
  readonly apiTokens?: readonly string[];
  readonly adminTokens?: readonly string[];
  /** Served at /metrics; made here (and closed with the server) when not given. */
  readonly metrics?: CoordinatorMetrics;
}

interface BranchInput {
  participant: string;
  operations?: unknown[];
  payload?: unknown;
  messages?: unknown[];
}

export function buildServer(coordinator: Coordinator, logger: Logger, options: ServerOptions = {}): FastifyInstance {
  const app = Fastify({
    loggerInstance: logger as FastifyBaseLogger,
    // One log line per event that matters (decisions, recovery, retries), not two per request.
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: options.bodyLimitBytes ?? 1024 * 1024,
    ajv: { customOptions: { removeAdditional: false, coerceTypes: false, allErrors: false } },
    schemaController: { compilersFactory: { buildValidator: lazyValidators } },
    routerOptions: { maxParamLength: MAX_PARAM_LENGTH },
    frameworkErrors,
  });
  installJsonBodyParser(app);
  // No child logger per request (it costs more than the rest of a request's logging): the
  // few lines a request writes (errors) carry its id themselves.
  app.setChildLoggerFactory((parent) => parent);
  installErrorHandling(app);
  installAuth(app, { apiTokens: options.apiTokens ?? [], adminTokens: options.adminTokens ?? [] });
  installDashboard(app);
  // Bodies are JSON only: anything else is 415, not parsed as text.
  app.removeContentTypeParser('text/plain');
  const metrics = options.metrics ?? coordinatorMetrics(coordinator);
  if (options.metrics === undefined) app.addHook('onClose', async () => metrics.close());
  installMetricsRoute(app, metrics);
  installDocs(app);
  const tx = coordinator.transactions;
  const cluster = options.cluster;
  const managerFor = async (id: string): Promise<Coordinator['transactions']> => (cluster === undefined ? tx : (await cluster.coordinatorFor(id)).transactions);
  /** Work naming a participant registered through another instance: take the shared registry, then once more. */
  const withSharedRegistry = async <T>(work: () => Promise<T>): Promise<T> => {
    try {
      return await work();
    } catch (err) {
      if (cluster === undefined || !(err instanceof CoordinatorError) || err.code !== 'UNKNOWN_PARTICIPANT') throw err;
      await cluster.syncParticipants();
      return work();
    }
  };
  if (cluster !== undefined) {
    // A transaction another instance runs: its requests go there (never forwarded twice). One
    // that no running coordinator answers for (its instance died; its adopter is not running
    // it yet) is read from the shared log; a change to it waits for the adopter.
    app.addHook('preHandler', async (request, reply) => {
      const id = (request.params as { id?: unknown } | undefined)?.id;
      const route = request.routeOptions.url;
      if (typeof id !== 'string' || !route?.startsWith('/v1/transactions/:id') || (await cluster.knows(id))) return;
      const forwarded = request.headers[FORWARDED_BY] !== undefined;
      let unreachable: readonly string[] = [];
      /** Some instance, or who holds which id, could not be asked: "nobody knows it" is not sure. */
      let unsure = false;
      if (!forwarded) {
        const authorization = request.headers.authorization;
        const result = await cluster.forward({
          method: request.method,
          url: request.url,
          ...(authorization === undefined ? {} : { authorization }),
          ...(request.body === undefined ? {} : { body: JSON.stringify(request.body) }),
        });
        if (result.answer !== undefined) {
          if (result.answer.retryAfter !== undefined) void reply.header('retry-after', result.answer.retryAfter);
          return reply.status(result.answer.status).send(result.answer.body);
        }
        if (await cluster.knows(id)) return; // adopted here meanwhile: answered here
        unreachable = result.unreachable;
        unsure = unreachable.length > 0 || result.unsure === true;
      }
      const logged = await cluster.fromLog(id, unreachable, forwarded).catch(() => null); // null: the log could not be read
      if (logged?.view !== undefined && request.method === 'GET' && route === '/v1/transactions/:id') return reply.status(200).send(logged.view);
      if (logged === undefined && !unsure) return; // nobody knows it: answered here (404)
      // An instance that may run it did not answer, or its adopter is not running it yet: not "unknown", but "try again".
      throw new CoordinatorError(
        'OWNER_UNREACHABLE',
        logged === undefined || logged === null
          ? `no instance that knows transaction ${id} answered (${unreachable.length} could not be reached${unsure && unreachable.length === 0 ? ', nor the log database' : ''}); retry shortly`
          : `transaction ${id} is in the log of an instance that does not answer; its adopter will run it: retry shortly`,
        { retryAfterSeconds: 1 },
      );
    });
  }
  const authRequired = (options.apiTokens ?? []).length + (options.adminTokens ?? []).length > 0;

  app.get('/healthz', { schema: { querystring: noQuery } }, async (_request, reply) => {
    const health = coordinator.health();
    return reply.status(health.status === 'ok' ? 200 : 503).send(health);
  });

  app.get('/v1/cluster', { schema: { querystring: noQuery } }, async () =>
    cluster === undefined ? { mode: 'single', instance: coordinator.coordinatorId, leases: [], adopted: [] } : cluster.view(),
  );

  // ---- participants -------------------------------------------------------------------

  app.post('/v1/participants', { schema: { querystring: noQuery, body: registerParticipantBody } }, async (request, reply) => {
    const body = request.body as RegistrationRequest;
    checkRegistrationShape(body);
    const view = await coordinator.registerParticipant(body);
    return reply.status(201).send(view);
  });

  app.get('/v1/participants', { schema: { querystring: noQuery } }, async () => ({ participants: coordinator.participants() }));

  app.get('/v1/participants/:name', { schema: { params: participantNameParams, querystring: noQuery } }, async (request) => {
    const { name } = request.params as { name: string };
    return coordinator.participant(name);
  });

  app.delete('/v1/participants/:name', { schema: { params: participantNameParams, querystring: removeParticipantQuery } }, async (request, reply) => {
    const { name } = request.params as { name: string };
    const query = request.query as { unreachable?: 'true'; reason?: string };
    if ((query.unreachable === undefined) !== (query.reason === undefined)) {
      throw new CoordinatorError('VALIDATION_FAILED', 'unreachable=true and reason go together');
    }
    await coordinator.removeParticipant(name, query.reason === undefined ? undefined : { reason: query.reason, actor: actorOf(request) });
    return reply.status(204).send();
  });

  // ---- operator controls --------------------------------------------------------------

  app.get(
    '/v1/participants/:name/prepared',
    { schema: { params: participantNameParams, querystring: preparedBranchesQuery } },
    async (request) => {
      const { name } = request.params as { name: string };
      const { coordinatorId } = request.query as { coordinatorId?: string };
      return { participant: name, branches: await coordinator.preparedBranches(name, coordinatorId) };
    },
  );

  app.post(
    '/v1/participants/:name/prepared/:gid/resolve',
    { schema: { params: preparedBranchParams, querystring: noQuery, body: manualResolutionBody } },
    async (request) => {
      const { name, gid } = request.params as { name: string; gid: string };
      const body = request.body as { outcome: 'commit' | 'abort'; reason: string };
      // A gid of a coordinator id this instance adopted is that coordinator's to resolve (its log, its transactions).
      const owner = parseGid(gid)?.coordinatorId;
      const resolver = (owner === undefined ? undefined : cluster?.coordinatorOfId(owner)) ?? coordinator;
      return resolver.resolveManually(name, gid, { ...body, actor: actorOf(request) });
    },
  );

  app.post('/v1/transactions/:id/branches/:branchId/forget', { schema: { params: branchParams, querystring: noQuery, body: forgetBranchBody } }, async (request) => {
    const { id, branchId } = request.params as { id: string; branchId: string };
    const { reason } = request.body as { reason: string };
    return (await managerFor(id)).forgetBranch(id, branchId, { reason, actor: actorOf(request) });
  });

  app.post('/v1/transactions/:id/retry', { schema: { params: transactionIdParams, querystring: noQuery } }, async (request) => {
    const { id } = request.params as { id: string };
    return await (await managerFor(id)).retryNow(id);
  });

  // ---- transactions -------------------------------------------------------------------

  app.post(
    '/v1/transactions',
    {
      schema: { querystring: noQuery, body: beginTransactionBody },
      // A begin needs no body at all: a missing one is {}. A JSON null is a body, and not an object: 400.
      preValidation: async (request) => {
        if (request.body === undefined) request.body = {};
      },
    },
    async (request, reply) => {
    const body = (request.body ?? {}) as {
      protocol?: '2pc' | '3pc';
      timeoutMs?: number;
      branches?: BranchInput[];
      commit?: boolean;
      parallel?: boolean;
      onePhase?: boolean;
    };
    if ((body.commit === true || body.parallel !== undefined) && body.branches === undefined) {
      throw new CoordinatorError('VALIDATION_FAILED', `${body.commit === true ? 'commit: true' : 'parallel'} needs branches`);
    }
    // Per-token quotas apply once tokens are required (in open mode there is nobody to tell apart).
    const owner = authRequired ? tokenOf(request) : undefined;
    const begin = {
      ...(owner === undefined ? {} : { owner }),
      ...(body.protocol === undefined ? {} : { protocol: body.protocol }),
      ...(body.timeoutMs === undefined ? {} : { timeoutMs: body.timeoutMs }),
      ...(body.onePhase === undefined ? {} : { onePhase: body.onePhase }),
    };
    if (body.branches === undefined) return reply.status(201).send(tx.begin(begin));
    const answer = await withSharedRegistry(() => tx.run({ ...begin, branches: body.branches!, commit: body.commit === true, parallel: body.parallel === true }));
    if (answer.failure !== undefined) {
      // Asked to commit, the transaction ended in abort: answer like a commit that aborted.
      const { view, failure, results } = answer;
      return reply.status(409).send({
        ...view,
        error: { code: 'TRANSACTION_ABORTED', message: view.reason ?? failure.message, details: failure.toJSON() },
        results,
      });
    }
    if (body.commit !== true) return reply.status(201).send({ ...answer.view, results: answer.results });
    return reply.status(statusOf(answer.view)).send({ ...outcomeBody(answer.view), results: answer.results });
    },
  );

  app.get('/v1/transactions', { schema: { querystring: listTransactionsQuery } }, async (request) => {
    const query = request.query as { state?: string; participant?: string; since?: string; limit?: string; cursor?: string };
    const limit = Number(query.limit ?? DEFAULT_PAGE);
    if (limit > MAX_PAGE) throw new CoordinatorError('VALIDATION_FAILED', `limit must not exceed ${MAX_PAGE}`);
    const sinceMs = query.since === undefined ? undefined : Date.parse(query.since);
    if (sinceMs !== undefined && (Number.isNaN(sinceMs) || !/^\d{4}-\d{2}-\d{2}T/.test(query.since ?? ''))) {
      throw new CoordinatorError('VALIDATION_FAILED', 'since must be an ISO 8601 date-time, e.g. 2026-01-31T12:00:00Z');
    }
    const filter = {
      limit,
      ...(query.state === undefined ? {} : { state: query.state }),
      ...(query.participant === undefined ? {} : { participant: query.participant }),
      ...(sinceMs === undefined ? {} : { sinceMs }),
      ...(query.cursor === undefined ? {} : { after: decodeCursor(query.cursor) }),
    };
    if (cluster === undefined) return tx.list(filter);
    const authorization = request.headers.authorization;
    const forwarded = request.headers[FORWARDED_BY] !== undefined;
    return cluster.list(filter, { method: 'GET', url: request.url, ...(authorization === undefined ? {} : { authorization }) }, forwarded);
  });

  app.get('/v1/transactions/:id', { schema: { params: transactionIdParams, querystring: noQuery } }, async (request) => {
    const { id } = request.params as { id: string };
    return (await managerFor(id)).get(id);
  });

  app.post('/v1/transactions/:id/branches', { schema: { params: transactionIdParams, querystring: noQuery, body: branchBody } }, async (request, reply) => {
    const { id } = request.params as { id: string };
    const answer = await withSharedRegistry(async () => (await managerFor(id)).enlist(id, request.body as BranchInput));
    return reply.status(201).send(answer);
  });

  app.post('/v1/transactions/:id/prepare', { schema: { params: transactionIdParams, querystring: noQuery } }, async (request, reply) => {
    const { id } = request.params as { id: string };
    const view = await (await managerFor(id)).prepare(id);
    return reply.status(statusOf(view)).send(outcomeBody(view));
  });

  app.post('/v1/transactions/:id/commit', { schema: { params: transactionIdParams, querystring: noQuery } }, async (request, reply) => {
    const { id } = request.params as { id: string };
    const view = await (await managerFor(id)).commit(id);
    return reply.status(statusOf(view)).send(outcomeBody(view));
  });

  app.post('/v1/transactions/:id/abort', { schema: { params: transactionIdParams, querystring: noQuery, body: abortBody } }, async (request) => {
    const { id } = request.params as { id: string };
    const reason = (request.body as { reason?: string } | null | undefined)?.reason;
    return (await managerFor(id)).abort(id, reason ?? 'aborted by the client');
  });

  return app;
}
