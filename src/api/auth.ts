/**
 * Bearer-token authentication. When any token is configured, every /v1 route
 * needs `Authorization: Bearer <token>`; registering or removing participants
 * and resolving branches by hand need an admin token. Tokens are compared in
 * constant time (SHA-256 digests through timingSafeEqual, so neither content
 * nor length leaks through timing). /healthz stays open for probes, and the API's docs
 * (/docs, /openapi.json) for anyone: they hold no data; so do routes marked
 * `config: { public: true }` (the dashboard's static files, src/ui/dashboard.ts).
 */

import { createHash, timingSafeEqual } from 'node:crypto';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { CoordinatorError } from '../errors.js';
import { isPublicDocsRoute } from './operator-routes.js';

declare module 'fastify' {
  interface FastifyContextConfig {
    /** Answered without a token: the route carries no data (the dashboard's static files). */
    public?: boolean;
  }
}

export interface AuthOptions {
  readonly apiTokens: readonly string[];
  readonly adminTokens: readonly string[];
}

type Role = 'api' | 'admin';

const digest = (token: string): Buffer => createHash('sha256').update(token).digest();

function matchesAny(candidate: Buffer, tokens: readonly Buffer[]): boolean {
  let found = false;
  for (const t of tokens) found = timingSafeEqual(candidate, t) || found; // no early exit
  return found;
}

/** Routes (as registered) that change who takes part, or override the log: admin only. */
const ADMIN_ROUTES = new Set([
  'POST /v1/participants',
  'DELETE /v1/participants/:name',
  'POST /v1/participants/:name/prepared/:gid/resolve',
  'POST /v1/transactions/:id/branches/:branchId/forget',
]);

export function isAdminRoute(method: string, route: string): boolean {
  return ADMIN_ROUTES.has(`${method} ${route}`);
}

export function installAuth(app: FastifyInstance, options: AuthOptions): void {
  const api = options.apiTokens.map(digest);
  const admin = options.adminTokens.map(digest);
  if (api.length + admin.length === 0) return; // loopback development mode: open
  app.addHook('onRequest', async (request: FastifyRequest) => {
    // Decide on the matched route, never on the raw URL: /%761/participants routes to
    // /v1/participants. Everything but the health probe needs a token, unmatched paths too.
    const route = request.routeOptions.url;
    if (route === '/healthz' || isPublicDocsRoute(route) || request.routeOptions.config?.public === true) return;
    const header = request.headers.authorization;
    // The scheme is case-insensitive (RFC 7235): "bearer" works as well as "Bearer".
    const match = typeof header === 'string' ? /^Bearer ([\x21-\x7e]{1,512})$/i.exec(header) : null;
    if (match === null) throw new CoordinatorError('UNAUTHORIZED', 'missing or malformed Authorization: Bearer header');
    const presented = digest(match[1] as string);
    const role: Role | undefined = matchesAny(presented, admin) ? 'admin' : matchesAny(presented, api) ? 'api' : undefined;
    if (role === undefined) throw new CoordinatorError('UNAUTHORIZED', 'unknown bearer token');
    if (role !== 'admin' && isAdminRoute(request.method, route ?? '')) {
      throw new CoordinatorError('FORBIDDEN', 'registering and removing participants, resolving branches by hand and forgetting branches need an admin token');
    }
  });
}

/** A fingerprint of the request's bearer token (never the token), or undefined without one. */
export function tokenOf(request: FastifyRequest): string | undefined {
  const header = request.headers.authorization;
  const match = typeof header === 'string' ? /^Bearer (\S+)$/i.exec(header) : null;
  return match === null ? undefined : `token:${digest(match[1] as string).toString('hex').slice(0, 12)}`;
}

/** Who made a request, for audit records: the token's fingerprint, or the address in open mode. */
export function actorOf(request: FastifyRequest): string {
  return tokenOf(request) ?? `local:${request.ip}`;
}
