/**
 * The participant kit against a real FileBranchStore (temp dir, fsync) and, for the 3PC
 * inquiries, a real HTTP server standing in for the coordinator's GET /v1/transactions/:id.
 * Timeouts are tens of milliseconds; every wait is a bounded poll.
 */
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import Fastify, { type FastifyInstance } from 'fastify';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { FileBranchStore, type BranchEntry } from '../../src/participant-kit/branch-store.js';
import { classifyInquiry, participantRoutes, type BranchCall, type ParticipantKitOptions, type PrepareVote } from '../../src/participant-kit/participant-routes.js';
import { getFreePort } from '../support/free-port.js';

interface Counts {
  prepare: number;
  commit: number;
  abort: number;
  preCommit: number;
}

interface Kit {
  app: FastifyInstance;
  store: FileBranchStore;
  counts: Counts;
  /** Handler calls in order, e.g. "commit t1/b1". */
  log: string[];
  close(): Promise<void>;
}

let dir: string;
let file: string;
const cleanups: Array<() => Promise<void>> = [];

beforeEach(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'participant-kit-'));
  file = path.join(dir, 'branches.jsonl');
});

afterEach(async () => {
  while (cleanups.length > 0) await cleanups.pop()?.();
  await fs.rm(dir, { recursive: true, force: true });
});

const tick = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function waitFor<T>(what: string, fn: () => Promise<T | undefined | false> | T | undefined | false, timeoutMs = 5_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await tick(10);
  }
}

async function openKit(
  options: ParticipantKitOptions = {},
  vote: (call: BranchCall<unknown>) => PrepareVote = () => ({ vote: 'yes' }),
  handlerDelayMs = 5,
): Promise<Kit> {
  const store = await FileBranchStore.open(file);
  const counts: Counts = { prepare: 0, commit: 0, abort: 0, preCommit: 0 };
  const log: string[] = [];
  const note = async (verb: keyof Counts, call: BranchCall<unknown>): Promise<void> => {
    counts[verb]++;
    log.push(`${verb} ${call.transactionId}/${call.branchId}`);
    await tick(handlerDelayMs); // widen the window for concurrent duplicates
  };
  const app = Fastify({ logger: false });
  await app.register(
    participantRoutes<unknown>({
      retry: { initialMs: 10, maxMs: 40 },
      inquiryTimeoutMs: 500,
      ...options,
      store,
      handlers: {
        async prepare(call) {
          await note('prepare', call);
          return vote(call);
        },
        commit: (call) => note('commit', call),
        abort: (call) => note('abort', call),
        preCommit: (call) => note('preCommit', call),
      },
    }),
  );
  await app.ready();
  let closed = false;
  const close = async (): Promise<void> => {
    if (closed) return;
    closed = true;
    await app.close();
    await store.close();
  };
  cleanups.push(close);
  return { app, store, counts, log, close };
}

interface FakeCoordinator {
  url: string;
  /** transaction ids asked about, in order */
  hits: string[];
  answer: (id: string) => { status: number; body: unknown };
  close(): Promise<void>;
}

async function fakeCoordinator(port = 0): Promise<FakeCoordinator> {
  const app = Fastify({ logger: false });
  const fake: FakeCoordinator = {
    url: '',
    hits: [],
    answer: () => ({ status: 404, body: { error: { code: 'UNKNOWN_TRANSACTION', message: 'no transaction' } } }),
    close: () => app.close(),
  };
  app.get('/v1/transactions/:id', async (request, reply) => {
    const { id } = request.params as { id: string };
    fake.hits.push(id);
    const a = fake.answer(id);
    return reply.status(a.status).send(a.body);
  });
  fake.url = await app.listen({ host: '127.0.0.1', port });
  cleanups.push(() => app.close());
  return fake;
}

const txState = (state: string, decision: 'commit' | 'abort' | null = null) => () => ({
  status: 200,
  body: { id: 'x', protocol: '3pc', state, decision, inDoubt: false, branches: [] },
});

function body(tx: string, branch = 'b1', extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { transactionId: tx, branchId: branch, gid: `g-${tx}-${branch}`, payload: { account: 'a', delta: -1 }, ...extra };
}

async function post(kit: Kit, verb: string, payload: Record<string, unknown>): Promise<{ status: number; json: Record<string, unknown> }> {
  const res = await kit.app.inject({ method: 'POST', url: `/${verb}`, payload });
  return { status: res.statusCode, json: res.json() as Record<string, unknown> };
}

async function statusOf(kit: Kit, tx: string, branch = 'b1'): Promise<BranchEntry['status'] | undefined> {
  return (await kit.store.get(tx, branch))?.status;
}

/** What the file says, read by a fresh store: the durable truth. */
async function durable(tx: string, branch = 'b1'): Promise<BranchEntry | undefined> {
  const s = await FileBranchStore.open(file);
  try {
    return await s.get(tx, branch);
  } finally {
    await s.close();
  }
}

describe('2PC verbs', () => {
  it('prepare and commit are idempotent under duplicate and concurrent calls', async () => {
    const kit = await openKit();
    const votes = await Promise.all(Array.from({ length: 5 }, () => post(kit, 'prepare', body('t1'))));
    for (const v of votes) expect(v).toEqual({ status: 200, json: { vote: 'yes' } });
    expect(kit.counts.prepare).toBe(1);
    expect((await durable('t1'))?.status).toBe('prepared');
    expect((await post(kit, 'prepare', body('t1'))).json).toEqual({ vote: 'yes' });
    expect(kit.counts.prepare).toBe(1);

    const commits = await Promise.all(Array.from({ length: 5 }, () => post(kit, 'commit', body('t1'))));
    for (const c of commits) expect(c).toEqual({ status: 200, json: { status: 'committed' } });
    expect((await post(kit, 'commit', body('t1'))).status).toBe(200);
    expect(kit.counts.commit).toBe(1);
    expect(kit.counts.abort).toBe(0);
    expect((await durable('t1'))?.status).toBe('committed');
    expect(await post(kit, 'abort', body('t1'))).toEqual({ status: 409, json: { error: 'branch already committed', status: 'committed' } });
    expect((await post(kit, 'prepare', body('t1'))).json).toEqual({ vote: 'yes' });
    expect(kit.counts).toEqual({ prepare: 1, commit: 1, abort: 0, preCommit: 0 });
  });

  it('abort is idempotent, runs the handler once, and a later commit is refused', async () => {
    const kit = await openKit();
    await post(kit, 'prepare', body('t2'));
    const aborts = await Promise.all(Array.from({ length: 5 }, () => post(kit, 'abort', body('t2'))));
    for (const a of aborts) expect(a).toEqual({ status: 200, json: { status: 'aborted' } });
    expect(kit.counts.abort).toBe(1);
    expect((await durable('t2'))?.status).toBe('aborted');
    expect(await post(kit, 'commit', body('t2'))).toEqual({ status: 409, json: { error: 'branch is not prepared', status: 'aborted' } });
    expect(kit.counts.commit).toBe(0);
  });

  it('remembers an abort for an unknown branch, so a late prepare votes no without running prepare', async () => {
    const kit = await openKit();
    expect((await post(kit, 'abort', body('t3'))).status).toBe(200);
    expect(kit.counts.abort).toBe(0);
    const late = await post(kit, 'prepare', body('t3'));
    expect(late.status).toBe(200);
    expect(late.json.vote).toBe('no');
    expect(kit.counts.prepare).toBe(0);
    // durable across a restart too
    await kit.close();
    const again = await openKit();
    expect((await post(again, 'can-commit', body('t3'))).json.vote).toBe('no');
    expect(again.counts.prepare).toBe(0);
  });

  it('commit of an unknown branch answers 409; no and read-only votes are stored and repeated', async () => {
    const kit = await openKit({}, (call) =>
      call.transactionId === 'tno' ? { vote: 'no', reason: 'insufficient funds' } : { vote: 'read-only' },
    );
    expect(await post(kit, 'commit', body('nobody'))).toEqual({ status: 409, json: { error: 'branch is not prepared', status: 'unknown' } });
    expect((await post(kit, 'prepare', body('tno'))).json).toEqual({ vote: 'no', reason: 'insufficient funds' });
    expect((await post(kit, 'prepare', body('tno'))).json).toEqual({ vote: 'no', reason: 'insufficient funds' });
    expect((await post(kit, 'abort', body('tno'))).status).toBe(200);
    expect((await post(kit, 'prepare', body('tro'))).json).toEqual({ vote: 'read-only' });
    expect((await post(kit, 'prepare', body('tro'))).json).toEqual({ vote: 'read-only' });
    expect(kit.counts).toEqual({ prepare: 2, commit: 0, abort: 0, preCommit: 0 });
    expect((await durable('tno'))?.status).toBe('aborted');
    expect((await durable('tro'))?.status).toBe('read-only');
  });

  it('rejects a malformed body with 400', async () => {
    const kit = await openKit();
    expect((await post(kit, 'prepare', { branchId: 'b1' })).status).toBe(400);
    expect((await post(kit, 'can-commit', body('t', 'b1', { coordinatorUrl: 'ftp://x' }))).status).toBe(400);
    expect(kit.counts.prepare).toBe(0);
  });
});

describe('3PC verbs', () => {
  it('happy path: can-commit → pre-commit → commit, durable at every step, each handler once', async () => {
    const coord = await fakeCoordinator();
    const kit = await openKit({ uncertainTimeoutMs: 60_000, precommitTimeoutMs: 60_000 });
    const threeBody = body('h1', 'b1', { protocol: '3pc', coordinatorUrl: coord.url, uncertainTimeoutMs: 60_000 });
    const votes = await Promise.all(Array.from({ length: 3 }, () => post(kit, 'can-commit', threeBody)));
    for (const v of votes) expect(v.json).toEqual({ vote: 'yes' });
    const uncertain = await durable('h1');
    expect(uncertain).toMatchObject({ status: 'prepared', protocol: '3pc', coordinatorUrl: coord.url, uncertainTimeoutMs: 60_000 });

    const pres = await Promise.all(Array.from({ length: 4 }, () => post(kit, 'pre-commit', threeBody)));
    for (const p of pres) expect(p).toEqual({ status: 200, json: { status: 'precommitted' } });
    expect((await durable('h1'))?.status).toBe('precommitted');

    const commits = await Promise.all(Array.from({ length: 3 }, () => post(kit, 'commit', threeBody)));
    for (const c of commits) expect(c.status).toBe(200);
    expect((await durable('h1'))).toMatchObject({ status: 'committed', resolvedBy: 'coordinator' });
    // a pre-commit retried after the commit is acknowledged, a can-commit still says yes
    expect(await post(kit, 'pre-commit', threeBody)).toEqual({ status: 200, json: { status: 'committed' } });
    expect((await post(kit, 'can-commit', threeBody)).json).toEqual({ vote: 'yes' });
    expect(kit.counts).toEqual({ prepare: 1, preCommit: 1, commit: 1, abort: 0 });
    expect(coord.hits).toEqual([]);

    const list = await kit.app.inject({ method: 'GET', url: '/branches' });
    expect(list.json()).toEqual({
      branches: [expect.objectContaining({ transactionId: 'h1', branchId: 'b1', status: 'committed', protocol: '3pc' })],
    });
  });

  it('pre-commit of an unknown, aborted or read-only branch answers 409 with its status', async () => {
    const kit = await openKit({}, (call) => (call.transactionId === 'ro' ? { vote: 'read-only' } : { vote: 'yes' }));
    expect(await post(kit, 'pre-commit', body('u1'))).toEqual({ status: 409, json: { error: 'branch is not uncertain', status: 'unknown' } });
    await post(kit, 'abort', body('u2'));
    expect((await post(kit, 'pre-commit', body('u2'))).json.status).toBe('aborted');
    await post(kit, 'can-commit', body('ro'));
    expect(await post(kit, 'pre-commit', body('ro'))).toEqual({ status: 409, json: { error: 'branch is not uncertain', status: 'read-only' } });
    expect(kit.counts.preCommit).toBe(0);
    expect(await statusOf(kit, 'u1')).toBeUndefined();
  });

  it('accepts an abort of a precommitted branch (sent only when recovery requires it)', async () => {
    const kit = await openKit({ uncertainTimeoutMs: 60_000, precommitTimeoutMs: 60_000 });
    await post(kit, 'can-commit', body('pa', 'b1', { protocol: '3pc' }));
    await post(kit, 'pre-commit', body('pa', 'b1', { protocol: '3pc' }));
    expect(await post(kit, 'abort', body('pa'))).toEqual({ status: 200, json: { status: 'aborted' } });
    expect(await post(kit, 'commit', body('pa'))).toMatchObject({ status: 409 });
    expect(kit.counts).toEqual({ prepare: 1, preCommit: 1, commit: 0, abort: 1 });
  });
});

describe('3PC timeouts and the inquiry', () => {
  const canCommit = async (kit: Kit, tx: string, url: string, timeoutMs = 30): Promise<void> => {
    const r = await post(kit, 'can-commit', body(tx, 'b1', { protocol: '3pc', coordinatorUrl: url, uncertainTimeoutMs: timeoutMs }));
    expect(r.json).toEqual({ vote: 'yes' });
  };
  const finalStatus = (kit: Kit, tx: string) =>
    waitFor(`${tx} to resolve`, async () => {
      const s = await statusOf(kit, tx);
      return s === 'committed' || s === 'aborted' ? s : undefined;
    });

  it('uncertain, coordinator says aborted → abort', async () => {
    const coord = await fakeCoordinator();
    coord.answer = txState('aborted', 'abort');
    const kit = await openKit();
    await canCommit(kit, 'x1', coord.url);
    expect(await finalStatus(kit, 'x1')).toBe('aborted');
    expect(coord.hits).toEqual(['x1']);
    expect(kit.counts).toMatchObject({ abort: 1, commit: 0 });
    expect(await durable('x1')).toMatchObject({ status: 'aborted', resolvedBy: 'timeout' });
    // the coordinator's own abort, arriving later, is a no-op
    expect((await post(kit, 'abort', body('x1'))).status).toBe(200);
    expect(kit.counts.abort).toBe(1);
  });

  it('uncertain, coordinator has no record (404 UNKNOWN_TRANSACTION) → presumed abort', async () => {
    const coord = await fakeCoordinator(); // default answer: 404 UNKNOWN_TRANSACTION
    const kit = await openKit();
    await canCommit(kit, 'x2', coord.url);
    expect(await finalStatus(kit, 'x2')).toBe('aborted');
    expect((await durable('x2'))?.reason).toMatch(/no record/);
  });

  it('uncertain, a 404 that is not UNKNOWN_TRANSACTION (wrong URL) is not a presumed abort', async () => {
    const coord = await fakeCoordinator();
    coord.answer = () => ({ status: 404, body: { message: 'Route GET:/v1/transactions/x not found', error: 'Not Found' } });
    const kit = await openKit();
    await canCommit(kit, 'x2b', coord.url);
    await waitFor('three inquiries', () => coord.hits.length >= 3);
    expect(await statusOf(kit, 'x2b')).toBe('prepared');
    coord.answer = txState('committing', 'commit');
    expect(await finalStatus(kit, 'x2b')).toBe('committed');
  });

  it('uncertain, coordinator says committing → commit', async () => {
    const coord = await fakeCoordinator();
    coord.answer = txState('committing', 'commit');
    const kit = await openKit();
    await canCommit(kit, 'x3', coord.url);
    expect(await finalStatus(kit, 'x3')).toBe('committed');
    expect(kit.counts).toMatchObject({ commit: 1, abort: 0 });
    // do-commit from the coordinator afterwards: 200, no second commit
    expect((await post(kit, 'commit', body('x3'))).status).toBe(200);
    expect(kit.counts.commit).toBe(1);
  });

  it('uncertain, coordinator still deciding → stays uncertain and asks again, then commits on precommitted', async () => {
    const coord = await fakeCoordinator();
    coord.answer = txState('deciding', 'commit'); // a commit decision not yet forced is not an answer
    const kit = await openKit();
    await canCommit(kit, 'x4', coord.url);
    // hits count requests as they arrive; the kit counts an attempt once the answer is in
    const inquiry = await waitFor('three answered inquiries', async () => {
      const listed = (await kit.app.inject({ method: 'GET', url: '/branches?status=prepared' })).json() as {
        branches: Array<{ inquiry?: { attempts: number; last?: string } }>;
      };
      const inq = listed.branches[0]?.inquiry;
      return inq !== undefined && inq.attempts >= 3 ? inq : undefined;
    });
    expect(inquiry.last).toMatch(/deciding/);
    expect(await statusOf(kit, 'x4')).toBe('prepared');
    expect(kit.counts.commit + kit.counts.abort).toBe(0);
    coord.answer = txState('precommitted', 'commit');
    expect(await finalStatus(kit, 'x4')).toBe('committed');
  });

  it("unreachable coordinator + policy 'wait' → stays uncertain, then commits once the coordinator answers", async () => {
    const port = await getFreePort();
    const url = `http://127.0.0.1:${port}`;
    const kit = await openKit({ onUnreachableUncertain: 'wait' });
    await canCommit(kit, 'x5', url);
    await waitFor('three failed inquiries', async () => {
      const listed = (await kit.app.inject({ method: 'GET', url: '/branches' })).json() as {
        branches: Array<{ inquiry?: { attempts: number; last?: string } }>;
      };
      const inq = listed.branches[0]?.inquiry;
      return inq !== undefined && inq.attempts >= 3 && /unreachable/.test(inq.last ?? '');
    });
    expect(await statusOf(kit, 'x5')).toBe('prepared');
    expect(kit.counts.commit + kit.counts.abort).toBe(0);
    const coord = await fakeCoordinator(port);
    coord.answer = txState('precommitted', 'commit');
    expect(await finalStatus(kit, 'x5')).toBe('committed');
    expect(coord.hits.length).toBeGreaterThanOrEqual(1);
  });

  it("unreachable coordinator (5xx) + policy 'wait' keeps waiting", async () => {
    const coord = await fakeCoordinator();
    coord.answer = () => ({ status: 503, body: { error: { code: 'SHUTTING_DOWN' } } });
    const kit = await openKit();
    await canCommit(kit, 'x5b', coord.url);
    await waitFor('three inquiries', () => coord.hits.length >= 3);
    expect(await statusOf(kit, 'x5b')).toBe('prepared');
    coord.answer = txState('aborting', 'abort');
    expect(await finalStatus(kit, 'x5b')).toBe('aborted');
  });

  it("unreachable coordinator + policy 'abort' (Skeen's rule) → aborts", async () => {
    const url = `http://127.0.0.1:${await getFreePort()}`;
    const kit = await openKit({ onUnreachableUncertain: 'abort' });
    await canCommit(kit, 'x6', url);
    expect(await finalStatus(kit, 'x6')).toBe('aborted');
    expect((await durable('x6'))?.reason).toMatch(/policy abort/);
    expect(kit.counts).toMatchObject({ abort: 1, commit: 0 });
  });

  it('precommitted, coordinator unreachable → commits; concurrent do-commits do not commit twice', async () => {
    const url = `http://127.0.0.1:${await getFreePort()}`;
    const kit = await openKit({ precommitTimeoutMs: 30, onUnreachableUncertain: 'abort' });
    await canCommit(kit, 'x7', url, 60_000);
    expect((await post(kit, 'pre-commit', body('x7'))).status).toBe(200);
    const racing = Promise.all(Array.from({ length: 5 }, (_, i) => tick(i * 10).then(() => post(kit, 'commit', body('x7')))));
    expect(await finalStatus(kit, 'x7')).toBe('committed');
    for (const r of await racing) expect(r.status).toBe(200);
    expect(kit.counts).toMatchObject({ commit: 1, abort: 0 });
  });

  it('precommitted, timeout: coordinator says aborted → abort; 404 → commit', async () => {
    const coord = await fakeCoordinator();
    coord.answer = (id) => (id === 'x8' ? txState('aborted', 'abort')() : { status: 404, body: { error: { code: 'UNKNOWN_TRANSACTION' } } });
    const kit = await openKit({ precommitTimeoutMs: 20 });
    await canCommit(kit, 'x8', coord.url, 60_000);
    await canCommit(kit, 'x9', coord.url, 60_000);
    await post(kit, 'pre-commit', body('x8'));
    await post(kit, 'pre-commit', body('x9'));
    expect(await finalStatus(kit, 'x8')).toBe('aborted');
    expect(await finalStatus(kit, 'x9')).toBe('committed');
  });

  it('a pre-commit that arrives while uncertain cancels the uncertain timeout', async () => {
    const coord = await fakeCoordinator();
    coord.answer = txState('preparing');
    const kit = await openKit({ precommitTimeoutMs: 60_000 });
    await canCommit(kit, 'x10', coord.url, 20);
    await waitFor('an inquiry', () => coord.hits.length >= 1);
    await post(kit, 'pre-commit', body('x10'));
    const hits = coord.hits.length;
    coord.answer = txState('aborted', 'abort'); // must not be consulted under the uncertain rules any more
    await tick(150);
    expect(coord.hits.length).toBeLessThanOrEqual(hits + 1); // at most one inquiry already in flight
    expect(await statusOf(kit, 'x10')).toBe('precommitted');
  });

  it('app.close() clears the timers: no inquiry after close', async () => {
    const coord = await fakeCoordinator();
    coord.answer = txState('prepared');
    const kit = await openKit();
    await canCommit(kit, 'x11', coord.url, 10);
    await waitFor('an inquiry', () => coord.hits.length >= 1);
    await kit.close();
    const hits = coord.hits.length;
    await tick(150);
    expect(coord.hits.length).toBe(hits);
    expect((await durable('x11'))?.status).toBe('prepared');
  });

  it('a restart over the same file re-arms the timers and completes', async () => {
    const coord = await fakeCoordinator();
    coord.answer = txState('preparing'); // before the restart: nobody may decide
    const first = await openKit({ precommitTimeoutMs: 60_000 });
    await canCommit(first, 'r1', coord.url, 20); // stays uncertain
    await canCommit(first, 'r2', coord.url, 60_000);
    await post(first, 'pre-commit', body('r2')); // precommitted
    await post(first, 'prepare', body('r3')); // 2PC prepared: no timer
    await waitFor('r1 inquired', () => coord.hits.includes('r1'));
    await first.close();
    expect(first.counts.commit + first.counts.abort).toBe(0);
    expect((await durable('r2'))?.status).toBe('precommitted');

    coord.answer = (id) => (id === 'r1' ? txState('committing', 'commit')() : txState('precommitted', 'commit')());
    const second = await openKit({ precommitTimeoutMs: 20 });
    expect(await finalStatus(second, 'r1')).toBe('committed');
    expect(await finalStatus(second, 'r2')).toBe('committed');
    expect(second.counts).toMatchObject({ prepare: 0, commit: 2, abort: 0 });
    await tick(50);
    expect(await statusOf(second, 'r3')).toBe('prepared');
    expect(coord.hits).not.toContain('r3');
    // the coordinator's do-commit after the restart: acknowledged, not applied twice
    expect((await post(second, 'commit', body('r1'))).status).toBe(200);
    expect(second.counts.commit).toBe(2);
  });
});

describe('classifyInquiry', () => {
  it('maps coordinator answers', () => {
    expect(classifyInquiry(404, { error: { code: 'UNKNOWN_TRANSACTION' } }).kind).toBe('no-record');
    expect(classifyInquiry(404, { error: { code: 'NOT_FOUND' } }).kind).toBe('unreachable');
    expect(classifyInquiry(503, null).kind).toBe('unreachable');
    expect(classifyInquiry(200, 'garbage').kind).toBe('unreachable');
    expect(classifyInquiry(200, { state: 'aborting', decision: 'abort' }).kind).toBe('abort');
    expect(classifyInquiry(200, { state: 'deciding', decision: 'abort' }).kind).toBe('abort');
    expect(classifyInquiry(200, { state: 'deciding', decision: 'commit' }).kind).toBe('pending');
    expect(classifyInquiry(200, { state: 'precommitted', decision: 'commit' }).kind).toBe('commit');
    expect(classifyInquiry(200, { state: 'committed', decision: 'commit' }).kind).toBe('commit');
    for (const s of ['active', 'preparing', 'prepared']) expect(classifyInquiry(200, { state: s, decision: null }).kind).toBe('pending');
  });
});

describe('the example ledger on the kit', () => {
  it('a 3PC branch resolved by its timeout after a restart moves the money once', async () => {
    const { buildLedger } = await import('../../src/examples/ledger-service.js');
    const coord = await fakeCoordinator();
    coord.answer = txState('preparing');
    const balancesFile = path.join(dir, 'balances.json');
    const store1 = await FileBranchStore.open(file);
    const l1 = await buildLedger({ balances: { alice: 100 }, store: store1, balancesFile, kit: { coordinatorUrl: coord.url, retry: { initialMs: 10, maxMs: 40 } } });
    const b = { transactionId: 'L1', branchId: 'b1', gid: 'g', payload: { account: 'alice', delta: -30 }, protocol: '3pc', uncertainTimeoutMs: 20 };
    expect((await l1.app.inject({ method: 'POST', url: '/can-commit', payload: b })).json()).toEqual({ vote: 'yes' });
    expect(l1.reserved()).toBe(30);
    await l1.app.close();
    await store1.close();

    coord.answer = txState('committing', 'commit');
    const store2 = await FileBranchStore.open(file);
    const l2 = await buildLedger({ balances: { alice: 100 }, store: store2, balancesFile, kit: { coordinatorUrl: coord.url, retry: { initialMs: 10, maxMs: 40 } } });
    cleanups.push(async () => {
      await l2.app.close();
      await store2.close();
    });
    await waitFor('the ledger commit', async () => (await store2.get('L1', 'b1'))?.status === 'committed');
    expect(l2.balances()).toEqual({ alice: 70 });
    expect(l2.reserved()).toBe(0);
    expect((await l2.app.inject({ method: 'POST', url: '/commit', payload: b })).statusCode).toBe(200);
    expect(l2.balances()).toEqual({ alice: 70 });
    const saved = JSON.parse(await fs.readFile(balancesFile, 'utf8')) as { balances: Record<string, number> };
    expect(saved.balances).toEqual({ alice: 70 });
  });
});
