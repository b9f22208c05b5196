/**
 * fast-check arbitraries for the hostile-input suite: JSON nested past the parser's depth,
 * prototype-poisoning keys, paths the router cannot decode, content types that are not JSON,
 * credentials in every address form, and addresses that smuggle a Unix socket or a driver
 * option. Each produces raw text (bodies, paths, addresses), as an attacker would send it.
 */
import fc from 'fast-check';

/** The parser's limit (src/api/json-body.ts); duplicated here so a change to it is a decision. */
export const MAX_DEPTH = 32;

export type Shape = 'a' | 'o';

/** JSON text nested exactly `depth` levels (arrays and objects cycling through `shape`) around a scalar leaf. */
export function nestedJson(depth: number, shape: readonly Shape[], key = 'k', leaf = '1'): string {
  const open: string[] = [];
  const close: string[] = [];
  for (let i = 0; i < depth; i++) {
    const s = shape[i % shape.length] ?? 'a';
    open.push(s === 'a' ? '[' : `{${JSON.stringify(key)}:`);
    close.push(s === 'a' ? ']' : '}');
  }
  return open.join('') + leaf + close.reverse().join('');
}

const shapes = fc.array(fc.constantFrom<Shape>('a', 'o'), { minLength: 1, maxLength: 6 });
const plainKey = fc.string({ maxLength: 8 }).filter((k) => k !== '__proto__' && k !== 'constructor' && k !== 'prototype');
const scalarLeaf = fc.oneof(fc.constantFrom('1', 'null', 'true', '"x"'), fc.double({ noNaN: true, noDefaultInfinity: true }).map((d) => JSON.stringify(d)));

/** A value nested deeper than the limit by itself (so wherever it is placed), up to far past any stack. */
export const tooDeepValue = fc
  .record({
    depth: fc.oneof({ weight: 4, arbitrary: fc.integer({ min: MAX_DEPTH + 1, max: 300 }) }, { weight: 1, arbitrary: fc.integer({ min: 2_000, max: 20_000 }) }),
    shape: shapes,
    key: plainKey,
    leaf: scalarLeaf,
  })
  .map(({ depth, shape, key, leaf }) => nestedJson(depth, shape, key, leaf));

/** A value nested exactly `depth` levels (0: the scalar itself) around a scalar that is not a string, so it is never a valid reason. */
export const valueOfDepth = (depth: number): fc.Arbitrary<string> =>
  fc
    .record({ shape: shapes, key: plainKey, leaf: scalarLeaf.filter((l) => !l.startsWith('"')) })
    .map(({ shape, key, leaf }) => nestedJson(depth, shape, key, leaf));

/** Where a value sits in a request, with the depth the body adds around it. `@@` marks the spot. */
export interface Placement {
  readonly method: 'POST';
  readonly url: string;
  readonly template: string;
  /** Levels of the body around the spot (a value of depth d there makes a body of depth around + d). */
  readonly around: number;
}

export function placements(openTx: string): Placement[] {
  const sql = (value: string): string => `{"sql":"SELECT $1::text","params":[${value}]}`;
  return [
    { method: 'POST', url: '/v1/transactions', template: '@@', around: 0 },
    { method: 'POST', url: '/v1/transactions', template: '{"branches":[{"participant":"svc","payload":@@}],"commit":true}', around: 3 },
    { method: 'POST', url: '/v1/transactions', template: `{"branches":[{"participant":"a","operations":[${sql('@@')}]}],"commit":true}`, around: 6 },
    { method: 'POST', url: `/v1/transactions/${openTx}/branches`, template: '{"participant":"svc","payload":@@}', around: 1 },
    { method: 'POST', url: `/v1/transactions/${openTx}/branches`, template: `{"participant":"a","operations":[${sql('@@')}]}`, around: 4 },
    { method: 'POST', url: '/v1/participants', template: '{"name":"deep","kind":"redis","url":"redis://127.0.0.1:1","options":@@}', around: 1 },
    { method: 'POST', url: `/v1/transactions/${openTx}/abort`, template: '{"reason":@@}', around: 1 },
    { method: 'POST', url: '/v1/participants/a/prepared/tcx:old:x:1/resolve', template: '{"outcome":"abort","reason":@@}', around: 1 },
  ];
}

export const place = (p: Placement, value: string): string => p.template.replace('@@', () => value);

/** A JSON key that JSON.parse reads as `key`, written plainly or with some characters \u-escaped. */
const spelled = (key: string): fc.Arbitrary<string> =>
  fc.array(fc.boolean(), { minLength: key.length, maxLength: key.length }).map(
    (escape) => `"${[...key].map((ch, i) => (escape[i] === true ? `\\u${ch.charCodeAt(0).toString(16).padStart(4, '0')}` : ch)).join('')}"`,
  );

const someJson = fc.jsonValue({ maxDepth: 2 }).map((v) => JSON.stringify(v));
/** Innocent members (fast-check likes to generate "__proto__" keys: none here). */
const siblings = fc
  .dictionary(plainKey, fc.jsonValue({ maxDepth: 1 }), { maxKeys: 3 })
  .map((d) => JSON.stringify(d).slice(1, -1))
  .filter((text) => !/__proto__|constructor|prototype/.test(text));

/** An object member that poisons a prototype: `"__proto__": v` or `"constructor": {"prototype": v, …}`. */
export const poisonMember = fc.oneof(
  fc.tuple(spelled('__proto__'), someJson).map(([k, v]) => `${k}:${v}`),
  fc.tuple(spelled('constructor'), spelled('prototype'), someJson, siblings).map(([c, p, v, s]) => `${c}:{${s === '' ? '' : `${s},`}${p}:${v}}`),
);

/** Members that look alike but poison nothing: the parser must let them through (a schema may still refuse them). */
export const nearMissMember = fc.constantFrom(
  '"__proto":{}',
  '"_proto_":{}',
  '"__PROTO__":{}',
  '"constructor":{}',
  '"constructor":{"x":{"prototype":1}}',
  '"constructor":1',
  '"constructor":"prototype"',
  '"prototype":{}',
  '"proto":{"__proto":1}',
);

/** An object holding `member` among random siblings, wrapped in 0..8 containers: JSON text. */
export const objectWith = (member: fc.Arbitrary<string>): fc.Arbitrary<string> =>
  fc.record({ member, before: siblings, after: siblings, wrap: fc.array(fc.tuple(fc.constantFrom<Shape>('a', 'o'), plainKey), { maxLength: 8 }) }).map(
    ({ member: m, before, after, wrap }) => {
      let text = `{${[before, m, after].filter((x) => x !== '').join(',')}}`;
      for (const [s, key] of wrap) text = s === 'a' ? `[${text}]` : `{${JSON.stringify(key)}:${text}}`;
      return text;
    },
  );

/** A `%` escape the router cannot decode: truncated, not hex, or bytes that are not UTF-8. */
export const badEscape = fc.oneof(
  fc.constantFrom('%', '%%', '%Z', '%G0', '%0', '%0g', '%u0041', '%E2%98', '%C0%AF', '%ED%A0%80', '%FF', '%F4%90%80%80'),
  fc
    .uint8Array({ minLength: 1, maxLength: 6 })
    .map((bytes) => [...bytes].map((b) => `%${b.toString(16).padStart(2, '0').toUpperCase()}`).join(''))
    .filter((s) => {
      try {
        decodeURIComponent(s);
        return false;
      } catch {
        return true;
      }
    }),
);

/** Content types that are not JSON (the essence differs from application/json, whatever the case). */
export const notJsonContentType = fc
  .oneof(
    fc.constantFrom(
      'text/plain',
      'text/json',
      'application/jsonx',
      'application/json-patch+json',
      'application/vnd.api+json',
      'application/x-www-form-urlencoded',
      'multipart/form-data; boundary=x',
      'application/xml',
      'application/octet-stream',
      'json',
      'application/',
      ';;;',
    ),
    fc.tuple(fc.stringMatching(/^[a-z]{1,12}$/), fc.stringMatching(/^[a-z0-9.+-]{1,16}$/), fc.constantFrom('', '; charset=utf-8', '; q=1')).map(([t, s, p]) => `${t}/${s}${p}`),
  )
  .filter((ct) => ct.split(';')[0]?.trim().toLowerCase() !== 'application/json');
