/**
 * Work a hostile client hands a mysql branch, on a real MariaDB: leaving the branch's XA
 * transaction through a procedure (CALL sys.execute_prepared_stmt) or a stored function,
 * answers far past the row and byte bounds, params that do not match the placeholders, and
 * the values bytes come back as.
 */
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/logger.js';
import { makeGid } from '../../src/participants/gid.js';
import { MySqlParticipant } from '../../src/participants/mysql-participant.js';
import { MAX_BYTES_RETURNED, MAX_ROWS_RETURNED, type OperationResult } from '../../src/participants/mysql-results.js';
import { xidOf, xidSql } from '../../src/participants/mysql-xid.js';
import type { BranchRef, EnlistResult } from '../../src/participants/participant.js';
import { MariaDbServer } from '../support/mariadb-server.js';

const DB = 'hostile';
const coordinatorId = `hostile${randomBytes(3).toString('hex')}`;
let server: MariaDbServer;
let adapter: MySqlParticipant;
let n = 0;

const branch = (): BranchRef => {
  const transactionId = `t${randomBytes(4).toString('hex')}${n++}`;
  return { transactionId, branchId: 'b1', gid: makeGid(coordinatorId, transactionId, 1), protocol: '2pc' };
};
/** The branch's xid as XA statements take it — what a client can work out from the transaction id and the coordinator's id. */
const xidOfRef = (ref: BranchRef): string => {
  const xid = xidOf(ref.gid);
  if (xid === undefined) throw new Error(`no xid for ${ref.gid}`);
  return xidSql(xid);
};
const update = (account: string, delta: number) => ({ sql: 'UPDATE accounts SET balance = balance + ? WHERE id = ?', params: [delta, account] });
const balance = async (account: string): Promise<number> =>
  Number((await server.query<{ balance: string }[]>('SELECT balance FROM accounts WHERE id = ?', [account], DB))[0]?.balance);
const resultOf = (result: EnlistResult, i: number): OperationResult => result.results?.at(i) as OperationResult;
const recovered = async (): Promise<unknown[]> => server.query('XA RECOVER');
const failure = async (p: Promise<unknown>): Promise<{ code?: string; message: string; details?: Record<string, unknown> }> =>
  p.then(
    () => {
      throw new Error('expected a failure');
    },
    (err: unknown) => err as { code?: string; message: string; details?: Record<string, unknown> },
  );

beforeAll(async () => {
  server = await MariaDbServer.start({ name: 'hostile-work' });
  const url = await server.createDatabase(DB);
  await server.query('CREATE TABLE accounts (id VARCHAR(64) PRIMARY KEY, balance BIGINT NOT NULL) ENGINE=InnoDB', [], DB);
  await server.query('CREATE TABLE notes (id BIGINT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(100)) ENGINE=InnoDB', [], DB);
  await server.query("INSERT INTO accounts VALUES ('alice', 100), ('bob', 100), ('carol', 100)", [], DB);
  adapter = new MySqlParticipant({
    name: 'hostile',
    connectionString: url,
    maxSessions: 4,
    connectTimeoutMs: 3_000,
    statementTimeoutMs: 30_000,
    idleInTransactionTimeoutMs: 60_000,
    logger: silentLogger(),
  });
  await adapter.verify();
});

afterAll(async () => {
  await adapter?.close();
  await server?.destroy();
});

describe('mysql branch work cannot leave its XA transaction', () => {
  it('refuses CALL however it is written, saying why', () => {
    const spellings = [
      'CALL p()', 'call p()', 'CaLl p', '/* x */ CALL p()', '-- x\nCALL p()', '# x\ncall p()', '\t\n CALL p()', '  (CALL p())',
      'CALL/**/p()', 'CALL`sys`.`execute_prepared_stmt`(?)', 'CALL sys.execute_prepared_stmt(?)', '/* a */ /* b */ call sys . execute_prepared_stmt (?)',
    ];
    for (const sql of spellings) {
      expect(() => adapter.validateWork([{ sql, params: ['SELECT 1'] }]), sql).toThrow(
        expect.objectContaining({ code: 'VALIDATION_FAILED', message: expect.stringMatching(/CALL is not allowed.*procedure can run statements that leave the branch's XA transaction/) }),
      );
    }
  });

  it('sys.execute_prepared_stmt cannot end the branch and autocommit what follows (XA END, XA ROLLBACK, then an UPDATE)', async () => {
    const before = await balance('carol');
    const ref = branch();
    const xid = xidOfRef(ref);
    const err = await failure(
      adapter.enlist(ref, [
        { sql: 'CALL sys.execute_prepared_stmt(?)', params: [`XA END ${xid}`] },
        { sql: 'CALL sys.execute_prepared_stmt(?)', params: [`XA ROLLBACK ${xid}`] },
        update('carol', 1),
      ]),
    );
    expect(err).toMatchObject({ code: 'VALIDATION_FAILED', details: { operation: 0 } });
    expect((await adapter.prepare(ref)).vote).toBe('no');
    await adapter.abort(ref);
    expect(await balance('carol')).toBe(before);
    expect(await recovered()).toEqual([]);
  });

  it("sys.execute_prepared_stmt cannot roll back another branch's prepared transaction, whose commit would then apply nothing", async () => {
    const before = await balance('alice');
    const victim = branch();
    await adapter.enlist(victim, [update('alice', 7)]);
    // Prepared and detached (its connection closed): XA RECOVER lists it, any connection could resolve it.
    expect(await adapter.prepare(victim)).toEqual({ vote: 'yes' });
    const attacker = branch();
    const own = xidOfRef(attacker);
    const err = await failure(
      adapter.enlist(attacker, [
        { sql: 'CALL sys.execute_prepared_stmt(?)', params: [`XA END ${own}`] },
        { sql: 'CALL sys.execute_prepared_stmt(?)', params: [`XA ROLLBACK ${own}`] },
        { sql: 'CALL sys.execute_prepared_stmt(?)', params: [`XA ROLLBACK ${xidOfRef(victim)}`] },
      ]),
    );
    expect(err).toMatchObject({ code: 'VALIDATION_FAILED' });
    await adapter.abort(attacker);
    expect(await recovered()).toHaveLength(1);
    await adapter.commit(victim);
    expect(await balance('alice')).toBe(before + 7);
    expect(await recovered()).toEqual([]);
  });

  describe('stored functions', () => {
    beforeAll(async () => {
      // A function that hands its argument to the shipped procedure: the server refuses the dynamic SQL inside a function.
      await server.query('CREATE FUNCTION run_sql(s TEXT) RETURNS INT NOT DETERMINISTIC MODIFIES SQL DATA BEGIN CALL sys.execute_prepared_stmt(s); RETURN 1; END', [], DB);
    });

    it('cannot hold dynamic SQL (the server refuses to create one)', async () => {
      for (const body of ["PREPARE s FROM 'XA END X''00'''", "EXECUTE IMMEDIATE 'XA END X''00'''"]) {
        const created = server.query(`CREATE FUNCTION dyn_${n++}() RETURNS INT NOT DETERMINISTIC MODIFIES SQL DATA BEGIN ${body}; RETURN 1; END`, [], DB);
        await expect(created, body).rejects.toMatchObject({ errno: 1336, message: expect.stringMatching(/Dynamic SQL is not allowed in stored function/) });
      }
    });

    it('SELECT of a function that reaches sys.execute_prepared_stmt fails (errno 1336) and the branch votes no, nothing left', async () => {
      const before = await balance('carol');
      const ref = branch();
      const xid = xidOfRef(ref);
      const err = await failure(adapter.enlist(ref, [update('carol', 1), { sql: 'SELECT run_sql(?) AS r', params: [`XA END ${xid}`] }, update('carol', 1)]));
      expect(err).toMatchObject({ code: 'OPERATION_FAILED', details: { operation: 1, errno: 1336 } });
      expect((await adapter.prepare(ref)).vote).toBe('no');
      await adapter.abort(ref);
      expect(await balance('carol')).toBe(before);
      expect(await recovered()).toEqual([]);
    });

    it('DO of that function (DO turns the error into a warning) leaves the branch in its XA transaction: what follows commits or aborts with it', async () => {
      for (const outcome of ['abort', 'commit'] as const) {
        const before = await balance('bob');
        const ref = branch();
        const xid = xidOfRef(ref);
        const result = await adapter.enlist(
          ref,
          [{ sql: 'DO run_sql(?)', params: [`XA END ${xid}`] }, { sql: 'DO run_sql(?)', params: [`XA ROLLBACK ${xid}`] }, update('bob', 3)],
          undefined,
          { prepareAfter: outcome === 'commit' },
        );
        if (outcome === 'commit') {
          expect(result.vote).toEqual({ vote: 'yes' });
          await adapter.commit(ref);
        } else {
          await adapter.abort(ref);
        }
        expect(await balance('bob'), outcome).toBe(outcome === 'commit' ? before + 3 : before);
        expect(await recovered()).toEqual([]);
      }
    });

    it('a function that runs XA statements itself (static SQL) fails the branch at that statement: nothing after it runs or autocommits', async () => {
      const ref = branch();
      const xid = xidOfRef(ref);
      // What a careless DBA could have left in the database, for this very xid.
      const tag = randomBytes(3).toString('hex');
      await server.query(`CREATE PROCEDURE end_${tag}() BEGIN XA END ${xid}; END`, [], DB);
      await server.query(`CREATE PROCEDURE one_phase_${tag}() BEGIN XA COMMIT ${xid} ONE PHASE; END`, [], DB);
      await server.query(
        `CREATE FUNCTION leave_${tag}() RETURNS INT NOT DETERMINISTIC MODIFIES SQL DATA BEGIN CALL end_${tag}(); CALL one_phase_${tag}(); RETURN 1; END`,
        [],
        DB,
      );
      const before = await balance('carol');
      // DO swallows the function's error (1422): only the status flags of its answer tell that the transaction is gone.
      const err = await failure(adapter.enlist(ref, [{ sql: `DO leave_${tag}()` }, update('carol', 5), { sql: 'INSERT INTO notes (v) VALUES (?)', params: ['escaped'] }]));
      expect(err).toMatchObject({ code: 'OPERATION_FAILED', message: expect.stringMatching(/left the branch's XA transaction/), details: { operation: 0 } });
      expect((await adapter.prepare(ref)).vote).toBe('no');
      await adapter.abort(ref);
      expect(await balance('carol')).toBe(before);
      expect(await server.query('SELECT * FROM notes', [], DB)).toEqual([]);
      expect(await recovered()).toEqual([]);
    });

    it('a function that only ends the branch (XA END in its body, which the server accepts) leaves it unable to do or prepare anything', async () => {
      for (const last of [false, true]) {
        const ref = branch();
        const tag = randomBytes(3).toString('hex');
        await server.query(`CREATE FUNCTION end_${tag}() RETURNS INT NOT DETERMINISTIC MODIFIES SQL DATA BEGIN XA END ${xidOfRef(ref)}; RETURN 1; END`, [], DB);
        const before = await balance('carol');
        const work = last ? [update('carol', 1), { sql: `SELECT end_${tag}() AS e` }] : [{ sql: `DO end_${tag}()` }, update('carol', 1)];
        if (last) {
          // The session is IDLE in the branch's XA transaction: the adapter's own XA END fails, and so the prepare.
          const result = await adapter.enlist(ref, work, undefined, { prepareAfter: true });
          expect(result.vote).toMatchObject({ vote: 'no', reason: expect.stringMatching(/XAER_RMFAIL/) });
        } else {
          expect(await failure(adapter.enlist(ref, work))).toMatchObject({ code: 'OPERATION_FAILED', details: { operation: 1, errno: 1399 } });
          expect((await adapter.prepare(ref)).vote).toBe('no');
        }
        await adapter.abort(ref);
        expect(await balance('carol')).toBe(before);
        expect(await recovered()).toEqual([]);
      }
    });
  });
});

describe('mysql answers are bounded in rows and bytes', () => {
  /** Runs `fn` and answers how far the heap grew above where it started, sampled every 5 ms. */
  const heapGrowth = async <T>(fn: () => Promise<T>): Promise<{ value: T | undefined; error: unknown; growthMb: number; ms: number }> => {
    const start = process.memoryUsage().heapUsed;
    let peak = start;
    const sampler = setInterval(() => {
      peak = Math.max(peak, process.memoryUsage().heapUsed);
    }, 5);
    const t0 = Date.now();
    try {
      const value = await fn();
      return { value, error: undefined, growthMb: (Math.max(peak, process.memoryUsage().heapUsed) - start) / 1e6, ms: Date.now() - t0 };
    } catch (error) {
      return { value: undefined, error, growthMb: (Math.max(peak, process.memoryUsage().heapUsed) - start) / 1e6, ms: Date.now() - t0 };
    } finally {
      clearInterval(sampler);
    }
  };

  it(`answers at most ${MAX_ROWS_RETURNED} rows per operation, truncated: true with the count of all, as the postgres adapter does; the branch still commits`, async () => {
    const ref = branch();
    const result = await adapter.enlist(ref, [{ sql: 'SELECT seq FROM seq_1_to_25000' }, update('alice', 1)], undefined, { prepareAfter: true });
    const rows = resultOf(result, 0);
    expect(rows).toMatchObject({ rowCount: 25_000, truncated: true });
    expect(rows.rows).toHaveLength(MAX_ROWS_RETURNED);
    expect(rows.rows.at(-1)).toEqual({ seq: String(MAX_ROWS_RETURNED) });
    expect(result.vote).toEqual({ vote: 'yes' });
    await adapter.commit(ref);
  });

  it(`answers at most ${MAX_BYTES_RETURNED} bytes of rows per enlist, all operations together`, async () => {
    const ref = branch();
    const big = { sql: "SELECT seq, REPEAT('x', 100000) AS r FROM seq_1_to_200" };
    const result = await adapter.enlist(ref, [big, big, { sql: 'SELECT 1 AS one' }]);
    const [first, second, third] = [resultOf(result, 0), resultOf(result, 1), resultOf(result, 2)];
    expect(first).toMatchObject({ rowCount: 200, truncated: true });
    expect(first.rows.length).toBeGreaterThan(50);
    expect(first.rows.length).toBeLessThan(200);
    expect(second).toMatchObject({ rowCount: 200, truncated: true });
    expect(second.rows.length).toBeLessThan(2);
    expect(Buffer.byteLength(JSON.stringify(result.results))).toBeLessThanOrEqual(MAX_BYTES_RETURNED + 64 * 1024);
    expect(third).toEqual({ rows: [{ one: 1 }], rowCount: 1 });
    await adapter.abort(ref);
  });

  const huge: { name: string; sql: string }[] = [
    { name: '10,000,000 rows of 20 kB (200 GB)', sql: "SELECT REPEAT('x', 20000) AS r FROM seq_1_to_10000000" },
    { name: '400 rows of 1 MB', sql: "SELECT REPEAT('x', 1000000) AS r FROM seq_1_to_400" },
    { name: '100,000,000 small rows', sql: 'SELECT seq FROM seq_1_to_100000000' },
  ];
  for (const { name, sql } of huge) {
    it(`a result of ${name} is not read to its end: a clean failure, the heap stays bounded, the branch votes no and rolls back`, async () => {
      const before = await balance('carol');
      const ref = branch();
      await adapter.enlist(ref, [update('carol', 1)]);
      const run = await heapGrowth(() => adapter.enlist(ref, [{ sql }, update('carol', 1)]));
      expect(run.error).toMatchObject({ code: 'OPERATION_FAILED', message: expect.stringMatching(/not read to its end/), details: { operation: 0 } });
      expect(run.growthMb).toBeLessThan(100);
      expect(run.ms).toBeLessThan(10_000);
      expect(await adapter.prepare(ref)).toMatchObject({ vote: 'no', reason: expect.stringMatching(/not read to its end/) });
      await adapter.abort(ref);
      expect(await balance('carol')).toBe(before);
      expect(await recovered()).toEqual([]);
      // The server stopped sending: the statement no longer runs anywhere.
      const running = await server.query<unknown[]>("SELECT ID FROM information_schema.PROCESSLIST WHERE INFO LIKE 'SELECT%seq_1_to%' AND ID <> CONNECTION_ID()");
      expect(running).toEqual([]);
      // And the adapter carries on.
      const next = branch();
      expect(resultOf(await adapter.enlist(next, [{ sql: 'SELECT 2 AS two' }]), 0)).toEqual({ rows: [{ two: 2 }], rowCount: 1 });
      await adapter.abort(next);
    });
  }
});

describe('mysql params must match the placeholders', () => {
  it('refuses extra params instead of binding garbage (they were committed as "\\u0000\\u0005hel")', async () => {
    const ref = branch();
    const err = await failure(adapter.enlist(ref, [{ sql: 'INSERT INTO notes (v) VALUES (?)', params: ['hello', 123] }], undefined, { prepareAfter: true }));
    expect(err).toMatchObject({ code: 'VALIDATION_FAILED', message: expect.stringMatching(/1 placeholder \(\?\) but 2 params/), details: { operation: 0 } });
    expect((await adapter.prepare(ref)).vote).toBe('no');
    await adapter.abort(ref);
    expect(await server.query('SELECT * FROM notes', [], DB)).toEqual([]);
  });

  it('refuses too many or too few params with a 4xx, before the statement runs; the branch votes no', async () => {
    const cases: { sql: string; params: unknown[] }[] = [
      { sql: 'SELECT ? AS v', params: [1, 2] },
      { sql: 'SELECT ? AS a, ? AS b', params: [1] },
      { sql: 'SELECT 1 AS a', params: ['x'] },
      { sql: 'UPDATE accounts SET balance = balance + ? WHERE id = ?', params: [1, 'carol', 'extra'] },
    ];
    for (const op of cases) {
      const before = await balance('carol');
      const ref = branch();
      const err = await failure(adapter.enlist(ref, [update('carol', 1), op]));
      expect(err, op.sql).toMatchObject({ code: 'VALIDATION_FAILED', details: { operation: 1 } });
      expect((await adapter.prepare(ref)).vote).toBe('no');
      await adapter.abort(ref);
      expect(await balance('carol')).toBe(before);
    }
  });

  it('counts only real placeholders: a ? in a literal, an identifier or a comment is none', async () => {
    const ref = branch();
    const result = await adapter.enlist(ref, [
      { sql: "SELECT '?' AS q, ? AS p /* ? */", params: ['x'] },
      { sql: 'SELECT 1 AS `a?b` -- ?\n', params: [] },
      { sql: 'SELECT 2 AS two' },
    ]);
    expect(result.results).toEqual([
      { rows: [{ q: '?', p: 'x' }], rowCount: 1 },
      { rows: [{ 'a?b': 1 }], rowCount: 1 },
      { rows: [{ two: 2 }], rowCount: 1 },
    ]);
    await adapter.abort(ref);
  });
});

describe('mysql statements and values', () => {
  it('refuses TABLE (MySQL 8 only; MariaDB has no such statement)', () => {
    expect(() => adapter.validateWork([{ sql: 'TABLE accounts' }])).toThrow(expect.objectContaining({ code: 'VALIDATION_FAILED' }));
  });

  it('answers bytes (BLOB, BINARY, VARBINARY, BIT) as base64 strings; text stays text', async () => {
    await server.query('CREATE TABLE bytes (id INT PRIMARY KEY, bl BLOB, vb VARBINARY(8), bn BINARY(4), bt BIT(10), tx TEXT, j JSON) ENGINE=InnoDB', [], DB);
    const blob = Buffer.from([0, 1, 2, 250, 255]);
    await server.query('INSERT INTO bytes VALUES (1, ?, ?, ?, b\'1000000001\', ?, ?)', [blob, Buffer.from('ab'), Buffer.from('xy'), 'plain ü', '{"a": 1}'], DB);
    const ref = branch();
    const result = await adapter.enlist(ref, [
      { sql: 'SELECT bl, vb, bn, bt, tx, j FROM bytes WHERE id = ?', params: [1] },
      { sql: "SELECT BINARY 'x' AS b, 'x' AS s, NULL AS n, UNHEX('00ff') AS h" },
    ]);
    expect(resultOf(result, 0).rows).toEqual([
      {
        bl: blob.toString('base64'),
        vb: Buffer.from('ab').toString('base64'),
        bn: Buffer.from([0x78, 0x79, 0, 0]).toString('base64'),
        bt: Buffer.from([0x02, 0x01]).toString('base64'),
        tx: 'plain ü',
        j: { a: 1 }, // MariaDB's JSON is text; mysql2 reads its extended metadata and parses it, as the postgres adapter answers json
      },
    ]);
    expect(resultOf(result, 1).rows).toEqual([{ b: 'eA==', s: 'x', n: null, h: 'AP8=' }]);
    await adapter.abort(ref);
  });
});
