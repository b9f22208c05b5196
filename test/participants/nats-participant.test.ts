/**
 * The nats participant on real nats-servers started for this file, asserting on what the
 * streams really hold: publish on commit (subjects, data, headers, order) and nothing before
 * it or on abort; exactly once across re-delivered commits, a new adapter instance and a
 * server crash (JetStream's duplicate window), and at least once past the window; prepare's
 * check; validation; verify against a server without JetStream, wrong credentials and no
 * server at all; and a commit while the server is down.
 */
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/logger.js';
import { makeGid } from '../../src/participants/gid.js';
import { MAX_BRANCH_BYTES } from '../../src/participants/nats-messages.js';
import { NatsParticipant, type NatsParticipantOptions } from '../../src/participants/nats-participant.js';
import type { BranchRef } from '../../src/participants/participant.js';
import { getFreePort } from '../support/free-port.js';
import { DiscardPolicy } from 'nats';
import { NatsServer, createStream, purgeStream, readStream } from '../support/nats-server.js';

const rnd = (): string => randomBytes(4).toString('hex');
const coordinatorId = `nt${rnd()}`;
let n = 0;
const branch = (messages: unknown): BranchRef => {
  const transactionId = `t${rnd()}${n++}`;
  return { transactionId, branchId: 'b1', gid: makeGid(coordinatorId, transactionId, 1), protocol: '2pc', payload: messages };
};

const adapters: NatsParticipant[] = [];
const make = (url: string, extra: Partial<NatsParticipantOptions> = {}): NatsParticipant => {
  const a = new NatsParticipant({ name: 'bus', url, connectTimeoutMs: 2_000, requestTimeoutMs: 1_000, logger: silentLogger(), ...extra });
  adapters.push(a);
  return a;
};

/** Runs a branch as the coordinator would: enlist, prepare (yes), commit. */
async function commitBranch(adapter: NatsParticipant, ref: BranchRef): Promise<void> {
  await adapter.enlist(ref, ref.payload);
  expect(await adapter.prepare(ref)).toEqual({ vote: 'yes' });
  await adapter.commit(ref);
}

let server: NatsServer;
let adapter: NatsParticipant;
const STREAM = 'ORDERS';

beforeAll(async () => {
  server = await NatsServer.start({ name: 'nats-participant' });
  await createStream(server.url, { name: STREAM, subjects: ['orders.>'] });
  adapter = make(server.url);
  await adapter.verify();
});

afterAll(async () => {
  for (const a of adapters) await a.close();
  await server?.destroy();
});

describe('publish on commit', () => {
  it('publishes nothing before commit, then every message in order with its subject, data and headers', async () => {
    const p = `orders.a${rnd()}`;
    const ref = branch([
      { subject: `${p}.created`, data: { id: 1, total: 9.5 } },
      { subject: `${p}.note`, data: 'plain text, not JSON-quoted', headers: { 'Content-Type': 'text/plain', 'X-Trace': 'abc 123' } },
      { subject: `${p}.created`, data: [1, 'two', null] },
      { subject: `${p}.empty`, data: null },
    ]);
    await adapter.enlist(ref, ref.payload);
    expect(await adapter.prepare(ref)).toEqual({ vote: 'yes' });
    expect(await adapter.findPrepared(`tcx:${coordinatorId}:`)).toEqual([]);
    expect(adapter.openBranches()).toBe(0);
    const mine = async (): Promise<Awaited<ReturnType<typeof readStream>>> => (await readStream(server.url, STREAM)).filter((m) => m.subject.startsWith(`${p}.`));
    expect(await mine()).toEqual([]);

    await adapter.commit(ref);
    const stored = await mine();
    expect(stored.map((m) => [m.subject, m.text])).toEqual([
      [`${p}.created`, '{"id":1,"total":9.5}'],
      [`${p}.note`, 'plain text, not JSON-quoted'],
      [`${p}.created`, '[1,"two",null]'],
      [`${p}.empty`, 'null'],
    ]);
    expect(stored.map((m) => m.headers['Nats-Msg-Id'])).toEqual([0, 1, 2, 3].map((i) => `${ref.gid}:${i}`));
    expect(stored[1]?.headers).toMatchObject({ 'Content-Type': 'text/plain', 'X-Trace': 'abc 123' });
    expect(stored.every((m, i) => i === 0 || m.seq > (stored[i - 1]?.seq ?? 0))).toBe(true);
  });

  it('publishes nothing on abort, before or after prepare, and abort succeeds again', async () => {
    const subject = `orders.b${rnd()}`;
    const early = branch([{ subject, data: 1 }]);
    await adapter.enlist(early, early.payload);
    await adapter.abort(early);
    const late = branch([{ subject, data: 2 }]);
    await adapter.enlist(late, late.payload);
    expect((await adapter.prepare(late)).vote).toBe('yes');
    await adapter.abort(late);
    await adapter.abort(late);
    expect(await readStream(server.url, STREAM, subject)).toEqual([]);
  });
});

describe('exactly once within the duplicate window', () => {
  it('a commit delivered twice, and again by a new adapter after a coordinator "crash", stores each message once', async () => {
    const subject = `orders.c${rnd()}`;
    const ref = branch([{ subject, data: { n: 1 } }, { subject, data: { n: 2 } }]);
    await commitBranch(adapter, ref);
    await adapter.commit(ref);
    const reborn = make(server.url);
    await reborn.commit({ ...ref });
    await reborn.close();
    expect((await readStream(server.url, STREAM, subject)).map((m) => m.text)).toEqual(['{"n":1}', '{"n":2}']);
  });

  it('the window survives a SIGKILL of the server: a re-delivered commit after the restart publishes nothing more', async () => {
    const subject = `orders.d${rnd()}`;
    const ref = branch([{ subject, data: 'once' }]);
    await commitBranch(adapter, ref);
    await server.kill();
    await server.restart();
    await expect.poll(() => adapter.commit(ref).then(() => true, () => false), { timeout: 15_000, interval: 100 }).toBe(true);
    expect((await readStream(server.url, STREAM, subject)).map((m) => m.text)).toEqual(['once']);
  }, 30_000);

  it('past a short duplicate window a re-delivered commit publishes again (at least once), and prepare warns about the window', async () => {
    const stream = `SHORT${rnd()}`;
    const subject = `short${rnd()}.x`;
    await createStream(server.url, { name: stream, subjects: [subject], duplicateWindowMs: 500 });
    const ref = branch([{ subject, data: 'again' }]);
    await commitBranch(adapter, ref);
    expect(adapter.warnings().join('\n')).toMatch(new RegExp(`stream ${stream} has a duplicate window of 500 ms`));
    await adapter.commit(ref); // within the window: dropped
    expect(await readStream(server.url, stream, subject)).toHaveLength(1);
    await new Promise((r) => setTimeout(r, 1_200));
    await adapter.commit(ref); // past it: stored again
    expect((await readStream(server.url, stream, subject)).map((m) => m.headers['Nats-Msg-Id'])).toEqual([`${ref.gid}:0`, `${ref.gid}:0`]);
  });
});

describe("prepare's check", () => {
  it('votes no naming the subject no stream takes (also when asked at enlist), and yes once a stream takes it', async () => {
    const orphan = `nowhere${rnd()}.x`;
    const ref = branch([{ subject: 'orders.fine', data: 1 }, { subject: orphan, data: 2 }]);
    const early = await adapter.enlist(ref, ref.payload, undefined, { prepareAfter: true });
    expect(early.vote?.vote).toBe('no');
    expect(early.vote?.reason).toContain(orphan);
    const vote = await adapter.prepare(ref);
    expect(vote.vote).toBe('no');
    expect(vote.reason).toMatch(new RegExp(`no JetStream stream takes subject ${orphan.replace('.', '\\.')}`));
    expect(vote.reason).not.toContain('orders.fine');
    await createStream(server.url, { name: `LATE${rnd()}`, subjects: [orphan] });
    expect(await adapter.prepare(ref)).toEqual({ vote: 'yes' });
    expect(await adapter.enlist(ref, ref.payload, undefined, { prepareAfter: true })).toEqual({ vote: { vote: 'yes' } });
  });

  it('warns about a stream that keeps its messages in memory', async () => {
    const stream = `MEM${rnd()}`;
    const subject = `mem${rnd()}.x`;
    await createStream(server.url, { name: stream, subjects: [subject], storage: 'memory' });
    expect((await adapter.prepare(branch([{ subject, data: 1 }]))).vote).toBe('yes');
    expect(adapter.warnings().join('\n')).toMatch(new RegExp(`stream ${stream} keeps its messages in memory`));
  });

  it('votes no (never throws) for messages the log could not have held', async () => {
    expect((await adapter.prepare(branch(undefined))).vote).toBe('no');
    await expect(adapter.commit(branch(undefined))).rejects.toMatchObject({ code: 'INTERNAL' });
  });
});

describe('validation', () => {
  const refuses = (work: unknown, why: RegExp): void => {
    let caught: unknown;
    try {
      adapter.validateWork(work);
    } catch (err) {
      caught = err;
    }
    expect(caught).toMatchObject({ code: 'VALIDATION_FAILED' });
    expect((caught as Error).message).toMatch(why);
  };

  it('takes well-formed messages', () => {
    expect(() => adapter.validateWork([{ subject: 'orders.x-1.é', data: { a: 1 }, headers: { 'X-A': 'b' } }, { subject: 'a', data: 0 }])).not.toThrow();
  });

  it('refuses what is not a list of 1..100 messages', () => {
    refuses([], /at least one message/);
    refuses({ subject: 'a', data: 1 }, /must be an array/);
    refuses(Array.from({ length: 101 }, () => ({ subject: 'a', data: 1 })), /at most 100/);
    refuses([{ subject: 'a', data: 1 }, 'x'], /messages\[1\] must be an object/);
    refuses([{ subject: 'a' }], /messages\[0\]\.data is required/);
    refuses([{ subject: 'a', data: 1, reply: 'b' }], /unknown field "reply"/);
  });

  it('refuses subjects that are not a publish subject', () => {
    refuses([{ subject: 'orders.*', data: 1 }], /wildcard/);
    refuses([{ subject: 'orders.>', data: 1 }], /wildcard/);
    refuses([{ subject: 'orders. x', data: 1 }], /whitespace/);
    refuses([{ subject: 'orders..x', data: 1 }], /empty token/);
    refuses([{ subject: '.orders', data: 1 }], /empty token/);
    refuses([{ subject: '', data: 1 }], /is empty/);
    refuses([{ subject: 'a'.repeat(256), data: 1 }], /longer than 255 bytes/);
    refuses([{ subject: '$JS.API.STREAM.DELETE.ORDERS', data: 1 }], /system subject/);
    refuses([{ subject: 7, data: 1 }], /subject must be a string/);
  });

  it('refuses headers JetStream interprets, and malformed ones', () => {
    refuses([{ subject: 'a', data: 1, headers: { 'Nats-Msg-Id': 'mine' } }], /Nats-/);
    refuses([{ subject: 'a', data: 1, headers: { 'nats-expected-stream': 'ORDERS' } }], /Nats-/);
    refuses([{ subject: 'a', data: 1, headers: { 'Nats-Rollup': 'sub' } }], /Nats-/);
    refuses([{ subject: 'a', data: 1, headers: { 'Bad Name': 'x' } }], /header name/);
    refuses([{ subject: 'a', data: 1, headers: { 'X-A': 'line\r\nInjected: yes' } }], /line break/);
    refuses([{ subject: 'a', data: 1, headers: { 'X-A': 1 } }], /must be a string/);
    refuses([{ subject: 'a', data: 1, headers: { 'X-A': ' padded' } }], /whitespace/);
    refuses([{ subject: 'a', data: 1, headers: { 'X-A': 'a', 'x-a': 'b' } }], /given twice/);
    refuses([{ subject: 'a', data: 1, headers: ['X-A'] }], /headers must be an object/);
  });

  it('refuses a message larger than max_payload and a branch larger than 1 MiB', () => {
    refuses([{ subject: 'a', data: 'x'.repeat(1024 * 1024) }], /max_payload 1048576/);
    const half = 'x'.repeat(600 * 1024);
    refuses([{ subject: 'a', data: half }, { subject: 'a', data: half }], new RegExp(`larger than ${MAX_BRANCH_BYTES} bytes together`));
  });

  it("checks against the server's own max_payload once connected, and prepare votes no for a message it would refuse", async () => {
    const small = await NatsServer.start({ name: 'nats-small', maxPayload: 4096 });
    try {
      await createStream(small.url, { name: 'SMALL', subjects: ['small.>'] });
      const a = make(small.url);
      await a.verify();
      expect(() => adapter.validateWork([{ subject: 'small.x', data: 'x'.repeat(4000) }])).not.toThrow(); // its server takes 1 MiB
      expect(() => a.validateWork([{ subject: 'small.x', data: 'x'.repeat(4000) }])).toThrow(/max_payload 4096/);
      const vote = await a.prepare(branch([{ subject: 'small.x', data: 'x'.repeat(4000) }]));
      expect(vote).toMatchObject({ vote: 'no', reason: expect.stringMatching(/max_payload is 4096/) });
    } finally {
      await small.destroy();
    }
  });
});

describe('verify', () => {
  it('refuses a server without JetStream with a clear message', async () => {
    const plain = await NatsServer.start({ name: 'nats-nojs', jetstream: false });
    try {
      await expect(make(plain.url).verify()).rejects.toMatchObject({ code: 'PARTICIPANT_MISCONFIGURED', message: expect.stringMatching(/JetStream is not enabled/) });
    } finally {
      await plain.destroy();
    }
  });

  it('refuses wrong credentials (user and password, token) as PARTICIPANT_AUTH_FAILED and takes the right ones', async () => {
    const secured = await NatsServer.start({ name: 'nats-auth', user: 'tcx', password: 's3cret' });
    const tokened = await NatsServer.start({ name: 'nats-token', token: 't0ken' });
    try {
      await make(secured.url).verify();
      await expect(make(`nats://tcx:wrong@127.0.0.1:${secured.port}`).verify()).rejects.toMatchObject({ code: 'PARTICIPANT_AUTH_FAILED' });
      await expect(make(secured.address).verify()).rejects.toMatchObject({ code: 'PARTICIPANT_AUTH_FAILED' });
      await make(tokened.url).verify();
      await expect(make(`nats://nope@127.0.0.1:${tokened.port}`).verify()).rejects.toMatchObject({ code: 'PARTICIPANT_AUTH_FAILED' });
    } finally {
      await secured.destroy();
      await tokened.destroy();
    }
  });

  it('answers PARTICIPANT_UNREACHABLE, within the connect timeout, when nothing listens', async () => {
    const started = Date.now();
    await expect(make(`nats://127.0.0.1:${await getFreePort()}`, { connectTimeoutMs: 500 }).verify()).rejects.toMatchObject({ code: 'PARTICIPANT_UNREACHABLE' });
    expect(Date.now() - started).toBeLessThan(3_000);
  });

  it('refuses a URL that is not nats://', async () => {
    await expect(make('http://127.0.0.1:4222').verify()).rejects.toMatchObject({ code: 'VALIDATION_FAILED' });
  });
});

describe('the server down at commit', () => {
  it('commit throws within its bound while the server is down, then succeeds once it is back, still exactly once', async () => {
    const subject = `orders.e${rnd()}`;
    const ref = branch([{ subject, data: 1 }, { subject, data: 2 }]);
    await adapter.enlist(ref, ref.payload);
    expect(await adapter.prepare(ref)).toEqual({ vote: 'yes' });
    await server.kill();
    try {
      const started = Date.now();
      await expect(adapter.commit(ref)).rejects.toMatchObject({ code: 'PARTICIPANT_UNREACHABLE' });
      expect(Date.now() - started).toBeLessThan(3_000);
      expect((await adapter.prepare(ref)).vote).toBe('no');
    } finally {
      await server.restart();
    }
    await expect.poll(() => adapter.commit(ref).then(() => true, () => false), { timeout: 15_000, interval: 100 }).toBe(true);
    await adapter.commit(ref);
    expect((await readStream(server.url, STREAM, subject)).map((m) => m.text)).toEqual(['1', '2']);
  }, 30_000);

  it('a stream refusing a message half way: commit throws naming it, the first stays stored once, the retry stores the rest', async () => {
    const stream = `FULL${rnd()}`;
    const subject = `full${rnd()}.x`;
    await createStream(server.url, { name: stream, subjects: [subject], config: { max_msgs: 1, discard: DiscardPolicy.New } });
    const ref = branch([{ subject, data: 'first' }, { subject, data: 'second' }]);
    await adapter.enlist(ref, ref.payload);
    expect(await adapter.prepare(ref)).toEqual({ vote: 'yes' });
    await expect(adapter.commit(ref)).rejects.toMatchObject({ code: 'OPERATION_FAILED', message: expect.stringMatching(/message 1 .*the stream refused it: maximum messages exceeded/) });
    expect((await readStream(server.url, stream)).map((m) => m.text)).toEqual(['first']);
    await purgeStream(server.url, stream); // an operator makes room (the duplicate window still knows "first")
    await adapter.commit(ref);
    expect((await readStream(server.url, stream)).map((m) => m.text)).toEqual(['second']);
  });

  it('refuses calls after close', async () => {
    const a = make(server.url);
    await a.verify();
    await a.close();
    await expect(a.commit(branch([{ subject: 'orders.z', data: 1 }]))).rejects.toMatchObject({ code: 'SHUTTING_DOWN' });
  });
});
