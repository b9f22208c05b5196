/**
 * One conformance suite for every participant kind, through the ParticipantAdapter interface
 * alone, on real stores started for it (so that it can crash them). What recovery and
 * re-delivery after a crash rely on: prepare / commit / abort are idempotent, an abort of a
 * branch the store never saw succeeds and changes nothing (and a commit of one no longer
 * listed, where recovery relies on listing), an aborted branch leaves nothing behind, and a
 * store that lists its prepared branches lists exactly those under a coordinator's gid
 * prefix — also after the store crashed and came back. A kind whose work is kept in the
 * coordinator's log (`work` other than `operations`: handed back with every call) holds nothing
 * prepared on the store, so it lists nothing even where it declares that recovery needs no
 * forced record first (`listsPreparedBranches`).
 *
 * A store that stops answering (a black-holed fault proxy in front of it) makes every call end
 * within the adapter's timeouts — a no vote, or an error the coordinator retries — and the
 * branches are resolved once it answers again.
 *
 * A kind's test file calls `describeConformance(name, make)` with a `ConformanceKind` of its own.
 */
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { gidPrefix, makeGid } from '../../src/participants/gid.js';
import type { BranchRef, ParticipantAdapter } from '../../src/participants/participant.js';
import { eventually } from './databases.js';
import { FaultProxy } from './fault-proxy.js';

/** A kind under test: its adapter, work that adds `delta` to one of its two values (`slot`), and that value read from the store itself. */
export interface ConformanceKind {
  readonly name: string;
  adapter(): ParticipantAdapter;
  work(delta: number, slot?: 0 | 1): unknown;
  value(slot?: 0 | 1): Promise<number>;
  /** Crashes the store (SIGKILL, or the service closed) and starts it again on the same address and data. */
  restart(): Promise<void>;
  /** Where the store listens (TCP), for a fault proxy in front of it. */
  readonly address: { readonly host: string; readonly port: number };
  /** Another adapter of this kind for the same store reached at host:port, with timeouts of a second or two. */
  adapterAt(host: string, port: number): ParticipantAdapter;
  close(): Promise<void>;
}

/** The same URL at another host and port (an adapter reaching the store through a proxy). */
export function rehost(raw: string, host: string, port: number): string {
  const url = new URL(raw);
  url.hostname = host;
  url.port = String(port);
  return url.toString();
}

/** Longer than any adapter's timeouts in the suite: a call still running by then hangs. */
const HANG_MS = 15_000;

type Ended<T> = { readonly ended: true; readonly value?: T; readonly error?: unknown } | { readonly ended: false };

/** Waits for `p`, at most HANG_MS: whether it ended (with its value or error) or was still running. */
async function within<T>(p: Promise<T>): Promise<Ended<T>> {
  let timer: NodeJS.Timeout | undefined;
  const hung = new Promise<Ended<T>>((resolve) => {
    timer = setTimeout(() => resolve({ ended: false }), HANG_MS);
  });
  try {
    return await Promise.race([p.then((value) => ({ ended: true as const, value }), (error: unknown) => ({ ended: true as const, error })), hung]);
  } finally {
    clearTimeout(timer);
  }
}

const rnd = (): string => randomBytes(4).toString('hex');

export function describeConformance(name: string, make: () => Promise<ConformanceKind>): void {
  describe(`participant kind ${name}`, () => {
    let kind: ConformanceKind;
    let adapter: ParticipantAdapter;
    const coordinatorId = `conf${rnd()}`;
    let n = 0;
    /** A branch of a new transaction; http branches carry their work as the payload. */
    const branch = (work?: unknown): BranchRef => {
      const transactionId = `t${rnd()}${n++}`;
      return { transactionId, branchId: 'b1', gid: makeGid(coordinatorId, transactionId, 1), protocol: '2pc', ...(work === undefined ? {} : { payload: work }) };
    };
    const run = async (delta: number, slot: 0 | 1 = 0): Promise<BranchRef> => {
      const work = kind.work(delta, slot);
      const ref = branch(adapter.work === 'operations' ? undefined : work);
      await adapter.enlist(ref, work);
      return ref;
    };
    /** Prepared branches sit on the store, for recovery to list: the work ran there (operations). */
    const listsOnStore = (): boolean => adapter.listsPreparedBranches && adapter.work === 'operations';

    beforeAll(async () => {
      kind = await make();
      adapter = kind.adapter();
      await adapter.verify();
    });

    afterAll(async () => {
      await kind?.close();
    });

    it('refuses malformed work before anything runs (a payload is for the service to judge)', async () => {
      if (adapter.work === 'payload') return;
      expect(() => adapter.validateWork({ surely: 'not work' })).toThrow(expect.objectContaining({ code: 'VALIDATION_FAILED' }));
      // An operation with a field its kind does not know (the request schema lets any kind's operation through).
      const [first, ...rest] = kind.work(1) as Record<string, unknown>[];
      expect(() => adapter.validateWork([{ ...first, bogus: true }, ...rest])).toThrow(expect.objectContaining({ code: 'VALIDATION_FAILED' }));
    });

    it('prepare, commit: the effect lands once; prepare and commit again change nothing', async () => {
      const before = await kind.value();
      const ref = await run(-7);
      expect((await adapter.prepare(ref)).vote).toBe('yes');
      expect((await adapter.prepare(ref)).vote).toBe('yes');
      await adapter.commit(ref);
      await adapter.commit(ref);
      expect(await kind.value()).toBe(before - 7);
      expect(adapter.openBranches()).toBe(0);
    });

    it('prepare, abort: nothing lands; abort again changes nothing', async () => {
      const before = await kind.value();
      const ref = await run(-5);
      expect((await adapter.prepare(ref)).vote).toBe('yes');
      await adapter.abort(ref);
      await adapter.abort(ref);
      expect(await kind.value()).toBe(before);
      expect(adapter.openBranches()).toBe(0);
    });

    it('abort before prepare (the work ran, no vote yet) leaves nothing', async () => {
      const before = await kind.value();
      const ref = await run(-3);
      await adapter.abort(ref);
      expect(await kind.value()).toBe(before);
      expect(adapter.openBranches()).toBe(0);
    });

    it('an abort of a branch the store never saw succeeds and changes nothing (presumed abort after a crash)', async () => {
      const before = await kind.value();
      await adapter.abort(branch(adapter.work === 'operations' ? undefined : kind.work(-1)));
      expect(await kind.value()).toBe(before);
    });

    it('a commit of a branch it no longer lists succeeds and changes nothing, where recovery relies on listing (already committed before a crash)', async () => {
      if (!adapter.listsPreparedBranches) return; // the coordinator logs such branches and never commits one it did not prepare
      // Work kept in the log comes with every call: for such a kind "already committed" is a commit delivered before.
      const ref = branch(adapter.work === 'operations' ? undefined : kind.work(-1));
      if (adapter.work !== 'operations') await adapter.commit(ref);
      const before = await kind.value();
      await adapter.commit(ref);
      expect(await kind.value()).toBe(before);
    });

    it('lists exactly the branches prepared under a coordinator id, when it can list them', async () => {
      if (!listsOnStore()) {
        await expect(adapter.findPrepared(gidPrefix(coordinatorId))).resolves.toEqual([]);
        return;
      }
      const a = await run(-1, 0);
      const b = await run(-1, 1);
      expect((await adapter.prepare(a)).vote).toBe('yes');
      expect((await adapter.prepare(b)).vote).toBe('yes');
      expect((await adapter.findPrepared(gidPrefix(coordinatorId))).sort()).toEqual([a.gid, b.gid].sort());
      expect(await adapter.findPrepared(gidPrefix(`other${rnd()}`))).toEqual([]);
      const before = [await kind.value(0), await kind.value(1)];
      await adapter.commit(a);
      await adapter.abort(b);
      expect(await adapter.findPrepared(gidPrefix(coordinatorId))).toEqual([]);
      expect([await kind.value(0), await kind.value(1)]).toEqual([before[0]! - 1, before[1]]);
    });

    it('a prepared branch survives a crash of the store: listed again, then committed (or aborted) as delivered', async () => {
      const before = [await kind.value(0), await kind.value(1)];
      const toCommit = await run(-2, 0);
      const toAbort = await run(-4, 1);
      expect((await adapter.prepare(toCommit)).vote).toBe('yes');
      expect((await adapter.prepare(toAbort)).vote).toBe('yes');
      await kind.restart();
      if (listsOnStore()) {
        // The adapter reconnects by itself; its first calls may fail while the store comes back.
        await eventually(async () => (await adapter.findPrepared(gidPrefix(coordinatorId)).catch(() => [])).length === 2, 20_000);
      }
      await eventually(async () => adapter.commit(toCommit).then(() => true, () => false), 20_000);
      await eventually(async () => adapter.abort(toAbort).then(() => true, () => false), 20_000);
      expect([await kind.value(0), await kind.value(1)]).toEqual([before[0]! - 2, before[1]]);
      if (listsOnStore()) expect(await adapter.findPrepared(gidPrefix(coordinatorId))).toEqual([]);
    }, 60_000);

    it('a store that stops answering: every call ends within its timeouts (a no vote or an error), and once it answers again the branches are resolved', async () => {
      const proxy = await FaultProxy.start({ target: kind.address, name: `${name}-silent` });
      const silent = kind.adapterAt('127.0.0.1', proxy.port);
      try {
        await silent.verify();
        const before = [await kind.value(0), await kind.value(1)];
        const enlisted = branch(silent.work === 'operations' ? undefined : kind.work(-5, 0));
        await silent.enlist(enlisted, kind.work(-5, 0));
        const prepared = branch(silent.work === 'operations' ? undefined : kind.work(-4, 1));
        await silent.enlist(prepared, kind.work(-4, 1));
        expect((await silent.prepare(prepared)).vote).toBe('yes');

        proxy.blackhole(true);
        const vote = await within(silent.prepare(enlisted));
        expect(vote.ended, 'prepare ended').toBe(true);
        expect(vote.ended && vote.error, 'prepare never throws').toBeUndefined();
        expect(vote.ended && vote.value?.vote).toBe('no');
        const commit = await within(silent.commit(prepared));
        expect(commit.ended, 'commit ended').toBe(true);
        expect(commit.ended && commit.error, 'a commit the store could not confirm fails (the coordinator retries it)').toBeDefined();
        expect((await within(silent.abort(enlisted))).ended, 'abort ended').toBe(true);
        expect((await within(silent.findPrepared(gidPrefix(coordinatorId)))).ended, 'listing ended').toBe(true);
        expect((await within(silent.verify())).ended, 'verify ended').toBe(true);

        proxy.blackhole(false);
        await eventually(async () => silent.commit(prepared).then(() => true, () => false), 20_000);
        await eventually(async () => silent.abort(enlisted).then(() => true, () => false), 20_000);
        expect([await kind.value(0), await kind.value(1)]).toEqual([before[0], before[1]! - 4]);
        if (listsOnStore()) expect(await adapter.findPrepared(gidPrefix(coordinatorId))).toEqual([]);
      } finally {
        await silent.close();
        await proxy.close();
      }
    }, 90_000);
  });
}
