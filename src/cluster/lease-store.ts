/**
 * Leases on coordinator ids, kept in the log database (table tcx_lease). The
 * instance that holds an id's lease is the only one that may write that id's
 * log and talk to its participants; every acquisition takes a new epoch, and
 * the log's writes check it (postgres-log.ts), so an instance that lost its
 * lease — paused, partitioned — can commit nothing more. Every time is the
 * database's clock (now()), so the instances' clocks need not agree.
 *
 * An instance takes its own id at start (at once when it held it last, or when
 * the lease lapsed); it adopts another id only once that lease has lapsed and
 * nobody else claims it. An instance that finds its own id adopted asks for it
 * back (`wanted_by`); the adopter hands it over at its next renewal.
 */

import type pg from 'pg';

export interface Lease {
  readonly coordinatorId: string;
  readonly holder: string;
  readonly publicUrl: string;
  readonly epoch: string;
  readonly expiresAt: string;
  readonly expired: boolean;
  readonly wantedBy: string | null;
  /** Adopted, and nothing was left to do under it: nobody adopts it again until its own instance takes it. */
  readonly settled: boolean;
}

export interface Renewal {
  /** Ids whose lease was renewed, with who asks for it back (if anyone). */
  readonly renewed: Map<string, string | null>;
}

interface LeaseRow {
  coordinator_id: string;
  holder: string;
  public_url: string;
  epoch: string;
  expires_at: Date;
  expired: boolean;
  wanted_by: string | null;
  settled: boolean;
}

export class LeaseStore {
  readonly #pool: pg.Pool;
  readonly #leaseMs: number;

  constructor(pool: pg.Pool, leaseMs: number) {
    this.#pool = pool;
    this.#leaseMs = leaseMs;
  }

  /**
   * Takes the lease of `coordinatorId` for `holder` under a new epoch, or answers undefined.
   * `own`: the holder's own id — taken also while the holder itself still holds it (a restart, or
   * a duplicate process: `stillLiveMs` then says how long the earlier lease would have run, for
   * which the earlier process may still be calling participants). Another's id is taken only once
   * lapsed and unclaimed (a claim older than two leases is stale). Times are the database's
   * clock_timestamp(), so a wait for the row lock does not shorten the lease.
   */
  async acquire(coordinatorId: string, holder: string, publicUrl: string, own: boolean): Promise<{ epoch: string; stillLiveMs: number } | undefined> {
    const res = await this.#pool.query<{ epoch: string; still_live_ms: string | null }>(
      `WITH earlier AS (SELECT expires_at FROM tcx_lease WHERE coordinator_id = $1)
       INSERT INTO tcx_lease (coordinator_id, holder, public_url, epoch, expires_at, renewed_at)
       VALUES ($1, $2, $3, 1, clock_timestamp() + $4 * interval '1 millisecond', clock_timestamp())
       ON CONFLICT (coordinator_id) DO UPDATE
         SET holder = $2, public_url = $3, epoch = tcx_lease.epoch + 1,
             expires_at = clock_timestamp() + $4 * interval '1 millisecond', renewed_at = clock_timestamp(), wanted_by = NULL, wanted_at = NULL,
             settled = false
       WHERE ($5 AND tcx_lease.holder = $2)
          OR ($5 AND tcx_lease.expires_at <= clock_timestamp() AND tcx_lease.settled)
          OR (tcx_lease.expires_at <= clock_timestamp() AND NOT tcx_lease.settled
              AND (tcx_lease.wanted_by IS NULL OR tcx_lease.wanted_by = $2 OR tcx_lease.wanted_at < clock_timestamp() - 2 * $4 * interval '1 millisecond'))
       RETURNING epoch, (SELECT GREATEST(0, EXTRACT(EPOCH FROM (expires_at - clock_timestamp())) * 1000) FROM earlier) AS still_live_ms`,
      [coordinatorId, holder, publicUrl, this.#leaseMs, own],
    );
    const row = res.rows[0];
    return row === undefined ? undefined : { epoch: row.epoch, stillLiveMs: Math.ceil(Number(row.still_live_ms ?? 0)) };
  }

  /** Asks for `coordinatorId` back: its adopter hands it over, and no other instance adopts it meanwhile. */
  async claim(coordinatorId: string, holder: string): Promise<void> {
    await this.#pool.query('UPDATE tcx_lease SET wanted_by = $2, wanted_at = now() WHERE coordinator_id = $1 AND holder <> $2', [coordinatorId, holder]);
  }

  /** Extends every lease in `held` that `holder` still holds under that epoch and that has not lapsed. */
  async renew(holder: string, held: ReadonlyMap<string, string>): Promise<Renewal> {
    const ids = [...held.keys()];
    const epochs = ids.map((id) => held.get(id)!);
    const res = await this.#pool.query<{ coordinator_id: string; wanted_by: string | null }>(
      `UPDATE tcx_lease SET expires_at = clock_timestamp() + $2 * interval '1 millisecond', renewed_at = clock_timestamp()
       FROM unnest($3::text[], $4::bigint[]) AS mine(id, epoch)
       WHERE tcx_lease.coordinator_id = mine.id AND tcx_lease.epoch = mine.epoch AND tcx_lease.holder = $1 AND tcx_lease.expires_at > clock_timestamp()
       RETURNING tcx_lease.coordinator_id, tcx_lease.wanted_by`,
      [holder, this.#leaseMs, ids, epochs],
    );
    return { renewed: new Map(res.rows.map((r) => [r.coordinator_id, r.wanted_by])) };
  }

  /** Gives an adopted lease up for good: nothing is left to do under that id. */
  async settle(coordinatorId: string, holder: string, epoch: string): Promise<void> {
    await this.#pool.query('UPDATE tcx_lease SET expires_at = clock_timestamp(), settled = true WHERE coordinator_id = $1 AND holder = $2 AND epoch = $3', [
      coordinatorId,
      holder,
      epoch,
    ]);
  }

  /** Gives a lease up at once (it lapses now): a graceful stop, or a hand-over to whoever claimed it. */
  async release(coordinatorId: string, holder: string, epoch: string): Promise<void> {
    await this.#pool.query('UPDATE tcx_lease SET expires_at = now() WHERE coordinator_id = $1 AND holder = $2 AND epoch = $3', [coordinatorId, holder, epoch]);
  }

  async list(): Promise<Lease[]> {
    const res = await this.#pool.query<LeaseRow>(
      'SELECT coordinator_id, holder, public_url, epoch, expires_at, expires_at <= now() AS expired, wanted_by, settled FROM tcx_lease ORDER BY coordinator_id',
    );
    return res.rows.map((r) => ({
      coordinatorId: r.coordinator_id,
      holder: r.holder,
      publicUrl: r.public_url,
      epoch: r.epoch,
      expiresAt: r.expires_at.toISOString(),
      expired: r.expired,
      wantedBy: r.wanted_by,
      settled: r.settled,
    }));
  }
}
