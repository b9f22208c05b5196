/**
 * Every real answer of the test suite, checked against openapi.yaml.
 *
 * An answer is looked up by its operation (method + path template) and status:
 *   - a status the operation does not list is a violation;
 *   - a response with `content` needs that media type and a body valid against its
 *     schema (ajv, JSON Schema 2020-12 as OpenAPI 3.1 uses it, with formats);
 *   - a response without `content` (204) needs an empty body.
 * An answer no operation matches (the not-found handler) must be a 400/401/404 error body.
 *
 * Closed world: objects the spec describes are checked as if they had
 * `unevaluatedProperties: false` unless they say what else they allow, so a field
 * the server sends but the spec does not name is a violation. (The spec itself stays
 * open: clients should tolerate new fields; the check keeps every field documented.)
 *
 * Violations are collected here and fail the test that caused them
 * (test/support/response-contract-setup.ts, a vitest setup file, which also switches the
 * checks on: a program outside the test runner, such as the chaos run, checks nothing and
 * keeps nothing). Answers come from the in-process coordinator's onSend hook
 * (installResponseValidation) and from CoordinatorProcess.request (recordAnswer).
 */

import fs from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Ajv2020, type ValidateFunction } from 'ajv/dist/2020.js';
import formats from 'ajv-formats';
import type { FastifyInstance } from 'fastify';
import { parse } from 'yaml';

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
type JsonObject = { [key: string]: Json };

export interface Answer {
  readonly method: string;
  /** The concrete path (query allowed); used when `template` is not known. */
  readonly url: string;
  /** The matched route as a spec path ("/v1/transactions/{id}"), when the server told which. */
  readonly template?: string;
  /** Whether a route matched at all; false for the not-found handler. Unknown: match `url`. */
  readonly matched?: boolean;
  readonly status: number;
  readonly contentType: string | undefined;
  /** The raw body; '' for none. */
  readonly body: string;
}

const SPEC_FILE = fileURLToPath(new URL('../../openapi.yaml', import.meta.url));
const ERROR_BODY_REF = '#/components/schemas/ErrorBody';
/** What an unmatched request may answer: a bad URL, a missing token, no such route. */
const UNMATCHED_STATUSES = new Set([400, 401, 404]);
const COMBINATORS = new Set(['allOf', 'anyOf', 'oneOf']);

const violations: string[] = [];
let checking = false;

/** From now on answers are checked and their violations kept (until takeViolations). */
export function checkAnswers(): void {
  checking = true;
}

/** The violations recorded since the last call, and forgets them. */
export function takeViolations(): string[] {
  return violations.splice(0, violations.length);
}

// ---- the spec ---------------------------------------------------------------------------

interface Spec {
  readonly doc: JsonObject;
  readonly ajv: Ajv2020;
  readonly validators: Map<string, ValidateFunction>;
  readonly paths: { readonly template: string; readonly pattern: RegExp; readonly item: JsonObject }[];
}

let loaded: Spec | undefined;

function isObject(v: Json | undefined): v is JsonObject {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function spec(): Spec {
  if (loaded !== undefined) return loaded;
  const doc = parse(fs.readFileSync(SPEC_FILE, 'utf8')) as JsonObject;
  const ajv = new Ajv2020({ strict: true, strictTypes: false, allErrors: true });
  formats.default(ajv);
  const paths = Object.entries(doc.paths as JsonObject).map(([template, item]) => ({
    template,
    pattern: new RegExp(`^${template.replace(/\{[^}]+\}/g, '[^/]+')}$`),
    item: item as JsonObject,
  }));
  loaded = { doc, ajv, validators: new Map(), paths };
  return loaded;
}

function resolvePointer(ref: string): Json {
  if (!ref.startsWith('#/')) throw new Error(`openapi.yaml: only local $refs are supported, got ${ref}`);
  let node: Json = spec().doc;
  for (const raw of ref.slice(2).split('/')) {
    const key = raw.replace(/~1/g, '/').replace(/~0/g, '~');
    if (!isObject(node) || !(key in node)) throw new Error(`openapi.yaml: dangling $ref ${ref}`);
    node = node[key] as Json;
  }
  return node;
}

/** Follows the $ref chain of a response object. */
function deref(v: Json | undefined): JsonObject | undefined {
  let node = v;
  for (let hops = 0; isObject(node) && typeof node.$ref === 'string'; hops++) {
    if (hops > 20) throw new Error(`openapi.yaml: $ref cycle at ${node.$ref}`);
    node = resolvePointer(node.$ref);
  }
  return isObject(node) ? node : undefined;
}

function describesObject(schema: JsonObject): boolean {
  const type = schema.type;
  if (type === 'object' || (Array.isArray(type) && type.includes('object'))) return true;
  return schema.properties !== undefined || [...COMBINATORS].some((k) => Array.isArray(schema[k]));
}

/**
 * The schema with local $refs inlined and every object that does not say otherwise closed
 * (`unevaluatedProperties: false`). Members of allOf/anyOf/oneOf stay open: the object they
 * make up together is closed where it stands, so each member's properties count.
 */
function closedSchema(schema: Json, seen: readonly string[] = [], member = false): Json {
  if (!isObject(schema)) return schema;
  if (typeof schema.$ref === 'string') {
    if (seen.includes(schema.$ref)) throw new Error(`openapi.yaml: recursive schema ${schema.$ref}`);
    const { $ref, ...beside } = schema;
    const target = resolvePointer($ref) as JsonObject;
    return closedSchema({ ...target, ...beside }, [...seen, $ref], member);
  }
  const out: JsonObject = {};
  for (const [key, value] of Object.entries(schema)) {
    if (key === 'properties' || key === 'patternProperties') {
      out[key] = Object.fromEntries(Object.entries(value as JsonObject).map(([name, sub]) => [name, closedSchema(sub, seen)]));
    } else if (COMBINATORS.has(key)) {
      out[key] = (value as Json[]).map((sub) => closedSchema(sub, seen, true));
    } else if (key === 'items' || key === 'additionalProperties' || key === 'not' || key === 'contains') {
      out[key] = closedSchema(value, seen);
    } else if (key === 'example' || key.startsWith('x-')) {
      continue; // OpenAPI annotations ajv does not know
    } else {
      out[key] = value;
    }
  }
  if (!member && describesObject(out) && out.additionalProperties === undefined && out.unevaluatedProperties === undefined) {
    out.unevaluatedProperties = false;
  }
  return out;
}

function validatorFor(key: string, schema: Json): ValidateFunction {
  const s = spec();
  let validate = s.validators.get(key);
  if (validate === undefined) {
    validate = s.ajv.compile(closedSchema(schema) as object);
    s.validators.set(key, validate);
  }
  return validate;
}

// ---- checking one answer -----------------------------------------------------------------

function findOperation(answer: Answer): { key: string; op: JsonObject } | undefined {
  const method = (answer.method === 'HEAD' ? 'GET' : answer.method).toLowerCase();
  const s = spec();
  const path = answer.template ?? answer.url.split('?')[0] ?? '';
  const entry = answer.template === undefined ? s.paths.find((p) => p.pattern.test(path)) : s.paths.find((p) => p.template === path);
  const op = entry?.item[method];
  return entry === undefined || !isObject(op) ? undefined : { key: `${method.toUpperCase()} ${entry.template}`, op };
}

function mediaType(contentType: string | undefined): string | undefined {
  return contentType?.split(';')[0]?.trim().toLowerCase();
}

function checkBody(where: string, key: string, answer: Answer, content: JsonObject | undefined): string[] {
  if (content === undefined) {
    return answer.body === '' ? [] : [`${where}: the spec gives this answer no body, but it has one: ${answer.body.slice(0, 200)}`];
  }
  if (answer.method === 'HEAD') return [];
  const type = mediaType(answer.contentType);
  const media = type === undefined ? undefined : deref(content[type]);
  if (media === undefined) return [`${where}: content type ${String(answer.contentType)} is not one of ${Object.keys(content).join(', ')}`];
  // Text the spec describes as a string (metrics, HTML pages): the media type is the contract.
  if (type !== 'application/json' && !type!.endsWith('+json')) {
    const schema = deref(media.schema as Json) ?? {};
    return schema.type === 'string' ? [] : [`${where}: the spec's schema for ${type} must be a string`];
  }
  let body: Json;
  try {
    body = JSON.parse(answer.body) as Json;
  } catch {
    return [`${where}: the body is not JSON: ${answer.body.slice(0, 200)}`];
  }
  const validate = validatorFor(`${key} ${type}`, media.schema ?? {});
  if (validate(body)) return [];
  const issues = (validate.errors ?? []).map((e) => `${e.instancePath || '/'} ${e.message ?? 'invalid'}${e.params === undefined ? '' : ` ${JSON.stringify(e.params)}`}`);
  return [`${where}: the body does not match the spec's schema:\n    ${issues.join('\n    ')}\n  body: ${answer.body.slice(0, 2000)}`];
}

/** The ways the answer departs from openapi.yaml (none: []). */
export function checkAnswer(answer: Answer): string[] {
  // Swagger UI's pages and assets (GET /docs…) are the docs of the API, not part of it.
  if (/^\/docs(\/|\?|$)/.test(answer.url)) return [];
  const label = `${answer.method} ${answer.url} → ${answer.status}`;
  const found = answer.matched === false ? undefined : findOperation(answer);
  if (found === undefined) {
    if (!UNMATCHED_STATUSES.has(answer.status)) return [`${label}: no operation of the spec matches, and the status is not 400/401/404`];
    return checkBody(label, `unmatched ${answer.status}`, answer, { 'application/json': { schema: { $ref: ERROR_BODY_REF } } });
  }
  const response = deref((found.op.responses as JsonObject)[String(answer.status)]);
  if (response === undefined) {
    const listed = Object.keys(found.op.responses as JsonObject).join(', ');
    return [`${label}: ${found.key} does not list status ${answer.status} (it lists ${listed}); body: ${answer.body.slice(0, 500)}`];
  }
  const content = response.content === undefined ? undefined : (response.content as JsonObject);
  return checkBody(`${label} (${found.key})`, `${found.key} ${answer.status}`, answer, content);
}

/** Checks the answer and keeps its violations for the running test. */
export function recordAnswer(answer: Answer): void {
  if (!checking) return;
  try {
    violations.push(...checkAnswer(answer));
  } catch (err) {
    violations.push(`${answer.method} ${answer.url}: the answer could not be checked: ${err instanceof Error ? err.message : String(err)}`);
  }
}

function payloadText(payload: unknown): string | undefined {
  if (payload === undefined || payload === null) return '';
  if (typeof payload === 'string') return payload;
  if (Buffer.isBuffer(payload)) return payload.toString('utf8');
  return undefined; // a stream: not an answer this API gives
}

/** An onSend hook that records every answer of the app. Add before `ready()`. */
export function installResponseValidation(app: FastifyInstance): void {
  app.addHook('onSend', async (request, reply, payload) => {
    if (!checking) return payload;
    const body = payloadText(payload);
    const route = request.routeOptions.url;
    if (body === undefined) {
      violations.push(`${request.method} ${request.url}: answered a stream, which the spec cannot describe`);
      return payload;
    }
    const header = reply.getHeader('content-type');
    recordAnswer({
      method: request.method,
      url: request.url,
      matched: route !== undefined,
      ...(route === undefined ? {} : { template: route.replace(/:([A-Za-z0-9_]+)/g, '{$1}') }),
      status: reply.statusCode,
      contentType: typeof header === 'string' ? header : undefined,
      body,
    });
    return payload;
  });
}
