/**
 * GET /v1/transactions pages through running and finished transactions (within retention,
 * sealed buckets included, across a restart), newest first, with filters; following the
 * cursors neither repeats nor skips a transaction while others begin and end meanwhile.
 */
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { createAccounts, eventually, freshDatabase } from '../support/databases.js';
import { startCoordinator, type InProcessCoordinator } from '../support/in-process-coordinator.js';

interface Listed {
  id: string;
  state: string;
  createdAt: string;
  branches: { participant: string }[];
}

let c: InProcessCoordinator;
let db: string;
const committed: string[] = [];
const aborted: string[] = [];
const active: string[] = [];
/** Begun without branches. */
const branchless: string[] = [];

async function api(method: 'GET' | 'POST', url: string, payload?: unknown) {
  const res = await c.app.inject({ method, url, ...(payload === undefined ? {} : { payload: payload as object }) });
  return { status: res.statusCode, text: res.body, body: res.json() };
}

const touch = { sql: 'UPDATE accounts SET balance = balance + 0 WHERE id = $1', params: ['alice'] };
const failing = { sql: 'UPDATE accounts SET balance = balance - 1000 WHERE id = $1', params: ['alice'] };

/** Every transaction the listing shows, page after page of `limit`, with `query`. */
async function everyPage(query: string, limit: number, between?: () => Promise<void>): Promise<Listed[]> {
  const all: Listed[] = [];
  let cursor: string | null = null;
  for (let pages = 0; pages < 1000; pages++) {
    const res = await api('GET', `/v1/transactions?limit=${limit}${query}${cursor === null ? '' : `&cursor=${cursor}`}`);
    expect(res.status, res.text).toBe(200);
    expect(res.body.transactions.length).toBeLessThanOrEqual(limit);
    all.push(...(res.body.transactions as Listed[]));
    cursor = res.body.nextCursor;
    if (cursor === null) return all;
    await between?.();
  }
  throw new Error('the listing did not end');
}

function expectNewestFirst(list: Listed[]): void {
  for (let i = 1; i < list.length; i++) {
    const [a, b] = [list[i - 1]!, list[i]!];
    expect(a.createdAt > b.createdAt || (a.createdAt === b.createdAt && a.id > b.id), `${a.id} before ${b.id}`).toBe(true);
  }
}

beforeAll(async () => {
  db = await freshDatabase(inject('pgUrlA'));
  await createAccounts(db, { alice: 100 });
  // Tiny segments: compaction runs often, so finished transactions land in sealed buckets.
  c = await startCoordinator({ TCX_SEGMENT_MAX_BYTES: '4096' });
  expect((await api('POST', '/v1/participants', { name: 'bank', kind: 'postgres', connectionString: db })).status).toBe(201);
  for (let i = 0; i < 40; i++) {
    const ok = await api('POST', '/v1/transactions', { branches: [{ participant: 'bank', operations: [touch] }], commit: true });
    expect(ok.body.state).toBe('committed');
    committed.push(ok.body.id);
    if (i % 4 === 0) {
      const no = await api('POST', '/v1/transactions', { branches: [{ participant: 'bank', operations: [failing] }], commit: true });
      expect(no.body.state).toBe('aborted');
      aborted.push(no.body.id);
    }
    if (i % 8 === 0) active.push((await api('POST', '/v1/transactions', { timeoutMs: 600_000 })).body.id);
    branchless.push(...active.slice(-1));
  }
  await eventually(async () => c.coordinator.health().log.compactions > 0);
});

afterAll(async () => c?.destroy());

describe('GET /v1/transactions', () => {
  it('pages through running and finished transactions newest first, each once', async () => {
    const all = await everyPage('', 7);
    expect(all.map((t) => t.id).sort()).toEqual([...committed, ...aborted, ...active].sort());
    expectNewestFirst(all);
    const first = await api('GET', '/v1/transactions');
    expect(first.body.transactions.length).toBe(all.length); // 65 fit in a default page of 100
    expect(first.body.nextCursor).toBeNull();
  });

  it('neither repeats nor skips while transactions begin and end between pages', async () => {
    const before = new Set([...committed, ...aborted, ...active]);
    const ending = active.pop()!;
    let step = 0;
    const listed = await everyPage('', 5, async () => {
      step++;
      if (step === 2) {
        // One begins (newer than every cursor: not on these pages) and one ends.
        active.push((await api('POST', '/v1/transactions', { timeoutMs: 600_000 })).body.id);
        branchless.push(active.at(-1)!);
        expect((await api('POST', `/v1/transactions/${ending}/abort`)).body.state).toBe('aborted');
        aborted.push(ending);
      }
    });
    const ids = listed.map((t) => t.id);
    expect(new Set(ids).size).toBe(ids.length);
    expect(ids.sort()).toEqual([...before].sort());
    expect(listed.find((t) => t.id === ending)).toBeDefined();
  });

  it('filters by state, participant and creation time', async () => {
    const ids = async (query: string) => (await everyPage(query, 9)).map((t) => t.id).sort();
    expect(await ids('&state=committed')).toEqual([...committed].sort());
    expect(await ids('&state=aborted')).toEqual([...aborted].sort());
    expect(await ids('&state=active')).toEqual([...active].sort());
    expect(await ids('&participant=bank')).toEqual([...committed, ...aborted].filter((id) => !branchless.includes(id)).sort());
    expect(await ids('&participant=nobody')).toEqual([]);
    const all = await everyPage('', 100);
    const middle = all[Math.floor(all.length / 2)]!;
    const since = await everyPage(`&since=${encodeURIComponent(middle.createdAt)}`, 10);
    expect(since.length).toBeGreaterThan(0);
    expect(since.every((t) => t.createdAt >= middle.createdAt)).toBe(true);
    expect(since.length).toBe(all.filter((t) => t.createdAt >= middle.createdAt).length);
  });

  it('keeps listing finished transactions after a restart', async () => {
    await c.stop();
    c = await startCoordinator({ TCX_SEGMENT_MAX_BYTES: '4096' }, c.dataDir);
    const all = await everyPage('', 11);
    // Active ones were aborted by the restart (presumed abort): they are gone or aborted now.
    const finished = [...committed, ...aborted];
    expect(all.map((t) => t.id).filter((id) => finished.includes(id)).sort()).toEqual(finished.sort());
    expectNewestFirst(all);
  });

  it('refuses a cursor it did not hand out, a page over 1000 and a bad time', async () => {
    for (const query of ['cursor=bm9wZQ', 'cursor=OmFiYw', 'cursor=MTIzOg', 'limit=1001', 'limit=0', 'since=yesterday', 'since=2026-13-45T00:00:00Z', 'state=bogus']) {
      const res = await api('GET', `/v1/transactions?${query}`);
      expect(res.status, query).toBe(400);
      expect(res.body.error.code).toBe('VALIDATION_FAILED');
    }
  });
});
