/**
 * The Postgres log's schema: created on first open, migrated forward on later
 * ones (one opener at a time, under an advisory lock), refused when it is newer
 * than this coordinator knows. See postgres-log.ts for what each table holds.
 */

import type pg from 'pg';

export const LOG_SCHEMA_VERSION = 2;

/** MIGRATIONS[v] takes the schema from version v to v + 1. */
const MIGRATIONS: readonly string[] = [
  `CREATE TABLE IF NOT EXISTS tcx_lease (
     coordinator_id text PRIMARY KEY, holder text NOT NULL, public_url text NOT NULL,
     epoch bigint NOT NULL, expires_at timestamptz NOT NULL, renewed_at timestamptz NOT NULL,
     wanted_by text, wanted_at timestamptz);
   CREATE TABLE IF NOT EXISTS tcx_log (
     coordinator_id text NOT NULL, seq bigint NOT NULL, epoch bigint NOT NULL, record text NOT NULL,
     PRIMARY KEY (coordinator_id, seq));
   CREATE TABLE IF NOT EXISTS tcx_log_snapshot (
     coordinator_id text PRIMARY KEY, upto_seq bigint NOT NULL, records text NOT NULL,
     files text[] NOT NULL, taken_at timestamptz NOT NULL);
   CREATE TABLE IF NOT EXISTS tcx_log_file (
     coordinator_id text NOT NULL, name text NOT NULL, data bytea NOT NULL,
     PRIMARY KEY (coordinator_id, name));`,
  // 2: the participant registry every instance shares (src/cluster/shared-participants.ts).
  `CREATE TABLE IF NOT EXISTS tcx_participant (
     name text PRIMARY KEY, registration text NOT NULL, registered_by text NOT NULL,
     registered_at timestamptz NOT NULL, removed_at timestamptz);
   -- An adopted id with nothing left to do is settled: no survivor adopts it again until its own instance returns.
   ALTER TABLE tcx_lease ADD COLUMN IF NOT EXISTS settled boolean NOT NULL DEFAULT false;`,
];

/** Creates or migrates the schema, one opener at a time (an advisory lock held for the transaction). */
export async function migrate(client: pg.Client): Promise<void> {
  await client.query('BEGIN');
  try {
    await client.query(`SELECT pg_advisory_xact_lock(hashtext('tcx-log-schema'))`);
    await client.query('CREATE TABLE IF NOT EXISTS tcx_log_schema (version integer NOT NULL)');
    const res = await client.query<{ version: number }>('SELECT version FROM tcx_log_schema');
    const version = res.rows[0]?.version ?? 0;
    if (version > LOG_SCHEMA_VERSION) {
      throw new Error(`the log schema is version ${version}, newer than this coordinator knows (${LOG_SCHEMA_VERSION}): upgrade the coordinator`);
    }
    for (let v = version; v < LOG_SCHEMA_VERSION; v++) await client.query(MIGRATIONS[v]!);
    if (res.rows.length === 0) await client.query('INSERT INTO tcx_log_schema (version) VALUES ($1)', [LOG_SCHEMA_VERSION]);
    else if (version < LOG_SCHEMA_VERSION) await client.query('UPDATE tcx_log_schema SET version = $1', [LOG_SCHEMA_VERSION]);
    await client.query('COMMIT');
  } catch (err) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw err;
  }
}
