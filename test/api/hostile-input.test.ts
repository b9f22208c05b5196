/**
 * Property-based: malformed, oversized and hostile bodies, ids and headers
 * thrown at every route. Each answer must be a 4xx carrying an error code
 * from the catalogue; the process stays up; the log and the stores are
 * unchanged.
 */
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { ERROR_CATALOGUE } from '../../src/errors.js';
import { createAccounts, freshDatabase, preparedGids, totalBalance } from '../support/databases.js';
import { startCoordinator, type InProcessCoordinator } from '../support/in-process-coordinator.js';

let c: InProcessCoordinator;
let db: string;
let openTx: string;
const codes = new Set(Object.keys(ERROR_CATALOGUE));

beforeAll(async () => {
  db = await freshDatabase(inject('pgUrlA'));
  await createAccounts(db, { alice: 100 });
  c = await startCoordinator({ TCX_BODY_LIMIT_BYTES: '65536' });
  expect((await c.app.inject({ method: 'POST', url: '/v1/participants', payload: { name: 'a', kind: 'postgres', connectionString: db } })).statusCode).toBe(201);
  openTx = (await c.app.inject({ method: 'POST', url: '/v1/transactions', payload: {} })).json().id;
});

afterAll(async () => c?.destroy());

async function state(): Promise<{ records: number; total: number; prepared: number; participants: number; live: number }> {
  await new Promise((r) => setTimeout(r, 30)); // let lazily written records reach the log
  const health = c.coordinator.health();
  return {
    records: health.log.appendedRecords,
    total: await totalBalance(db),
    prepared: (await preparedGids(db)).length,
    participants: health.participants,
    live: health.liveTransactions,
  };
}

function expectRefused(res: { statusCode: number; body: string }, what: string): void {
  expect(res.statusCode, `${what}: ${res.body.slice(0, 200)}`).toBeGreaterThanOrEqual(400);
  expect(res.statusCode, `${what}: ${res.body.slice(0, 200)}`).toBeLessThan(500);
  const body = JSON.parse(res.body) as { error?: { code?: string; message?: string } };
  expect(codes.has(body.error?.code ?? ''), `${what}: code ${body.error?.code}`).toBe(true);
  expect(typeof body.error?.message).toBe('string');
}

/** Any JSON value that is not an object (nor null, a valid empty abort body), or an object with a key no schema allows. */
const hostileBody = fc.oneof(
  fc.jsonValue().filter((v) => (typeof v !== 'object' && v !== null) || Array.isArray(v)),
  fc.dictionary(fc.string({ maxLength: 20 }), fc.jsonValue({ maxDepth: 3 }), { maxKeys: 6 }).map((d) => ({ ...d, ['\u0000hostile']: true })),
);

const hostileId = fc.oneof(
  fc.string({ maxLength: 300 }),
  fc.uuid(), // well-formed but unknown
  fc.constantFrom('..%2F..%2Fetc%2Fpasswd', '%00', 'a'.repeat(65), "'; DROP TABLE accounts; --", '$(reboot)', '%F0%9F%92%A5'),
);

const ROUTES_WITH_BODY = ['/v1/participants', '/v1/transactions', `/v1/transactions/{open}/branches`, `/v1/transactions/{open}/abort`];

describe('hostile input', () => {
  it('refuses random bodies on every route that takes one, changing nothing', async () => {
    const before = await state();
    await fc.assert(
      fc.asyncProperty(fc.constantFrom(...ROUTES_WITH_BODY), hostileBody, async (route, body) => {
        const url = route.replace('{open}', openTx);
        const res = await c.app.inject({ method: 'POST', url, payload: JSON.stringify(body), headers: { 'content-type': 'application/json' } });
        expectRefused(res, `POST ${url} ${JSON.stringify(body).slice(0, 100)}`);
      }),
      { numRuns: 300 },
    );
    expect(await state()).toEqual(before);
  });

  it('refuses malformed JSON, wrong content types and oversized bodies', async () => {
    const before = await state();
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom(...ROUTES_WITH_BODY),
        fc.oneof(
          fc.string({ maxLength: 200 }).filter((s) => {
            try {
              JSON.parse(s);
              return false;
            } catch {
              return true;
            }
          }),
          fc.constant('{"branches": ['),
          fc.constant('{"a":' + '['.repeat(5000)),
        ),
        fc.constantFrom('application/json', 'text/plain', 'application/x-www-form-urlencoded', 'application/xml', 'multipart/form-data; boundary=x'),
        async (route, raw, contentType) => {
          const url = route.replace('{open}', openTx);
          const res = await c.app.inject({ method: 'POST', url, payload: raw, headers: { 'content-type': contentType } });
          expectRefused(res, `POST ${url} (${contentType}) ${raw.slice(0, 60)}`);
        },
      ),
      { numRuns: 200 },
    );
    const huge = JSON.stringify({ name: 'x'.repeat(70_000), kind: 'http', baseUrl: 'http://127.0.0.1:1' });
    const res = await c.app.inject({ method: 'POST', url: '/v1/participants', payload: huge, headers: { 'content-type': 'application/json' } });
    expect(res.statusCode).toBe(413);
    expect(res.json().error.code).toBe('PAYLOAD_TOO_LARGE');
    expect(await state()).toEqual(before);
  });

  it('refuses hostile ids and names in every path', async () => {
    const before = await state();
    const paths = [
      ['GET', '/v1/transactions/{x}'],
      ['POST', '/v1/transactions/{x}/prepare'],
      ['POST', '/v1/transactions/{x}/commit'],
      ['POST', '/v1/transactions/{x}/abort'],
      ['POST', '/v1/transactions/{x}/retry'],
      ['GET', '/v1/participants/{x}'],
      ['DELETE', '/v1/participants/{x}'],
      ['GET', '/v1/participants/{x}/prepared'],
    ] as const;
    await fc.assert(
      fc.asyncProperty(fc.constantFrom(...paths), hostileId, async ([method, path], id) => {
        const url = path.replace('{x}', encodeURIComponent(id));
        const res = await c.app.inject({ method, url });
        expectRefused(res, `${method} ${url}`);
      }),
      { numRuns: 400 },
    );
    expect(await state()).toEqual(before);
  });

  it('survives hostile headers and query strings', async () => {
    const before = await state();
    await fc.assert(
      fc.asyncProperty(
        fc.dictionary(fc.stringMatching(/^[a-z-]{1,20}$/), fc.string({ maxLength: 100 }).map((s) => s.replace(/[^\x20-\x7e]/g, '')), { maxKeys: 5 }),
        fc.string({ maxLength: 100 }),
        async (headers, query) => {
          const res = await c.app.inject({ method: 'GET', url: `/v1/transactions?state=${encodeURIComponent(query)}&limit=${encodeURIComponent(query)}`, headers });
          expect(res.statusCode).toBeLessThan(500);
        },
      ),
      { numRuns: 200 },
    );
    expect((await c.app.inject({ method: 'GET', url: '/healthz' })).statusCode).toBe(200);
    expect(await state()).toEqual(before);
  });
});
