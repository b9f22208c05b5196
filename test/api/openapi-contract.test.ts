/**
 * openapi.yaml is the public contract; this test keeps it equal to what the
 * routes in src/api/server.ts register and accept.
 *
 * Routes are read from a server built by buildServer() on a real, in-process
 * Coordinator, through fastify's public API only:
 *   - the route table comes from `printRoutes({ commonPrefix: false })`, each
 *     parsed route confirmed with `hasRoute()`;
 *   - each route's validation schemas come from `request.routeOptions.schema`,
 *     read by an onRequest hook (added before `ready()`, so it applies to every
 *     route) that answers probe requests itself: no handler ever runs.
 *
 * Request schemas are compared structurally after resolving local $refs and
 * dropping annotation keywords (description, examples, …), which do not
 * change what is accepted. Path and query parameters are compared as the
 * object schema they make up; the API refuses unknown ones, so that object
 * has `additionalProperties: false` — also for an operation without query
 * parameters, whose route refuses every one.
 */

import fs from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { FastifyInstance } from 'fastify';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { buildServer } from '../../src/api/server.js';
import { ERROR_CATALOGUE } from '../../src/errors.js';
import { createLogger } from '../../src/logger.js';
import { startCoordinator, type InProcessCoordinator } from '../support/in-process-coordinator.js';

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
type JsonObject = { [key: string]: Json };

const SPEC_FILE = fileURLToPath(new URL('../../openapi.yaml', import.meta.url));
const HTTP_METHODS = ['get', 'put', 'post', 'delete', 'options', 'head', 'patch', 'trace'] as const;
const ERROR_BODY_REF = '#/components/schemas/ErrorBody';
/** 4xx/5xx answers whose body is not the error body, each for a reason. */
const NOT_ERROR_BODIES = new Set([
  'GET /healthz 503', // the Health view with status "unhealthy"
]);

const PROBE_HEADER = 'x-contract-probe';

interface RouteProbe {
  readonly method?: string;
  readonly url?: string;
  readonly schema?: JsonObject;
}

interface Operation {
  /** e.g. "POST /v1/transactions/{id}/abort" */
  readonly key: string;
  readonly method: string;
  readonly specPath: string;
  /** The same path in fastify's syntax: "/v1/transactions/:id/abort". */
  readonly routePath: string;
  readonly op: JsonObject;
  readonly parameters: JsonObject[];
}

const spec = parse(fs.readFileSync(SPEC_FILE, 'utf8')) as JsonObject;

function isObject(v: Json | undefined): v is JsonObject {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function obj(v: Json | undefined, where: string): JsonObject {
  if (!isObject(v)) throw new Error(`openapi.yaml: ${where} is not an object`);
  return v;
}

/** Resolves a local JSON pointer such as "#/components/schemas/BranchRequest". */
function resolvePointer(ref: string): Json {
  if (!ref.startsWith('#/')) throw new Error(`openapi.yaml: only local $refs are supported, got ${ref}`);
  let node: Json = spec;
  for (const raw of ref.slice(2).split('/')) {
    const key = raw.replace(/~1/g, '/').replace(/~0/g, '~');
    if (!isObject(node) || !(key in node)) throw new Error(`openapi.yaml: dangling $ref ${ref}`);
    node = node[key] as Json;
  }
  return node;
}

/** Follows $ref chains of a non-schema object (parameter, response). */
function deref(v: Json | undefined, where: string): JsonObject {
  let node = obj(v, where);
  for (let hops = 0; typeof node.$ref === 'string'; hops++) {
    if (hops > 20) throw new Error(`openapi.yaml: $ref cycle at ${where}`);
    node = obj(resolvePointer(node.$ref), node.$ref);
  }
  return node;
}

const ANNOTATIONS = new Set(['description', 'title', 'examples', 'example', '$comment', 'deprecated', 'readOnly', 'writeOnly']);
const SCHEMA_MAPS = new Set(['properties', 'patternProperties', '$defs', 'definitions', 'dependentSchemas']);
const SCHEMA_LISTS = new Set(['allOf', 'anyOf', 'oneOf', 'prefixItems']);
const SCHEMA_VALUES = new Set([
  'items', 'additionalItems', 'additionalProperties', 'unevaluatedItems', 'unevaluatedProperties',
  'contains', 'propertyNames', 'not', 'if', 'then', 'else',
]);

/**
 * The validation content of a schema: local $refs inlined, annotation keywords
 * and x- extensions dropped (only where a keyword stands, never a property name).
 */
function canonicalSchema(schema: Json, seen: readonly string[] = []): Json {
  if (typeof schema === 'boolean') return schema;
  if (!isObject(schema)) throw new Error(`openapi.yaml: ${JSON.stringify(schema)} is not a schema`);
  let base: JsonObject = {};
  if (typeof schema.$ref === 'string') {
    if (seen.includes(schema.$ref)) throw new Error(`openapi.yaml: recursive schema ${schema.$ref} is not supported here`);
    base = obj(canonicalSchema(resolvePointer(schema.$ref), [...seen, schema.$ref]), schema.$ref);
  }
  const out: JsonObject = { ...base };
  for (const [key, value] of Object.entries(schema)) {
    if (key === '$ref' || ANNOTATIONS.has(key) || key.startsWith('x-')) continue;
    if (typeof schema.$ref === 'string') {
      throw new Error(`openapi.yaml: keyword ${key} beside $ref ${schema.$ref} is not supported by this test`);
    }
    if (SCHEMA_MAPS.has(key)) {
      out[key] = Object.fromEntries(Object.entries(obj(value, key)).map(([name, sub]) => [name, canonicalSchema(sub, seen)]));
    } else if (SCHEMA_LISTS.has(key)) {
      if (!Array.isArray(value)) throw new Error(`openapi.yaml: ${key} must be a list`);
      out[key] = value.map((sub) => canonicalSchema(sub, seen));
    } else if (SCHEMA_VALUES.has(key)) {
      out[key] = canonicalSchema(value, seen);
    } else {
      out[key] = value;
    }
  }
  return out;
}

/** The route-side schema, as plain JSON (fastify marks normalized schemas with symbols). */
function plain(v: unknown): Json | undefined {
  return v === undefined ? undefined : (JSON.parse(JSON.stringify(v)) as Json);
}

function operations(): Operation[] {
  const out: Operation[] = [];
  for (const [specPath, rawItem] of Object.entries(obj(spec.paths, 'paths'))) {
    const item = obj(rawItem, specPath);
    const shared = ((item.parameters ?? []) as Json[]).map((p) => deref(p, `${specPath} parameters`));
    for (const method of HTTP_METHODS) {
      if (item[method] === undefined) continue;
      const op = obj(item[method], `${method} ${specPath}`);
      const own = ((op.parameters ?? []) as Json[]).map((p) => deref(p, `${method} ${specPath} parameters`));
      const parameters = [...shared.filter((s) => !own.some((o) => o.name === s.name && o.in === s.in)), ...own];
      out.push({
        key: `${method.toUpperCase()} ${specPath}`,
        method: method.toUpperCase(),
        specPath,
        routePath: specPath.replace(/\{([^}]+)\}/g, ':$1'),
        op,
        parameters,
      });
    }
  }
  return out;
}

/** Path and query parameters as the object schema fastify validates `params` / `querystring` with. */
function parameterSchema(parameters: JsonObject[], location: 'path' | 'query'): Json | undefined {
  const mine = parameters.filter((p) => p.in === location);
  if (mine.length === 0) return location === 'query' ? { type: 'object', additionalProperties: false } : undefined;
  const required = mine.filter((p) => p.required === true).map((p) => p.name as string);
  return {
    type: 'object',
    additionalProperties: false,
    ...(required.length === 0 ? {} : { required }),
    properties: Object.fromEntries(mine.map((p) => [p.name as string, canonicalSchema(obj(p.schema, `parameter ${String(p.name)}`))])),
  };
}

function requestBodySchema(op: JsonObject): Json | undefined {
  if (op.requestBody === undefined) return undefined;
  const media = obj(deref(op.requestBody, 'requestBody').content, 'requestBody.content');
  return canonicalSchema(obj(media['application/json'], 'requestBody application/json').schema as Json);
}

/** A concrete URL for the operation, path parameters filled with their examples. */
function exampleUrl(o: Operation): string {
  return o.specPath.replace(/\{([^}]+)\}/g, (_, name: string) => {
    const p = o.parameters.find((x) => x.in === 'path' && x.name === name);
    if (p === undefined || typeof p.example !== 'string') throw new Error(`${o.key}: path parameter ${name} needs a string example`);
    return encodeURIComponent(p.example);
  });
}

/** Every method + path in the route table; HEAD routes fastify adds for GET routes are left out. */
function registeredRoutes(app: FastifyInstance): string[] {
  const tree = app.printRoutes({ commonPrefix: false });
  const found = new Set<string>();
  const stack: string[] = [];
  for (const line of tree.split('\n')) {
    if (line.trim() === '') continue;
    const m = /^((?:│ {3}| {4})*)(?:├── |└── )(\S+?)(?: \(([A-Z, ]+)\))?$/u.exec(line);
    if (m === null) throw new Error(`cannot read this line of printRoutes(): ${JSON.stringify(line)}\n${tree}`);
    const depth = (m[1] ?? '').length / 4;
    stack.length = depth;
    stack.push(m[2] ?? '');
    for (const method of m[3]?.split(', ') ?? []) found.add(`${method} ${stack.join('')}`);
  }
  return [...found]
    .filter((r) => !(r.startsWith('HEAD ') && found.has(`GET ${r.slice(5)}`)))
    .filter((r) => !/^[A-Z]+ \/docs(\/|$)/.test(r)) // Swagger UI's pages and assets (its plugin's routes): not the API
    .sort();
}

/** Walks a response schema's $refs and combinators: does it lead to the error body? */
function reachesErrorBody(schema: Json | undefined, seen: readonly string[] = []): boolean {
  if (!isObject(schema)) return false;
  if (schema.$ref === ERROR_BODY_REF) return true;
  if (typeof schema.$ref === 'string') {
    return !seen.includes(schema.$ref) && reachesErrorBody(resolvePointer(schema.$ref), [...seen, schema.$ref]);
  }
  return ['allOf', 'anyOf', 'oneOf'].some((k) => Array.isArray(schema[k]) && (schema[k] as Json[]).some((s) => reachesErrorBody(s, seen)));
}

let c: InProcessCoordinator;
let app: FastifyInstance;

/**
 * Sends a probe. Mode "route" is answered in onRequest, before any parsing or
 * validation, with what fastify knows of the matched route. Mode "validate"
 * goes through content-type parsing and schema validation and is answered in
 * preHandler (204), so a 400 means the route refused the input.
 */
async function probe(mode: 'route' | 'validate', method: string, url: string, body?: Json) {
  return app.inject({
    method: method as 'GET',
    url,
    headers: { [PROBE_HEADER]: mode, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
    ...(body === undefined ? {} : { payload: JSON.stringify(body) }),
  });
}

beforeAll(async () => {
  c = await startCoordinator();
  app = buildServer(c.coordinator, createLogger({ level: 'silent' }));
  app.addHook('onRequest', async (request, reply) => {
    if (request.headers[PROBE_HEADER] !== 'route') return;
    const found: RouteProbe = {
      method: request.routeOptions.method as string | undefined,
      url: request.routeOptions.url,
      schema: plain(request.routeOptions.schema) as JsonObject | undefined,
    };
    return reply.code(200).send(found);
  });
  app.addHook('preHandler', async (request, reply) => {
    if (request.headers[PROBE_HEADER] === 'validate') return reply.code(204).send();
  });
  await app.ready();
});

afterAll(async () => {
  await app?.close();
  await c?.destroy();
});

describe('openapi.yaml matches the routes', () => {
  const ops = operations();

  it('is OpenAPI 3.1 with unique operationIds', () => {
    expect(spec.openapi).toMatch(/^3\.1\.\d+$/);
    const ids = ops.map((o) => o.op.operationId);
    expect(ids.every((id) => typeof id === 'string')).toBe(true);
    expect(new Set(ids).size).toBe(ids.length);
  });

  it('documents every registered route, and nothing else', () => {
    const routes = registeredRoutes(app);
    for (const route of routes) {
      const [method, url] = route.split(' ') as [string, string];
      expect(app.hasRoute({ method: method as 'GET', url }), `printRoutes() parsed into ${route}`).toBe(true);
    }
    expect(routes.length).toBeGreaterThan(0);
    const documented = ops.map((o) => `${o.method} ${o.routePath}`).sort();
    expect(documented, 'spec operations (left) vs registered routes (right)').toEqual(routes);
  });

  it.each(ops.map((o) => [o.key, o] as const))('%s: the route exists and its request schemas equal the spec', async (_key, o) => {
    expect(app.hasRoute({ method: o.method as 'GET', url: o.routePath }), `${o.key} has no route`).toBe(true);
    const res = await probe('route', o.method, exampleUrl(o));
    expect(res.statusCode).toBe(200);
    const route = res.json<RouteProbe>();
    expect({ method: route.method, url: route.url }, `${o.key} is served by another route`).toEqual({ method: o.method, url: o.routePath });
    const schema = route.schema ?? {};
    expect(Object.keys(schema).filter((k) => !['body', 'params', 'querystring'].includes(k)), 'schema parts this test does not compare').toEqual([]);
    expect(schema.params, `${o.key}: path parameters`).toEqual(parameterSchema(o.parameters, 'path'));
    expect(schema.querystring, `${o.key}: query parameters`).toEqual(parameterSchema(o.parameters, 'query'));
    expect(schema.body, `${o.key}: request body`).toEqual(requestBodySchema(o.op));
    expect(o.parameters.filter((p) => p.in !== 'path' && p.in !== 'query'), `${o.key}: header/cookie parameters are not validated by the route`).toEqual([]);
  });

  it.each(ops.filter((o) => o.op.requestBody !== undefined).map((o) => [o.key, o] as const))(
    '%s: requestBody.required and the request examples agree with the route',
    async (_key, o) => {
      const requestBody = deref(o.op.requestBody, `${o.key} requestBody`);
      const withoutBody = await probe('validate', o.method, exampleUrl(o));
      expect(withoutBody.statusCode, `${o.key} without a body: ${withoutBody.body}`).toBe(requestBody.required === true ? 400 : 204);
      const examples = obj(obj(obj(requestBody.content, 'content')['application/json'], 'application/json').examples ?? {}, 'examples');
      expect(Object.keys(examples).length, `${o.key} has no request example`).toBeGreaterThan(0);
      for (const [name, raw] of Object.entries(examples)) {
        const value = deref(raw, `${o.key} example ${name}`).value as Json;
        const res = await probe('validate', o.method, exampleUrl(o), value);
        expect(res.statusCode, `${o.key} example "${name}" is refused: ${res.body}`).toBe(204);
      }
    },
  );

  it.each(ops.map((o) => [o.key, o] as const))('%s: refuses an unknown query parameter with 400, as the spec says', async (_key, o) => {
    // With the operation's first request example, so that only the query can be refused.
    const requestBody = o.op.requestBody === undefined ? undefined : deref(o.op.requestBody, `${o.key} requestBody`);
    const examples = requestBody === undefined ? {} : obj(obj(obj(requestBody.content, 'content')['application/json'], 'application/json').examples, 'examples');
    const first = Object.values(examples)[0];
    const res = await probe('validate', o.method, `${exampleUrl(o)}?bogus=1`, first === undefined ? undefined : (deref(first, `${o.key} example`).value as Json));
    expect(res.statusCode, `${o.key}?bogus=1: ${res.body}`).toBe(400);
    expect(res.json()).toMatchObject({ error: { code: 'VALIDATION_FAILED', details: { context: 'querystring' } } });
    const listed = deref(obj(o.op.responses, `${o.key} responses`)['400'], `${o.key} 400`);
    expect(listed['x-error-codes'], `${o.key} must list 400 VALIDATION_FAILED`).toEqual(['VALIDATION_FAILED']);
  });

  it("lists every error code of ERROR_CATALOGUE, and no other, in the error body's code enum", () => {
    const errorCode = obj(resolvePointer('#/components/schemas/ErrorCode'), 'ErrorCode');
    expect([...(errorCode.enum as string[])].sort()).toEqual(Object.keys(ERROR_CATALOGUE).sort());
    const errorBody = obj(resolvePointer(ERROR_BODY_REF), 'ErrorBody');
    const code = obj(obj(obj(obj(errorBody.properties, 'ErrorBody.properties').error, 'error').properties, 'error.properties').code, 'code');
    expect(code).toEqual({ $ref: '#/components/schemas/ErrorCode' });
  });

  it.each(ops.map((o) => [o.key, o] as const))('%s: responses have numeric statuses, and errors the error body', (_key, o) => {
    const responses = obj(o.op.responses, `${o.key} responses`);
    expect(Object.keys(responses).length).toBeGreaterThan(0);
    for (const [status, raw] of Object.entries(responses)) {
      expect(status, `${o.key}: response key ${status} is not an HTTP status`).toMatch(/^[1-5]\d\d$/);
      const response = deref(raw, `${o.key} ${status}`);
      expect(typeof response.description, `${o.key} ${status} needs a description`).toBe('string');
      if (status === '204' || status.startsWith('3')) {
        expect(response.content, `${o.key} ${status} has a body`).toBeUndefined();
        continue;
      }
      const content = obj(response.content, `${o.key} ${status} content`);
      const isError = Number(status) >= 400;
      if (!isError && content['application/json'] === undefined) {
        // Text, not JSON (a page, a script, metrics): each media type's schema is a string.
        for (const [type, media] of Object.entries(content)) {
          expect(obj(media, `${o.key} ${status} ${type}`).schema, `${o.key} ${status} ${type}`).toEqual({ type: 'string' });
        }
        continue;
      }
      const schema = obj(content['application/json'], `${o.key} ${status} json`).schema;
      expect(schema, `${o.key} ${status} has no schema`).toBeDefined();
      if (isError && !NOT_ERROR_BODIES.has(`${o.key} ${status}`)) {
        expect(reachesErrorBody(schema), `${o.key} ${status} must reference ${ERROR_BODY_REF}`).toBe(true);
      }
      // x-error-codes: the codes this answer can carry; each one's catalogue status must be this one.
      const codes = response['x-error-codes'];
      if (isError && !NOT_ERROR_BODIES.has(`${o.key} ${status}`)) {
        expect(Array.isArray(codes) && codes.length > 0, `${o.key} ${status} needs x-error-codes`).toBe(true);
      }
      for (const codeName of (codes ?? []) as string[]) {
        const entry = ERROR_CATALOGUE[codeName as keyof typeof ERROR_CATALOGUE] as { status: number } | undefined;
        expect(entry, `${o.key} ${status}: ${codeName} is not in ERROR_CATALOGUE`).toBeDefined();
        expect(entry?.status, `${o.key} ${status}: ${codeName} answers ${entry?.status}`).toBe(Number(status));
      }
    }
  });
});
