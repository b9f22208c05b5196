/**
 * Property-based: malformed, oversized and hostile bodies, ids and headers
 * thrown at every route. Each answer must be a 4xx carrying an error code
 * from the catalogue; the process stays up; the log and the stores are
 * unchanged. Then each hardening of issue 9 in turn: nesting depth, errors
 * the framework raises, credentials in every address form (never quoted
 * back), and addresses smuggling a Unix socket or a driver option (refused
 * before any connection).
 */
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { ERROR_CATALOGUE } from '../../src/errors.js';
import { createAccounts, freshDatabase, preparedGids, totalBalance } from '../support/databases.js';
import {
  credentialAddress,
  FORBIDDEN_HOSTS,
  registration,
  smuggledAddress,
  startSmugglingTargets,
  type Address,
} from '../support/hostile-addresses.js';
import {
  badEscape,
  MAX_DEPTH,
  nearMissMember,
  notJsonContentType,
  objectWith,
  place,
  placements,
  poisonMember,
  tooDeepValue,
  valueOfDepth,
} from '../support/hostile-arbitraries.js';
import { startCoordinator, type InProcessCoordinator } from '../support/in-process-coordinator.js';

let c: InProcessCoordinator;
let db: string;
let openTx: string;
let smuggling: Awaited<ReturnType<typeof startSmugglingTargets>>;
const codes = new Set(Object.keys(ERROR_CATALOGUE));
const BODY_LIMIT = 65536;

beforeAll(async () => {
  smuggling = await startSmugglingTargets();
  db = await freshDatabase(inject('pgUrlA'));
  await createAccounts(db, { alice: 100 });
  c = await startCoordinator({ TCX_BODY_LIMIT_BYTES: '65536' });
  expect((await c.app.inject({ method: 'POST', url: '/v1/participants', payload: { name: 'a', kind: 'postgres', connectionString: db } })).statusCode).toBe(201);
  openTx = (await c.app.inject({ method: 'POST', url: '/v1/transactions', payload: {} })).json().id;
});

afterAll(async () => {
  await c?.destroy();
  await smuggling?.close();
});

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

/** POST raw text as JSON. */
const postRaw = (url: string, raw: string, contentType = 'application/json') =>
  c.app.inject({ method: 'POST', url, payload: raw, headers: { 'content-type': contentType } });

const messageOf = (res: { body: string }): string => (JSON.parse(res.body) as { error: { message: string } }).error.message;

function expectNoPiece(res: { body: string; headers: Record<string, unknown> }, pieces: readonly string[], what: string): void {
  const text = res.body + JSON.stringify(res.headers);
  for (const piece of pieces) expect(text.includes(piece), `${what}: answer quotes ${piece}: ${res.body.slice(0, 300)}`).toBe(false);
}

/** Any JSON value that is not an object (nor null, a valid empty abort body), or an object with a key no schema allows. */
const hostileBody = fc.oneof(
  fc.jsonValue().filter((v) => (typeof v !== 'object' && v !== null) || Array.isArray(v)),
  fc.dictionary(fc.string({ maxLength: 20 }), fc.jsonValue({ maxDepth: 3 }), { maxKeys: 6 }).map((d) => ({ ...d, ['\u0000hostile']: true })),
);

const hostileId = fc.oneof(
  fc.string({ maxLength: 300 }).filter((id) => id !== 'a'), // the one participant: DELETE would remove it
  fc.uuid(), // well-formed but unknown
  fc.constantFrom('..%2F..%2Fetc%2Fpasswd', '%00', 'a'.repeat(65), "'; DROP TABLE accounts; --", '$(reboot)', '%F0%9F%92%A5'),
);

const ROUTES_WITH_BODY = ['/v1/participants', '/v1/transactions', `/v1/transactions/{open}/branches`, `/v1/transactions/{open}/abort`];

/** Routes with path parameters ({x}); every parameter is checked by the router before any handler. */
const PARAM_ROUTES = [
  ['GET', '/v1/transactions/{x}'],
  ['POST', '/v1/transactions/{x}/prepare'],
  ['POST', '/v1/transactions/{x}/commit'],
  ['POST', '/v1/transactions/{x}/abort'],
  ['POST', '/v1/transactions/{x}/retry'],
  ['GET', '/v1/participants/{x}'],
  ['DELETE', '/v1/participants/{x}'],
  ['GET', '/v1/participants/{x}/prepared'],
  ['POST', '/v1/participants/a/prepared/{x}/resolve'],
  ['POST', '/v1/participants/{x}/prepared/tcx:old:x:1/resolve'],
] as const;

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
    await fc.assert(
      fc.asyncProperty(fc.constantFrom(...PARAM_ROUTES), hostileId, async ([method, path], id) => {
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

describe('nesting depth', () => {
  it(`refuses JSON nested deeper than ${MAX_DEPTH} levels wherever it sits (body, http payload, SQL parameter, options, reasons)`, async () => {
    const before = await state();
    await fc.assert(
      fc.asyncProperty(fc.constantFrom(...placements(openTx)), tooDeepValue, async (p, value) => {
        const raw = place(p, value);
        const res = await postRaw(p.url, raw);
        expectRefused(res, `POST ${p.url} depth ${value.length}`);
        if (Buffer.byteLength(raw) > BODY_LIMIT) expect(res.statusCode).toBe(413);
        else expect({ status: res.statusCode, message: messageOf(res) }).toEqual({ status: 400, message: `the body is nested deeper than ${MAX_DEPTH} levels` });
      }),
      { numRuns: 150 },
    );
    expect(await state()).toEqual(before);
  });

  it(`draws the line at exactly ${MAX_DEPTH} levels`, async () => {
    const before = await state();
    const spots = placements(openTx).filter((p) => p.url.endsWith('/abort') || p.url.endsWith('/resolve')); // never valid bodies
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom(...spots),
        fc.integer({ min: 0, max: MAX_DEPTH + 8 }).chain((d) => valueOfDepth(d).map((v) => [d, v] as const)),
        async (p, [depth, value]) => {
          const res = await postRaw(p.url, place(p, value));
          expectRefused(res, `POST ${p.url} depth ${p.around + depth}`);
          expect(/nested deeper/.test(messageOf(res)), `depth ${p.around + depth}: ${messageOf(res)}`).toBe(p.around + depth > MAX_DEPTH);
        },
      ),
      { numRuns: 120 },
    );
    expect(await state()).toEqual(before);
  });
});

describe('framework errors in the catalogue shape', () => {
  const marker = fc.stringMatching(/^[a-z0-9]{0,6}$/).map((s) => `Mk7q${s}`);

  it('refuses paths it cannot percent-decode, anywhere in the path, without quoting them', async () => {
    const before = await state();
    const where = fc.oneof(
      fc.constantFrom(...PARAM_ROUTES).map(([method, path]) => ({ method, path, at: '{x}' })),
      fc.constantFrom({ method: 'GET' as const, path: '/v1/{x}', at: '{x}' }, { method: 'GET' as const, path: '/{x}/transactions', at: '{x}' }),
    );
    await fc.assert(
      fc.asyncProperty(where, marker, badEscape, marker, async ({ method, path }, a, bad, b) => {
        const url = path.replace('{x}', `${a}${bad}${b}`);
        const res = await c.app.inject({ method, url });
        expectRefused(res, `${method} ${url}`);
        expect(JSON.parse(res.body)).toEqual({ error: { code: 'VALIDATION_FAILED', message: 'the URL path is not validly percent-encoded' } });
      }),
      { numRuns: 150 },
    );
    expect(await state()).toEqual(before);
  });

  it('refuses bad escapes in query strings', async () => {
    await fc.assert(
      fc.asyncProperty(fc.constantFrom('state', 'limit', 'coordinatorId', 'x'), badEscape, async (key, bad) => {
        for (const url of [`/v1/transactions?${key}=${bad}`, `/v1/participants/a/prepared?${key}=${bad}`]) {
          const res = await c.app.inject({ method: 'GET', url });
          expect(res.statusCode, `${url}: ${res.body}`).toBeLessThan(500);
          if (res.statusCode >= 400) expectRefused(res, url);
        }
      }),
      { numRuns: 60 },
    );
  });

  it('refuses path parameters longer than 200 characters, and only those', async () => {
    const before = await state();
    const length = fc.oneof({ weight: 3, arbitrary: fc.integer({ min: 180, max: 230 }) }, { weight: 1, arbitrary: fc.integer({ min: 231, max: 8_000 }) });
    await fc.assert(
      fc.asyncProperty(fc.constantFrom(...PARAM_ROUTES), length, marker, async ([method, path], n, m) => {
        const param = (m + 'x'.repeat(n)).slice(0, n);
        const res = await c.app.inject({ method, url: path.replace('{x}', param) });
        expectRefused(res, `${method} ${path} with ${n} characters`);
        expect(/longer than 200/.test(messageOf(res)), `${n}: ${messageOf(res)}`).toBe(n > 200);
        expect(res.body).not.toContain(m + 'x'.repeat(20));
      }),
      { numRuns: 150 },
    );
    expect(await state()).toEqual(before);
  });

  it('refuses valid bodies sent with a content type that is not JSON', async () => {
    const before = await state();
    const valid: [string, string][] = [
      ['/v1/participants', '{"name":"ct","kind":"http","baseUrl":"http://127.0.0.1:1"}'],
      ['/v1/transactions', '{}'],
      [`/v1/transactions/${openTx}/abort`, '{"reason":"ct"}'],
      [`/v1/transactions/${openTx}/branches`, '{"participant":"a","operations":[{"sql":"SELECT 1"}]}'],
    ];
    await fc.assert(
      fc.asyncProperty(fc.constantFrom(...valid), notJsonContentType, async ([url, raw], contentType) => {
        const res = await postRaw(url, raw, contentType);
        expectRefused(res, `POST ${url} as ${contentType}`);
        expect(res.statusCode, contentType).toBe(415);
      }),
      { numRuns: 120 },
    );
    expect(await state()).toEqual(before);
  });

  it('refuses broken JSON without quoting any of it', async () => {
    const before = await state();
    const secret = 'Hunter2Zq9Secret';
    const body = JSON.stringify({ name: 'bj', kind: 'postgres', connectionString: `postgres://u:${secret}@10.0.0.9/bank`, options: { note: [1, 'two', null] } });
    const broken = fc
      .record({ at: fc.nat(body.length), cut: fc.nat(4), insert: fc.constantFrom('', '{', '}', '[', ']', ',', ':', '"', '\\', 'x', '\u0000', '\n') })
      .map(({ at, cut, insert }) => body.slice(0, at) + insert + body.slice(at + cut))
      .filter((raw) => {
        try {
          JSON.parse(raw);
          return false;
        } catch {
          return true;
        }
      });
    await fc.assert(
      fc.asyncProperty(fc.constantFrom(...ROUTES_WITH_BODY), broken, async (route, raw) => {
        const res = await postRaw(route.replace('{open}', openTx), raw);
        expectRefused(res, raw);
        expect(res.statusCode).toBe(400);
        expect(messageOf(res)).toMatch(/^the body is (not valid JSON( \(at position \d+\))?|empty although the content type is application\/json)$/);
        expectNoPiece(res, [secret, 'Hunter2', 'two'], raw);
      }),
      { numRuns: 150 },
    );
    expect(await state()).toEqual(before);
  });

  it('refuses numbers out of a double\'s range wherever they sit (they would become Infinity, then null)', async () => {
    const before = await state();
    const huge = fc.constantFrom('1e400', '-1e309', '1E+999', `1${'0'.repeat(400)}`, '2e308');
    const bodies = (n: string) => [
      `{"branches":[{"participant":"p","payload":{"amount":${n}}}]}`,
      `{"branches":[{"participant":"p","messages":[{"subject":"a.b","data":${n}}]}]}`,
      `{"participant":"p","operations":[{"sql":"SELECT ?","params":[${n}]}]}`,
      `{"timeoutMs":${n}}`,
    ];
    await fc.assert(
      fc.asyncProperty(fc.constantFrom(...ROUTES_WITH_BODY), huge, fc.nat(3), async (route, n, i) => {
        const raw = bodies(n)[i] as string;
        const res = await postRaw(route.replace('{open}', openTx), raw);
        expectRefused(res, raw);
        expect(messageOf(res), raw).toMatch(/^the body holds a number out of range/);
      }),
      { numRuns: 60 },
    );
    expect(await state()).toEqual(before);
  });

  it('refuses __proto__ and constructor.prototype keys at any depth, spelled plainly or \\u-escaped', async () => {
    const before = await state();
    const routes = [...ROUTES_WITH_BODY, '/v1/participants/a/prepared/tcx:old:x:1/resolve'];
    await fc.assert(
      fc.asyncProperty(fc.constantFrom(...routes), objectWith(poisonMember), async (route, raw) => {
        const res = await postRaw(route.replace('{open}', openTx), raw);
        expectRefused(res, raw);
        expect(messageOf(res), raw).toMatch(/^the body holds a "(__proto__|constructor\.prototype)" key, which is not accepted$/);
      }),
      { numRuns: 150 },
    );
    // Keys that only look alike pass the parser (the schema refuses them as unknown properties).
    await fc.assert(
      fc.asyncProperty(objectWith(nearMissMember), async (raw) => {
        const res = await postRaw(`/v1/transactions/${openTx}/abort`, raw);
        expectRefused(res, raw);
        expect(messageOf(res), raw).not.toMatch(/__proto__|constructor\.prototype|not valid JSON/);
      }),
      { numRuns: 60 },
    );
    expect(await state()).toEqual(before);
  });
});

describe('credentials in addresses', () => {
  it('refuses every kind of address with credentials on a host not allowed, quoting no piece of the password', async () => {
    const before = await state();
    await fc.assert(
      fc.asyncProperty(credentialAddress(FORBIDDEN_HOSTS), async (a: Address) => {
        const res = await c.app.inject({ method: 'POST', url: '/v1/participants', payload: registration('cred', a) });
        expectRefused(res, `${a.kind} ${a.address}`);
        expect([400, 403], `${a.address}: ${res.body}`).toContain(res.statusCode);
        expectNoPiece(res, a.pieces, a.address);
      }),
      { numRuns: 250 },
    );
    expect(await state()).toEqual(before);
  });

  it('registers or refuses them on an allowed host, never answering 5xx nor showing the password', async () => {
    const before = await state();
    let n = 0;
    await fc.assert(
      fc.asyncProperty(
        // A raw `&` ends a query value: what follows is a parameter name of the caller's making, shown as such.
        credentialAddress(['127.0.0.1:1', 'localhost:1']).filter((a) => !(a.kind === 'http' && /[?&][^=]*=[^&]*&/.test(a.address))),
        async (a: Address) => {
          const name = `cred-${n++}`;
          const res = await c.app.inject({ method: 'POST', url: '/v1/participants', payload: registration(name, a) });
          expect(res.statusCode, `${a.address}: ${res.body}`).toBeLessThan(500);
          expectNoPiece(res, a.pieces, a.address);
          if (res.statusCode === 201) {
            expect(a.kind).toBe('http'); // the other kinds are checked by connecting: nothing listens on port 1
            expectNoPiece(await c.app.inject({ method: 'GET', url: `/v1/participants/${name}` }), a.pieces, a.address);
            expect((await c.app.inject({ method: 'DELETE', url: `/v1/participants/${name}` })).statusCode).toBe(204);
          } else {
            expectRefused(res, a.address);
          }
        },
      ),
      { numRuns: 120 },
    );
    const after = await state();
    expect({ ...after, records: 0 }).toEqual({ ...before, records: 0 });
  });
});

describe('socket and option smuggling', () => {
  it('refuses Unix sockets, file-reading and session-changing parameters and client options, before any connection', async () => {
    const before = await state();
    await fc.assert(
      fc.asyncProperty(smuggledAddress(smuggling.targets), async (a: Address) => {
        const connections = smuggling.connections();
        const res = await c.app.inject({ method: 'POST', url: '/v1/participants', payload: registration('smuggled', a) });
        expect(smuggling.connections() - connections, `${a.address} was connected to`).toBe(0);
        expectRefused(res, `${a.kind} ${a.address}`);
        expect([400, 403], `${a.address}: ${res.body}`).toContain(res.statusCode);
      }),
      { numRuns: 250 },
    );
    expect(await state()).toEqual(before);
  });
});
