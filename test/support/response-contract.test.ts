/**
 * The response check itself: it accepts answers the spec describes and names every way
 * an answer departs from it.
 */
import { describe, expect, it } from 'vitest';
import { checkAnswer, type Answer } from './response-contract.js';

const JSON_TYPE = 'application/json; charset=utf-8';
const VIEW = {
  id: '3f0c6a52-8f0e-4d51-9a57-2d1b0c7e4a11',
  protocol: '2pc',
  state: 'active',
  decision: null,
  inDoubt: false,
  timeoutMs: 30000,
  createdAt: '2025-01-14T09:30:00.000Z',
  branches: [],
};

function answer(overrides: Partial<Answer> & { json?: unknown }): Answer {
  const { json, ...rest } = overrides;
  return {
    method: 'GET',
    url: `/v1/transactions/${VIEW.id}`,
    template: '/v1/transactions/{id}',
    matched: true,
    status: 200,
    contentType: JSON_TYPE,
    body: JSON.stringify(json ?? VIEW),
    ...rest,
  };
}

describe('checking an answer against openapi.yaml', () => {
  it('accepts an answer the spec describes, found by route template or by concrete path', () => {
    expect(checkAnswer(answer({}))).toEqual([]);
    const { template: _t, matched: _m, ...byPath } = answer({ url: `/v1/transactions/${VIEW.id}?x` });
    expect(checkAnswer(byPath)).toEqual([]);
    expect(checkAnswer(answer({ method: 'HEAD', body: '' }))).toEqual([]);
    expect(checkAnswer(answer({ method: 'DELETE', url: '/v1/participants/a', template: '/v1/participants/{name}', status: 204, contentType: undefined, body: '' }))).toEqual([]);
  });

  it('names a status the operation does not list', () => {
    expect(checkAnswer(answer({ status: 418 }))).toEqual([expect.stringMatching(/does not list status 418/)]);
  });

  it('names a field the spec does not document, and a value outside its schema', () => {
    expect(checkAnswer(answer({ json: { ...VIEW, secret: 1 } }))).toEqual([expect.stringMatching(/unevaluated properties.*secret/s)]);
    expect(checkAnswer(answer({ json: { ...VIEW, state: 'sleeping' } }))).toEqual([expect.stringMatching(/\/state must be equal to one of the allowed values/)]);
    expect(checkAnswer(answer({ json: { ...VIEW, createdAt: 'yesterday' } }))).toEqual([expect.stringMatching(/\/createdAt must match format "date-time"/)]);
  });

  it('names a wrong content type, a body that is not JSON, and a body where the spec has none', () => {
    expect(checkAnswer(answer({ contentType: 'text/plain' }))).toEqual([expect.stringMatching(/content type text\/plain/)]);
    expect(checkAnswer(answer({ body: 'ok' }))).toEqual([expect.stringMatching(/not JSON/)]);
    expect(checkAnswer(answer({ method: 'DELETE', url: '/v1/participants/a', template: '/v1/participants/{name}', status: 204, body: '{}' }))).toEqual([
      expect.stringMatching(/no body/),
    ]);
  });

  it('wants an error body with 400, 401 or 404 where no operation matches', () => {
    const error = { error: { code: 'NOT_FOUND', message: 'no route' } };
    expect(checkAnswer(answer({ url: '/v2', matched: false, template: undefined, status: 404, json: error }))).toEqual([]);
    expect(checkAnswer(answer({ url: '/v2', matched: false, template: undefined, status: 200, json: error }))).toEqual([expect.stringMatching(/no operation/)]);
    expect(checkAnswer(answer({ url: '/v2', matched: false, template: undefined, status: 404, json: { message: 'x' } }))).toEqual([
      expect.stringMatching(/does not match/),
    ]);
  });
});
