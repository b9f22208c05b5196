/**
 * What operators and client developers read besides the API itself: Prometheus metrics
 * (`GET /metrics`), the API description (`GET /openapi.json`, from openapi.yaml) and
 * interactive API docs (`GET /docs`, Swagger UI served from its package: no network).
 *
 * /metrics is behind the bearer tokens like /v1 when tokens are set (Prometheus sends one with
 * `authorization` in its scrape config), or on a listener of its own (TCX_METRICS_PORT, main.ts)
 * that serves nothing else. The docs and the description are public: they hold no data.
 */

import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import swagger from '@fastify/swagger';
import swaggerUi from '@fastify/swagger-ui';
import type { FastifyInstance } from 'fastify';
import type { Coordinator } from '../coordinator/coordinator.js';
import { CoordinatorMetrics } from '../observability/metrics.js';
import { noQuery } from './schemas.js';

/**
 * The spec: dist/openapi.json, written from openapi.yaml by the build (no YAML to parse at
 * start-up); run from the sources (the tests), openapi.yaml itself.
 */
const SPEC_FILES = ['../openapi.json', '../../openapi.yaml'].map((f) => fileURLToPath(new URL(f, import.meta.url)));

/** Routes (as registered) that need no token even when tokens are set. */
export function isPublicDocsRoute(route: string | undefined): boolean {
  return route === '/openapi.json' || route === '/docs' || route?.startsWith('/docs/') === true;
}

/** Metrics whose gauges read this coordinator (the instance's own, with a shared log). */
export function coordinatorMetrics(coordinator: Coordinator): CoordinatorMetrics {
  return new CoordinatorMetrics({
    activeTransactions: () => coordinator.transactions.activeCount(),
    liveTransactions: () => coordinator.transactions.liveCount(),
    inDoubtTransactions: () => coordinator.transactions.inDoubtCount(),
    retainedTransactions: () => coordinator.retainedTransactions,
    logHealthy: () => coordinator.logFailed === undefined,
  });
}

export function installMetricsRoute(app: FastifyInstance, metrics: CoordinatorMetrics): void {
  app.get('/metrics', { schema: { querystring: noQuery } }, async (_request, reply) => reply.type(metrics.contentType).send(await metrics.text()));
}

export function installDocs(app: FastifyInstance): void {
  const spec = SPEC_FILES.find((f) => fs.existsSync(f));
  if (spec === undefined) return; // a build without its spec: no docs rather than no coordinator
  void app.register(swagger, { mode: 'static', specification: { path: spec, baseDir: path.dirname(spec) } });
  void app.register(swaggerUi, { routePrefix: '/docs', staticCSP: true, uiConfig: { validatorUrl: null, deepLinking: true }, logLevel: 'warn' });
  app.get('/openapi.json', { schema: { querystring: noQuery } }, async () => app.swagger());
}
