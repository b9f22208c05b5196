import Fastify, { type FastifyInstance } from 'fastify';
import { afterEach, beforeAll, describe, expect, inject, it } from 'vitest';
import { balanceOf, createAccounts, freshDatabase, preparedGids } from '../support/databases.js';
import { CoordinatorProcess } from '../support/coordinator-process.js';
import { transferSql, until } from './helpers.js';

let db: string;
let coord: CoordinatorProcess | undefined;
let slow: FastifyInstance | undefined;

beforeAll(async () => {
  db = await freshDatabase(inject('pgUrlA'));
  await createAccounts(db, { alice: 100, bob: 0 });
});

afterEach(async () => {
  await coord?.destroy();
  await slow?.close();
  coord = undefined;
  slow = undefined;
});

describe('graceful shutdown on SIGTERM', () => {
  it('finishes in-flight phase 2, aborts undecided transactions, flushes the log and exits 0', async () => {
    // An HTTP participant whose commit takes a while: the commit is in flight when SIGTERM arrives.
    let commits = 0;
    let release: () => void = () => undefined;
    const commitStarted = new Promise<void>((resolve) => {
      release = resolve;
    });
    slow = Fastify();
    slow.post('/prepare', async () => ({ vote: 'yes' }));
    slow.post('/abort', async () => ({ status: 'aborted' }));
    slow.post('/commit', async () => {
      release();
      await new Promise((r) => setTimeout(r, 700));
      commits++;
      return { status: 'committed' };
    });
    const slowUrl = await slow.listen({ host: '127.0.0.1', port: 0 });

    coord = await CoordinatorProcess.start();
    const withPassword = db.replace('postgres://postgres@', 'postgres://postgres:s3cret-pw@');
    expect((await coord.request('POST', '/v1/participants', { name: 'a', kind: 'postgres', connectionString: withPassword })).status).toBe(201);
    expect((await coord.request('POST', '/v1/participants', { name: 'slow', kind: 'http', baseUrl: slowUrl })).status).toBe(201);

    // One transaction left undecided (active), one committing when the signal comes.
    const open = await coord.request('POST', '/v1/transactions', {});
    await coord.request('POST', `/v1/transactions/${open.body.id}/branches`, { participant: 'a', operations: [transferSql('bob', 5)] });
    const committing = coord.request('POST', '/v1/transactions', {
      branches: [
        { participant: 'a', operations: [transferSql('alice', -10)] },
        { participant: 'slow', payload: { n: 1 } },
      ],
      commit: true,
    });
    await commitStarted;
    const exited = coord.stop();
    const answer = await committing;
    expect(answer.status).toBe(200);
    expect(answer.body.state).toBe('committed');
    const exit = await exited;
    expect(exit).toMatchObject({ code: 0 });
    expect(commits).toBe(1);
    expect(await balanceOf(db, 'alice')).toBe(90);
    expect(await balanceOf(db, 'bob')).toBe(0);
    expect(await preparedGids(db)).toEqual([]);

    // The log was flushed: after a restart the outcomes are known.
    await coord.restart();
    const committed = await coord.request('GET', `/v1/transactions/${answer.body.id}`);
    expect(committed.body.state).toBe('committed');
    await until('the undecided transaction is aborted', async () => {
      const r = await coord?.request('GET', `/v1/transactions/${open.body.id}`);
      return r?.body.state === 'aborted' ? true : undefined;
    });
    // Secrets never reach the logs, across both runs.
    expect(coord.output()).not.toContain('s3cret-pw');
  });
});
