/**
 * What a Postgres branch answers is bounded: at most MAX_ROWS_RETURNED rows per statement and
 * MAX_ANSWER_BYTES of rows per enlist; past either, rows are counted, not kept (`truncated`,
 * `rowCount` still the whole count), so one request cannot make the coordinator hold a huge
 * result. The branch itself is unaffected: it still prepares and commits.
 */
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { silentLogger } from '../../src/logger.js';
import { gidPrefix, makeGid } from '../../src/participants/gid.js';
import { MAX_ANSWER_BYTES } from '../../src/participants/pg-pipeline.js';
import { MAX_ROWS_RETURNED } from '../../src/participants/postgres-session.js';
import { PostgresParticipant } from '../../src/participants/postgres-participant.js';
import { createAccounts, freshDatabase } from '../support/databases.js';

let adapter: PostgresParticipant;
const coordinatorId = `answers${randomBytes(3).toString('hex')}`;
let n = 0;
const ref = () => {
  const transactionId = `t${n++}`;
  return { transactionId, branchId: 'b1', gid: makeGid(coordinatorId, transactionId, 1) };
};

beforeAll(async () => {
  const db = await freshDatabase(inject('pgUrlA'), 'answers');
  await createAccounts(db, { a: 100 });
  adapter = new PostgresParticipant({ name: 'pg', connectionString: db, maxSessions: 2, connectTimeoutMs: 5_000, statementTimeoutMs: 30_000, idleInTransactionTimeoutMs: 60_000, logger: silentLogger() });
});

afterAll(async () => adapter?.close());

type Answer = { rows: unknown[]; rowCount: number | null; truncated?: boolean };

describe('postgres answers', () => {
  it(`keep at most ${MAX_ROWS_RETURNED} rows of a statement, with the count of all`, async () => {
    const branch = ref();
    const { results } = await adapter.enlist(branch, [{ sql: 'SELECT g FROM generate_series(1, $1::int) g', params: [MAX_ROWS_RETURNED + 500] }]);
    const answer = results?.[0] as Answer;
    expect(answer.rows).toHaveLength(MAX_ROWS_RETURNED);
    expect(answer).toMatchObject({ rowCount: MAX_ROWS_RETURNED + 500, truncated: true });
    await adapter.abort(branch);
  });

  it(`keep at most ${MAX_ANSWER_BYTES} bytes of rows per enlist, across statements, holding no more in memory; the branch still commits`, async () => {
    const branch = ref();
    const before = process.memoryUsage().heapUsed;
    // 300 MB of rows, then a statement after it, then the work that must land.
    const { results } = await adapter.enlist(branch, [
      { sql: "SELECT repeat('x', 100000) AS r FROM generate_series(1, 3000)" },
      { sql: "SELECT repeat('y', 100000) AS r FROM generate_series(1, 10)" },
      { sql: 'UPDATE accounts SET balance = balance + 1 WHERE id = $1 RETURNING balance', params: ['a'] },
    ]);
    const [big, after, update] = results as Answer[];
    expect(big).toMatchObject({ rowCount: 3000, truncated: true });
    const kept = big!.rows.length * 100_000;
    expect(kept).toBeLessThanOrEqual(MAX_ANSWER_BYTES);
    expect(kept).toBeGreaterThan(MAX_ANSWER_BYTES / 2);
    expect(after).toMatchObject({ rowCount: 10, rows: [], truncated: true }); // the budget is spent
    expect(update).toMatchObject({ rowCount: 1, rows: [{ balance: '101' }] });
    expect(process.memoryUsage().heapUsed - before).toBeLessThan(100 * 1024 * 1024);
    expect((await adapter.prepare(branch)).vote).toBe('yes');
    await adapter.commit(branch);
    expect(await adapter.findPrepared(gidPrefix(coordinatorId))).toEqual([]);
  }, 60_000);
});
