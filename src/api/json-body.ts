/**
 * The JSON body parser. Every request body is checked here, before any schema
 * or handler walks it:
 *
 *   - valid JSON (the parser's own message says where it is not);
 *   - nested at most MAX_JSON_DEPTH levels: deeper documents would make later
 *     recursive walks (serialisation, pg's parameter encoding) overflow the
 *     stack — a 500 instead of a 400;
 *   - no `__proto__` key and no `constructor.prototype`: the prototype-poisoning
 *     shapes, refused with a message that says so (not "invalid JSON");
 *   - no number out of a double's range (`1e400`): JSON.parse makes it Infinity,
 *     which JSON cannot carry on (it would be published or stored as null).
 *
 * The depth and key checks walk the document iteratively.
 */

import type { FastifyInstance } from 'fastify';
import { CoordinatorError } from '../errors.js';

export const MAX_JSON_DEPTH = 32;

function invalid(message: string): CoordinatorError {
  return new CoordinatorError('VALIDATION_FAILED', message, { details: { context: 'body' } });
}

/** Throws VALIDATION_FAILED when the value nests deeper than `maxDepth` or carries a poisoning key. */
export function checkJsonShape(value: unknown, maxDepth = MAX_JSON_DEPTH): void {
  // Two parallel stacks (values, their depths): no pair allocated per value.
  const values: unknown[] = [value];
  const depths: number[] = [1];
  while (values.length > 0) {
    const v = values.pop();
    const depth = depths.pop()!;
    if (typeof v === 'number' && !Number.isFinite(v)) throw invalid('the body holds a number out of range: JSON numbers must fit a double (send large values as strings)');
    if (typeof v !== 'object' || v === null) continue;
    if (depth > maxDepth) throw invalid(`the body is nested deeper than ${maxDepth} levels`);
    if (Array.isArray(v)) {
      for (const item of v) {
        values.push(item);
        depths.push(depth + 1);
      }
      continue;
    }
    for (const key of Object.keys(v)) {
      const child = (v as Record<string, unknown>)[key];
      if (key === '__proto__') throw invalid('the body holds a "__proto__" key, which is not accepted');
      if (key === 'constructor' && typeof child === 'object' && child !== null && Object.hasOwn(child, 'prototype')) {
        throw invalid('the body holds a "constructor.prototype" key, which is not accepted');
      }
      values.push(child);
      depths.push(depth + 1);
    }
  }
}

export function parseJsonBody(text: string): unknown {
  if (text.length === 0) throw invalid('the body is empty although the content type is application/json');
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    if (err instanceof RangeError) throw invalid(`the body is nested deeper than ${MAX_JSON_DEPTH} levels`);
    // Where, not what: the parser's message quotes the body, which may hold a secret.
    const position = /position (\d+)/.exec(err instanceof Error ? err.message : '')?.[1];
    throw invalid(`the body is not valid JSON${position === undefined ? '' : ` (at position ${position})`}`);
  }
  checkJsonShape(value);
  return value;
}

/** Replaces Fastify's JSON parser with parseJsonBody. */
export function installJsonBodyParser(app: FastifyInstance): void {
  app.removeContentTypeParser('application/json');
  app.addContentTypeParser('application/json', { parseAs: 'string' }, (_request, body: string | Buffer, done) => {
    try {
      done(null, parseJsonBody(typeof body === 'string' ? body : body.toString('utf8')));
    } catch (err) {
      done(err as Error, undefined);
    }
  });
}
