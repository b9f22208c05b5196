/**
 * The redis participant against real redis-server processes: the suite's shared server
 * (`inject('redisUrl')`, AOF fsync always) and dedicated ones for misconfiguration and
 * SIGKILL. Every test uses its own coordinator id and key prefix.
 */
import { createHash, randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, describe, expect, inject, it } from 'vitest';
import { CoordinatorError } from '../../src/errors.js';
import { makeGid } from '../../src/participants/gid.js';
import { silentLogger } from '../../src/logger.js';
import type { BranchRef } from '../../src/participants/participant.js';
import { loadLuaScript } from '../../src/participants/redis-connection.js';
import { RedisParticipant } from '../../src/participants/redis-participant.js';
import {
  assertOneSlot,
  crc16,
  hashTag,
  keySlot,
  lockKey,
  parseRedisOperations,
  stagedIndexKey,
  stagedRecordKey,
} from '../../src/participants/redis-operations.js';
import { RedisServer } from '../support/redis-server.js';

const redisUrl = inject('redisUrl');
const opened: RedisParticipant[] = [];
const raws: Redis[] = [];

function adapter(url = redisUrl, extra: { allowVolatile?: boolean } = {}): RedisParticipant {
  const a = new RedisParticipant({ name: 'cache', url, connectTimeoutMs: 3_000, commandTimeoutMs: 3_000, logger: silentLogger(), ...extra });
  opened.push(a);
  return a;
}

async function raw(url = redisUrl): Promise<Redis> {
  const r = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 1 });
  r.on('error', () => undefined);
  await r.connect();
  raws.push(r);
  return r;
}

const rnd = (): string => randomBytes(4).toString('hex');

/** A fresh coordinator id and key prefix; `branch(n)` makes refs of transaction `t<n>`. */
function scope(): { coord: string; p: string; branch: (n: number, branchNo?: number) => BranchRef } {
  const coord = `c${rnd()}`;
  return {
    coord,
    p: `t-${rnd()}:`,
    branch: (n, branchNo = 0) => ({ transactionId: `t${n}`, branchId: `b${branchNo}`, gid: makeGid(coord, `t${n}`, branchNo) }),
  };
}

async function expectCode(promise: Promise<unknown>, code: string): Promise<CoordinatorError> {
  const err: unknown = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(CoordinatorError);
  expect((err as CoordinatorError).code).toBe(code);
  return err as CoordinatorError;
}

afterEach(async () => {
  await Promise.all(opened.splice(0).map((a) => a.close()));
  for (const r of raws.splice(0)) r.disconnect();
});

describe('redis operations', () => {
  it('parses every operation and refuses malformed work', () => {
    const ops = parseRedisOperations([
      { op: 'set', key: 'a', value: '1' },
      { op: 'del', key: 'b' },
      { op: 'incrby', key: 'c', by: -3, min: 0 },
      { op: 'expect', key: 'd', value: null },
      { op: 'hset', key: 'e', field: 'f', value: '' },
      { op: 'get', key: 'g' },
    ]);
    expect(ops.map((o) => o.op)).toEqual(['set', 'del', 'incrby', 'expect', 'hset', 'get']);
    const bad: unknown[] = [
      [],
      {},
      Array.from({ length: 101 }, () => ({ op: 'get', key: 'k' })),
      [{ op: 'append', key: 'k' }],
      [{ op: 'set', key: 'k', vlaue: 'x' }],
      [{ op: 'set', key: 'k', value: 1 }],
      [{ op: 'set', key: '', value: 'x' }],
      [{ op: 'set', key: 'k'.repeat(1025), value: 'x' }],
      [{ op: 'set', key: 'k', value: 'x'.repeat(512 * 1024 + 1) }],
      [{ op: 'set', key: 'tcx:lock:{a}:b', value: 'x' }],
      [{ op: 'incrby', key: 'k', by: 1.5 }],
      [{ op: 'incrby', key: 'k', by: 2 ** 53 }],
      [{ op: 'incrby', key: 'k', by: 1, min: 5, max: 1 }],
      [{ op: 'expect', key: 'k' }],
      [{ op: 'set', key: 'k', value: '\ud800' }],
    ];
    for (const work of bad) expect(() => parseRedisOperations(work), JSON.stringify(work).slice(0, 80)).toThrow(CoordinatorError);
  });

  it('computes cluster hash slots and keeps locks and records in their key slot', () => {
    expect(crc16(Buffer.from('123456789'))).toBe(0x31c3);
    expect(keySlot('foo')).toBe(12182);
    expect(keySlot('{user1000}.following')).toBe(keySlot('{user1000}.followers'));
    expect(hashTag('foo{}{bar}')).toBeUndefined();
    expect(hashTag('foo{{bar}}zap')).toBe('{bar');
    expect(hashTag('foo{bar}{zap}')).toBe('bar');
    for (const key of ['plain', '{acct-1}:balance', 'a}b', 'x{}y', 'odd{', 'ünïcode:1', 'foo{{bar}}zap']) {
      expect(keySlot(lockKey(key)), key).toBe(keySlot(key));
      expect(keySlot(stagedRecordKey(key, 'tcx:c:t:0')), key).toBe(keySlot(key));
    }
    expect(lockKey('{acct-1}:balance')).toBe('tcx:lock:{acct-1}:{acct-1}:balance');
    expect(stagedRecordKey('{acct-1}:balance', 'tcx:c:t:0')).toBe('tcx:{acct-1}:staged:tcx:c:t:0');
  });

  it('refuses, for Redis Cluster, a branch whose keys span several slots, naming hash tags', () => {
    expect(() => assertOneSlot(parseRedisOperations([{ op: 'set', key: '{a}:1', value: 'x' }, { op: 'del', key: '{a}:2' }]) as never)).not.toThrow();
    try {
      assertOneSlot(parseRedisOperations([{ op: 'set', key: 'foo', value: 'x' }, { op: 'del', key: 'bar' }]) as never);
      expect.unreachable();
    } catch (err) {
      expect((err as CoordinatorError).code).toBe('VALIDATION_FAILED');
      expect((err as Error).message).toMatch(/hash tag/);
    }
  });

  it('inlines the shared Lua fragment', () => {
    const source = loadLuaScript('prepare.lua');
    expect(source).not.toMatch(/^--- @include/m);
    expect(source).toMatch(/local function simulate/);
  });
});

describe('redis participant', () => {
  it('verify() accepts a server with AOF fsync always, without warnings', async () => {
    const a = adapter();
    await a.verify();
    expect(a.warnings()).toEqual([]);
    expect(a.clusterMode).toBe(false);
  });

  it('verify() reports an unreachable server as PARTICIPANT_UNREACHABLE', async () => {
    const a = adapter('redis://127.0.0.1:1');
    await expectCode(a.verify(), 'PARTICIPANT_UNREACHABLE');
    await expectCode(adapter('http://127.0.0.1:1').verify(), 'VALIDATION_FAILED');
  });

  it('stages set/del/incrby/hset at prepare and applies them at commit', async () => {
    const { coord, p, branch } = scope();
    const r = await raw();
    await r.set(`${p}gone`, 'x');
    await r.set(`${p}n`, '10');
    const a = adapter();
    const b = branch(1);
    const enlisted = await a.enlist(b, [
      { op: 'set', key: `${p}s`, value: 'hello' },
      { op: 'get', key: `${p}n` },
      { op: 'del', key: `${p}gone` },
      { op: 'incrby', key: `${p}n`, by: 5, min: 0, max: 100 },
    ]);
    expect(enlisted.results).toEqual([null, { value: '10' }, null, null]);
    await a.enlist(b, [{ op: 'hset', key: `${p}h`, field: 'f', value: 'v' }, { op: 'incrby', key: `${p}fresh`, by: -2 }]);
    expect(a.openBranches()).toBe(1);

    expect(await a.prepare(b)).toEqual({ vote: 'yes' });
    expect(a.openBranches()).toBe(0);
    expect(await r.get(`${p}s`)).toBeNull(); // nothing applied yet
    expect(await r.get(lockKey(`${p}n`))).toBe(b.gid);
    const stagedKey = stagedRecordKey(`${p}s`, b.gid);
    expect(await r.hget(stagedKey, 'gid')).toBe(b.gid);
    expect(Number(await r.hget(stagedKey, 'created'))).toBeGreaterThan(0);
    expect(await r.hget(stagedIndexKey(coord), b.gid)).toBe(stagedKey);

    await a.commit(b);
    expect(await r.get(`${p}s`)).toBe('hello');
    expect(await r.exists(`${p}gone`)).toBe(0);
    expect(await r.get(`${p}n`)).toBe('15');
    expect(await r.hget(`${p}h`, 'f')).toBe('v');
    expect(await r.get(`${p}fresh`)).toBe('-2');
    for (const key of ['s', 'gone', 'n', 'h', 'fresh']) expect(await r.exists(lockKey(`${p}${key}`))).toBe(0);
    expect(await r.exists(stagedKey)).toBe(0);
    expect(await r.hexists(stagedIndexKey(coord), b.gid)).toBe(0);
  });

  it('votes no when a guard fails, leaving nothing behind', async () => {
    const { coord, p, branch } = scope();
    const r = await raw();
    await r.set(`${p}k`, 'v1');
    await r.set(`${p}n`, '10');
    await r.hset(`${p}h`, 'f', 'v');
    const a = adapter();
    const cases: { work: unknown[]; reason: RegExp }[] = [
      { work: [{ op: 'expect', key: `${p}k`, value: 'other' }, { op: 'set', key: `${p}k`, value: 'v2' }], reason: /expect guard/ },
      { work: [{ op: 'expect', key: `${p}k`, value: null }, { op: 'set', key: `${p}k`, value: 'v2' }], reason: /expect guard/ },
      { work: [{ op: 'expect', key: `${p}h`, value: 'v' }, { op: 'del', key: `${p}k` }], reason: /expect guard/ },
      { work: [{ op: 'incrby', key: `${p}n`, by: -11, min: 0 }], reason: /out of bounds \[0, -inf|out of bounds/ },
      { work: [{ op: 'incrby', key: `${p}n`, by: 1, max: 10 }], reason: /out of bounds/ },
      { work: [{ op: 'incrby', key: `${p}n`, by: -5, min: 0 }, { op: 'incrby', key: `${p}n`, by: -6, min: 0 }], reason: /operation 1/ },
      { work: [{ op: 'incrby', key: `${p}k`, by: 1 }], reason: /cannot apply/ },
      { work: [{ op: 'hset', key: `${p}k`, field: 'f', value: 'x' }], reason: /cannot apply/ },
      { work: [{ op: 'set', key: `${p}x`, value: 'abc' }, { op: 'incrby', key: `${p}x`, by: 1 }], reason: /cannot apply/ },
    ];
    for (const [i, c] of cases.entries()) {
      const b = branch(i);
      await a.enlist(b, c.work);
      const vote = await a.prepare(b);
      expect(vote.vote, JSON.stringify(c.work)).toBe('no');
      expect(vote.reason).toMatch(c.reason);
      expect(await r.exists(stagedRecordKey((c.work[0] as { key: string }).key, b.gid))).toBe(0);
      await a.abort(b);
    }
    expect(await r.hlen(stagedIndexKey(coord))).toBe(0);
    expect(await r.get(`${p}n`)).toBe('10');
    expect(await r.exists(lockKey(`${p}n`), lockKey(`${p}k`))).toBe(0);
    expect(a.openBranches()).toBe(0);
  });

  it('sees the branch’s own earlier operations, across enlists, in its guards', async () => {
    const { p, branch } = scope();
    const r = await raw();
    const a = adapter();
    const b = branch(1);
    await a.enlist(b, [{ op: 'expect', key: `${p}k`, value: null }, { op: 'set', key: `${p}k`, value: '5' }]);
    await a.enlist(b, [
      { op: 'expect', key: `${p}k`, value: '5' },
      { op: 'incrby', key: `${p}k`, by: -5, min: 0 },
      { op: 'expect', key: `${p}k`, value: '0' },
    ]);
    expect(await a.prepare(b)).toEqual({ vote: 'yes' });
    await a.commit(b);
    expect(await r.get(`${p}k`)).toBe('0');
  });

  it('stages any string faithfully through the Lua JSON round trip', async () => {
    const { p, branch } = scope();
    const r = await raw();
    const value = 'nul\u0000 quote" backslash\\ newline\n é 😀 \u2028 /slash';
    const key = `${p}ключ{tag}😀`;
    const a = adapter();
    const b = branch(1);
    await a.enlist(b, [
      { op: 'set', key, value },
      { op: 'expect', key, value },
      { op: 'hset', key: `${p}h`, field: value, value },
      { op: 'set', key: `${p}empty`, value: '' },
      { op: 'expect', key: `${p}empty`, value: '' },
    ]);
    expect(await a.prepare(b)).toEqual({ vote: 'yes' });
    await a.commit(b);
    expect(await r.get(key)).toBe(value);
    expect(await r.hget(`${p}h`, value)).toBe(value);
    expect(await r.get(`${p}empty`)).toBe('');
  });

  it('counts integers exactly up to 2^53-1 and votes no beyond', async () => {
    const { p, branch } = scope();
    const r = await raw();
    await r.set(`${p}n`, String(2 ** 53 - 3));
    const a = adapter();
    const over = branch(1);
    await a.enlist(over, [{ op: 'incrby', key: `${p}n`, by: 3 }]);
    expect((await a.prepare(over)).vote).toBe('no');
    await a.abort(over);
    const ok = branch(2);
    await a.enlist(ok, [{ op: 'incrby', key: `${p}n`, by: 2, max: Number.MAX_SAFE_INTEGER }]);
    expect(await a.prepare(ok)).toEqual({ vote: 'yes' });
    await a.commit(ok);
    expect(await r.get(`${p}n`)).toBe(String(Number.MAX_SAFE_INTEGER));
  });

  it('a key locked by a prepared branch makes other branches vote no until it commits', async () => {
    const { p, branch } = scope();
    const r = await raw();
    const a = adapter();
    const x = branch(1);
    const y = branch(2);
    const y2 = branch(3);
    await a.enlist(x, [{ op: 'set', key: `${p}k`, value: 'x' }]);
    await a.enlist(y, [{ op: 'expect', key: `${p}other`, value: null }, { op: 'incrby', key: `${p}k`, by: 1 }]);
    expect((await a.prepare(x)).vote).toBe('yes');
    const vote = await a.prepare(y);
    expect(vote.vote).toBe('no');
    expect(vote.reason).toContain('locked');
    expect(vote.reason).toContain(x.gid);
    // a read-only branch guarding the locked key also waits for nobody: it votes no
    const reader = branch(4);
    await a.enlist(reader, [{ op: 'expect', key: `${p}k`, value: null }]);
    expect((await a.prepare(reader)).vote).toBe('no');
    await a.abort(y);
    await a.abort(reader);
    // a second branch of the same transaction is another gid: it is refused too
    const sibling = branch(1, 1);
    await a.enlist(sibling, [{ op: 'del', key: `${p}k` }]);
    expect((await a.prepare(sibling)).vote).toBe('no');
    await a.abort(sibling);
    // plain clients are not blocked by coordinator locks
    await r.set(`${p}k`, 'outside');

    await a.commit(x);
    await a.enlist(y2, [{ op: 'expect', key: `${p}k`, value: 'x' }, { op: 'set', key: `${p}k`, value: 'y' }]);
    expect(await a.prepare(y2)).toEqual({ vote: 'yes' });
    await a.commit(y2);
    expect(await r.get(`${p}k`)).toBe('y');
  });

  it('commit and abort are idempotent, also from an adapter that never saw the branch', async () => {
    const { coord, p, branch } = scope();
    const r = await raw();
    const a = adapter();
    const c = branch(1);
    const d = branch(2);
    await a.enlist(c, [{ op: 'incrby', key: `${p}n`, by: 1 }]);
    await a.enlist(d, [{ op: 'set', key: `${p}m`, value: 'x' }]);
    expect((await a.prepare(c)).vote).toBe('yes');
    expect(await a.prepare(c)).toEqual({ vote: 'yes' }); // prepare is idempotent too
    expect((await a.prepare(d)).vote).toBe('yes');

    await a.commit(c);
    await a.commit(c);
    const fresh = adapter();
    await fresh.commit(c);
    expect(await r.get(`${p}n`)).toBe('1');

    await fresh.abort(d); // resolved through the index: the fresh adapter has no memory of d
    await fresh.abort(d);
    await a.abort(d);
    expect(await r.exists(`${p}m`, lockKey(`${p}m`), stagedRecordKey(`${p}m`, d.gid))).toBe(0);
    expect(await r.hlen(stagedIndexKey(coord))).toBe(0);
  });

  it('abort drops an unprepared branch; prepare of an unknown branch votes no', async () => {
    const { p, branch } = scope();
    const a = adapter();
    const b = branch(1);
    await a.enlist(b, [{ op: 'set', key: `${p}k`, value: 'x' }]);
    expect(a.openBranches()).toBe(1);
    await a.abort(b);
    expect(a.openBranches()).toBe(0);
    expect((await a.prepare(b)).vote).toBe('no');
    await expectCode(a.enlist(b, [{ op: 'frobnicate', key: 'k' }]), 'VALIDATION_FAILED');
  });

  it('an abort that overtakes a prepare leaves nothing staged', async () => {
    const { coord, p, branch } = scope();
    const r = await raw();
    const a = adapter();
    await a.verify();
    const b = branch(1);
    await a.enlist(b, [{ op: 'set', key: `${p}k`, value: 'x' }]);
    const vote = a.prepare(b);
    await a.abort(b);
    expect((await vote).vote).toBe('no');
    expect(await r.exists(`${p}k`, lockKey(`${p}k`), stagedRecordKey(`${p}k`, b.gid), stagedIndexKey(coord))).toBe(0);
  });

  it('votes read-only for branches without writes, checking their guards', async () => {
    const { coord, p, branch } = scope();
    const r = await raw();
    await r.set(`${p}k`, 'v');
    const a = adapter();
    const reads = branch(1);
    expect((await a.enlist(reads, [{ op: 'get', key: `${p}k` }, { op: 'get', key: `${p}none` }])).results).toEqual([
      { value: 'v' },
      { value: null },
    ]);
    expect(await a.prepare(reads)).toEqual({ vote: 'read-only' });
    const guarded = branch(2);
    await a.enlist(guarded, [{ op: 'expect', key: `${p}k`, value: 'v' }]);
    expect(await a.prepare(guarded)).toEqual({ vote: 'read-only' });
    const failing = branch(3);
    await a.enlist(failing, [{ op: 'expect', key: `${p}k`, value: 'w' }]);
    expect((await a.prepare(failing)).vote).toBe('no');
    await a.abort(failing);
    expect(a.openBranches()).toBe(0);
    expect(await r.exists(stagedIndexKey(coord), lockKey(`${p}k`))).toBe(0);
  });

  it('a get on a key of another type fails the enlist and leaves the branch as it was', async () => {
    const { p, branch } = scope();
    const r = await raw();
    await r.hset(`${p}h`, 'f', 'v');
    const a = adapter();
    const b = branch(1);
    await a.enlist(b, [{ op: 'set', key: `${p}k`, value: '1' }]);
    await expectCode(a.enlist(b, [{ op: 'set', key: `${p}k2`, value: '2' }, { op: 'get', key: `${p}h` }]), 'OPERATION_FAILED');
    expect(await a.prepare(b)).toEqual({ vote: 'yes' });
    await a.commit(b);
    expect(await r.get(`${p}k`)).toBe('1');
    expect(await r.exists(`${p}k2`)).toBe(0);
  });

  it('reloads its scripts after SCRIPT FLUSH (NOSCRIPT)', async () => {
    const { p, branch } = scope();
    const r = await raw();
    const a = adapter();
    const first = branch(1);
    await a.enlist(first, [{ op: 'set', key: `${p}k`, value: '1' }]);
    expect((await a.prepare(first)).vote).toBe('yes');
    await a.commit(first);
    await r.script('FLUSH');
    const sha = createHash('sha1').update(loadLuaScript('prepare.lua')).digest('hex');
    expect(await r.script('EXISTS', sha)).toEqual([0]);
    const second = branch(2);
    await a.enlist(second, [{ op: 'set', key: `${p}k`, value: '2' }]);
    expect(await a.prepare(second)).toEqual({ vote: 'yes' });
    expect(await r.script('EXISTS', sha)).toEqual([1]); // reloaded after NOSCRIPT
    await r.script('FLUSH');
    await a.commit(second);
    expect(await r.get(`${p}k`)).toBe('2');
  });

  it('findPrepared lists the staged gids of this coordinator only', async () => {
    const { coord, p, branch } = scope();
    const other = scope();
    const a = adapter();
    const staged = [branch(1), branch(2, 3)];
    const open = branch(3);
    const committed = branch(4);
    const refused = branch(5);
    const foreign = other.branch(1);
    for (const b of [...staged, committed]) {
      await a.enlist(b, [{ op: 'set', key: `${p}${b.transactionId}:${b.branchId}`, value: 'x' }]);
      expect((await a.prepare(b)).vote).toBe('yes');
    }
    await a.commit(committed);
    await a.enlist(open, [{ op: 'set', key: `${p}open`, value: 'x' }]);
    await a.enlist(refused, [{ op: 'expect', key: `${p}nope`, value: 'x' }, { op: 'set', key: `${p}nope`, value: 'y' }]);
    expect((await a.prepare(refused)).vote).toBe('no');
    await a.enlist(foreign, [{ op: 'set', key: `${other.p}k`, value: 'x' }]);
    expect((await a.prepare(foreign)).vote).toBe('yes');

    expect((await a.findPrepared(`tcx:${coord}:`)).sort()).toEqual(staged.map((b) => b.gid).sort());
    expect(await a.findPrepared(`tcx:${coord}:t1:`)).toEqual([staged[0]?.gid]);
    await expectCode(a.findPrepared('tcx:'), 'VALIDATION_FAILED');
    for (const b of [...staged, open, refused, foreign]) await a.abort(b);
    expect(await a.findPrepared(`tcx:${coord}:`)).toEqual([]);
  });
});

describe('redis participant on dedicated servers', () => {
  let volatile: RedisServer;
  let durable: RedisServer;

  beforeAll(async () => {
    [volatile, durable] = await Promise.all([
      RedisServer.start({ appendonly: false, name: 'redis-volatile' }),
      RedisServer.start({ name: 'redis-crash' }),
    ]);
  });

  afterAll(async () => {
    await Promise.allSettled([volatile?.destroy(), durable?.destroy()]);
  });

  it('verify() refuses a server without AOF unless allowVolatile, which records a warning', async () => {
    const err = await expectCode(adapter(volatile.url).verify(), 'PARTICIPANT_MISCONFIGURED');
    expect(err.message).toMatch(/appendonly no/);
    expect(err.message).toMatch(/lost on a Redis restart/);
    expect(err.message).toMatch(/allowVolatile/);
    const tolerant = adapter(volatile.url, { allowVolatile: true });
    await tolerant.verify();
    expect(tolerant.warnings()).toHaveLength(1);
    expect(tolerant.warnings()[0]).toMatch(/lost on a Redis restart/);
  });

  it('verify() refuses when CONFIG is not allowed (managed Redis), unless allowVolatile', async () => {
    const r = await raw(durable.url);
    await r.call('ACL', 'SETUSER', 'noconfig', 'on', '>secret', '~*', '&*', '+@all', '-config');
    const url = `redis://noconfig:secret@${durable.host}:${durable.port}`;
    const err = await expectCode(adapter(url).verify(), 'PARTICIPANT_MISCONFIGURED');
    expect(err.message).toMatch(/could not verify/);
    const tolerant = adapter(url, { allowVolatile: true });
    await tolerant.verify();
    expect(tolerant.warnings()[0]).toMatch(/could not verify/);
  });

  it('a staged branch, its locks and index entry survive SIGKILL; commit and abort then resolve them', async () => {
    const { coord, p, branch } = scope();
    const before = adapter(durable.url);
    await before.verify();
    const toCommit = branch(1);
    const toAbort = branch(2);
    await before.enlist(toCommit, [
      { op: 'set', key: `${p}s`, value: 'v' },
      { op: 'incrby', key: `${p}n`, by: 7 },
      { op: 'hset', key: `${p}h`, field: 'f', value: 'g' },
    ]);
    await before.enlist(toAbort, [{ op: 'set', key: `${p}a`, value: 'never' }]);
    expect((await before.prepare(toCommit)).vote).toBe('yes');
    expect((await before.prepare(toAbort)).vote).toBe('yes');

    await durable.kill();
    await durable.restart();

    const r = await raw(durable.url);
    expect(await r.get(lockKey(`${p}n`))).toBe(toCommit.gid);
    expect(await r.exists(stagedRecordKey(`${p}s`, toCommit.gid))).toBe(1);
    const after = adapter(durable.url); // a restarted coordinator: nothing in memory
    expect((await after.findPrepared(`tcx:${coord}:`)).sort()).toEqual([toCommit.gid, toAbort.gid].sort());
    await after.commit(toCommit);
    expect(await r.get(`${p}s`)).toBe('v');
    expect(await r.get(`${p}n`)).toBe('7');
    expect(await r.hget(`${p}h`, 'f')).toBe('g');
    // the adapter that lived through the crash reconnects and aborts the other one
    await before.abort(toAbort);
    expect(await r.exists(`${p}a`, lockKey(`${p}a`), lockKey(`${p}s`), lockKey(`${p}n`), lockKey(`${p}h`))).toBe(0);
    expect(await after.findPrepared(`tcx:${coord}:`)).toEqual([]);
  });
});
