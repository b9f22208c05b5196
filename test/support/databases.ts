/**
 * Per-test-file isolation: each file gets fresh databases on the shared test
 * servers, named from a random suffix, with the tables the transfer tests use.
 */
import { randomBytes } from 'node:crypto';
import pg from 'pg';

export async function freshDatabase(serverUrl: string, prefix = 't'): Promise<string> {
  const name = `${prefix}_${randomBytes(6).toString('hex')}`;
  const admin = new pg.Client({ connectionString: serverUrl });
  await admin.connect();
  try {
    await admin.query(`CREATE DATABASE ${name}`);
  } finally {
    await admin.end();
  }
  const url = new URL(serverUrl);
  url.pathname = `/${name}`;
  return url.toString();
}

/** accounts(id text primary key, balance bigint check (balance >= 0)) with the given rows. */
export async function createAccounts(databaseUrl: string, rows: Record<string, number>): Promise<void> {
  await withClient(databaseUrl, async (c) => {
    await c.query('CREATE TABLE IF NOT EXISTS accounts (id text PRIMARY KEY, balance bigint NOT NULL CHECK (balance >= 0))');
    for (const [id, balance] of Object.entries(rows)) {
      await c.query('INSERT INTO accounts (id, balance) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET balance = EXCLUDED.balance', [id, balance]);
    }
  });
}

export async function withClient<T>(databaseUrl: string, fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const c = new pg.Client({ connectionString: databaseUrl });
  await c.connect();
  try {
    return await fn(c);
  } finally {
    await c.end();
  }
}

export async function totalBalance(databaseUrl: string): Promise<number> {
  return withClient(databaseUrl, async (c) => Number((await c.query('SELECT coalesce(sum(balance), 0) AS s FROM accounts')).rows[0].s));
}

export async function balanceOf(databaseUrl: string, id: string): Promise<number> {
  return withClient(databaseUrl, async (c) => Number((await c.query('SELECT balance FROM accounts WHERE id = $1', [id])).rows[0]?.balance));
}

/** Prepared transactions in this database whose gid starts with the prefix (default: any coordinator's). */
export async function preparedGids(databaseUrl: string, prefix = 'tcx:'): Promise<string[]> {
  return withClient(databaseUrl, async (c) =>
    (await c.query('SELECT gid FROM pg_prepared_xacts WHERE database = current_database() AND starts_with(gid, $1)', [prefix])).rows.map(
      (r: { gid: string }) => r.gid,
    ),
  );
}

/** A branch prepared by hand, as a coordinator would have left it (gid `tcx:<id>:<tx>:<n>`). */
/**
 * Best effort, for afterAll: rolls back every tcx branch a test left prepared in these
 * databases (undefined ones — never created — are skipped), so the shared servers stay clean.
 */
export async function rollBackLeftovers(...databases: (string | undefined)[]): Promise<void> {
  for (const db of databases) {
    if (db === undefined) continue;
    await withClient(db, async (c) => {
      for (const gid of await preparedGids(db)) await c.query(`ROLLBACK PREPARED '${gid}'`).catch(() => undefined);
    }).catch(() => undefined);
  }
}

export async function prepareByHand(databaseUrl: string, gid: string, account: string, delta: number): Promise<void> {
  await withClient(databaseUrl, async (cl) => {
    await cl.query('BEGIN');
    await cl.query('UPDATE accounts SET balance = balance + $1 WHERE id = $2', [delta, account]);
    await cl.query(`PREPARE TRANSACTION '${gid}'`);
  });
}

/** Polls `check` every 50 ms until it holds; fails after `ms`. */
export async function eventually(check: () => Promise<boolean>, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error('condition not reached in time');
}
