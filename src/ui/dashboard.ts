/**
 * The operator's dashboard, served by the coordinator at /ui/: one static page and its
 * scripts and style sheet — plain browser JavaScript, no build step, nothing fetched from
 * anywhere but the coordinator's own API (/healthz and /v1/…, with the operator's token).
 *
 *   GET /ui            302 to `ui/` (relative, so a path prefix in front of the coordinator stays)
 *   GET /ui/           index.html
 *   GET /ui/{asset}    one of ASSETS; any other name answers 404 NOT_FOUND in the error body
 *
 * The files are read once, here, from the directory next to this module: dist/ui/ when built
 * (scripts/copy-assets.mjs copies them there from src/ui/), src/ui/ under the test runner. Only
 * the names in ASSETS are served; no path is ever built from a request. The routes carry no
 * data, so they need no token (`config.public`, see auth.ts); the data comes from API calls the
 * page makes with the token the operator enters. Every answer, errors included, carries a strict
 * Content-Security-Policy (scripts, styles and connections from this origin only; no inline
 * script or style; no framing), `x-content-type-options: nosniff` and `cache-control: no-cache`
 * (revalidate: a new coordinator version is picked up at once).
 */

import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { noQuery } from '../api/schemas.js';
import { CoordinatorError } from '../errors.js';

/** The files the page is made of, and what they are served as. */
const ASSETS: Readonly<Record<string, string>> = {
  'index.html': 'text/html; charset=utf-8',
  'style.css': 'text/css; charset=utf-8',
  'app.js': 'text/javascript; charset=utf-8',
  'api.js': 'text/javascript; charset=utf-8',
  'dom.js': 'text/javascript; charset=utf-8',
  'views.js': 'text/javascript; charset=utf-8',
  'participants.js': 'text/javascript; charset=utf-8',
};

export const ASSET_NAME_PATTERN = '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$';

export const assetParams = {
  type: 'object',
  additionalProperties: false,
  required: ['asset'],
  properties: { asset: { type: 'string', pattern: ASSET_NAME_PATTERN } },
} as const;

export const CONTENT_SECURITY_POLICY = [
  "default-src 'self'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self'",
  "connect-src 'self'",
  "object-src 'none'",
  "base-uri 'none'",
  "form-action 'self'",
  "frame-ancestors 'none'",
].join('; ');

const SECURITY_HEADERS: Readonly<Record<string, string>> = {
  'content-security-policy': CONTENT_SECURITY_POLICY,
  'x-content-type-options': 'nosniff',
  'cache-control': 'no-cache',
  'referrer-policy': 'no-referrer',
  'x-frame-options': 'DENY',
};

interface Asset {
  readonly contentType: string;
  readonly body: Buffer;
}

/** The page's files as they are on disk now; a missing one is left out (and answers 404). */
function loadAssets(dir: string): { assets: Map<string, Asset>; missing: string[] } {
  const assets = new Map<string, Asset>();
  const missing: string[] = [];
  for (const [name, contentType] of Object.entries(ASSETS)) {
    try {
      assets.set(name, { contentType, body: fs.readFileSync(path.join(dir, name)) });
    } catch {
      missing.push(name);
    }
  }
  return { assets, missing };
}

export function installDashboard(app: FastifyInstance, dir = path.dirname(fileURLToPath(import.meta.url))): void {
  const { assets, missing } = loadAssets(dir);
  if (missing.length > 0) {
    app.log.warn({ dir, missing }, 'dashboard: files missing (run `npm run build`, which copies src/ui/ to dist/ui/); /ui/ answers 404 for them');
  }
  const withHeaders = async (_request: FastifyRequest, reply: FastifyReply): Promise<void> => {
    void reply.headers(SECURITY_HEADERS);
  };
  const send = (reply: FastifyReply, name: string): FastifyReply => {
    const asset = assets.get(name);
    if (asset === undefined) throw new CoordinatorError('NOT_FOUND', `no dashboard file ${name}`);
    return reply.type(asset.contentType).send(asset.body);
  };
  const options = { schema: { querystring: noQuery }, config: { public: true }, onRequest: withHeaders };

  app.get('/ui', options, async (_request, reply) => reply.redirect('ui/', 302));
  app.get('/ui/', options, async (_request, reply) => send(reply, 'index.html'));
  app.get('/ui/:asset', { ...options, schema: { params: assetParams, querystring: noQuery } }, async (request, reply) =>
    send(reply, (request.params as { asset: string }).asset),
  );
}
