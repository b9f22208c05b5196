/**
 * Maps every error to one machine-readable body:
 *
 *   { "error": { "code": "UNKNOWN_PARTICIPANT", "message": "...", "details": {...} }, "state"?: "aborted" }
 *
 * Validation failures, malformed JSON, oversized bodies and wrong content
 * types are 4xx with a stable code; anything unexpected is a logged 500.
 */

import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { CoordinatorError, ERROR_CATALOGUE, type ErrorCode } from '../errors.js';
import { InvalidTransitionError } from '../protocol/commit-protocol.js';

export interface ErrorBody {
  readonly error: { readonly code: ErrorCode; readonly message: string; readonly details?: Record<string, unknown> };
  readonly state?: string;
}

function body(code: ErrorCode, message: string, details?: Record<string, unknown>): ErrorBody {
  const state = typeof details?.state === 'string' ? details.state : undefined;
  return {
    error: details === undefined ? { code, message } : { code, message, details },
    ...(state === undefined ? {} : { state }),
  };
}

function fromFastifyError(err: FastifyError): { status: number; body: ErrorBody } | undefined {
  if (err.validation !== undefined) {
    const details = {
      context: err.validationContext,
      issues: err.validation.map((v) => ({ path: v.instancePath, message: v.message ?? 'invalid', keyword: v.keyword })),
    };
    return { status: 400, body: body('VALIDATION_FAILED', err.message, details) };
  }
  const status = err.statusCode ?? 500;
  if (status === 413) return { status, body: body('PAYLOAD_TOO_LARGE', err.message) };
  if (status === 415) return { status, body: body('UNSUPPORTED_MEDIA_TYPE', err.message) };
  if (status >= 400 && status < 500) return { status: 400, body: body('VALIDATION_FAILED', err.message) };
  return undefined;
}

/**
 * Errors Fastify's router raises before any hook runs (a path it cannot decode, a path
 * parameter past maxParamLength): answered in the catalogue's shape too, without echoing the
 * path back.
 */
export function frameworkErrors(err: FastifyError, request: FastifyRequest, reply: FastifyReply): void {
  if (err.code === 'FST_ERR_BAD_URL') {
    void reply.status(400).send(body('VALIDATION_FAILED', 'the URL path is not validly percent-encoded'));
  } else if (err.code === 'FST_ERR_MAX_PARAM_LENGTH') {
    void reply.status(400).send(body('VALIDATION_FAILED', `a path parameter is longer than ${MAX_PARAM_LENGTH} characters`));
  } else {
    request.log.error({ reqId: request.id, err }, 'unexpected framework error');
    void reply.status(500).send(body('INTERNAL', ERROR_CATALOGUE.INTERNAL.message));
  }
}

/** Longest path parameter the router accepts (transaction ids are 64, gids fewer than 130). */
export const MAX_PARAM_LENGTH = 200;

export function installErrorHandling(app: FastifyInstance): void {
  app.setErrorHandler((err: FastifyError | Error, request: FastifyRequest, reply: FastifyReply) => {
    if (err instanceof CoordinatorError) {
      if (err.status >= 500) request.log.warn({ reqId: request.id, code: err.code, err: err.message }, 'request failed');
      if (err.retryAfterSeconds !== undefined) void reply.header('retry-after', String(err.retryAfterSeconds));
      return reply.status(err.status).send(body(err.code, err.message, err.details));
    }
    if (err instanceof InvalidTransitionError) {
      return reply.status(409).send(body('INVALID_STATE_TRANSITION', err.message, { state: err.phase }));
    }
    const mapped = fromFastifyError(err as FastifyError);
    if (mapped !== undefined) return reply.status(mapped.status).send(mapped.body);
    request.log.error({ reqId: request.id, err }, 'unexpected error');
    return reply.status(500).send(body('INTERNAL', ERROR_CATALOGUE.INTERNAL.message));
  });
  app.setNotFoundHandler((request, reply) => {
    return reply.status(404).send(body('NOT_FOUND', `no route ${request.method} ${request.url.split('?')[0] ?? ''}`));
  });
}
