/**
 * The participant registry all instances over one log share (table
 * tcx_participant): a participant registered through one instance is usable
 * through every one. Each instance still registers it in its own coordinator
 * id's log too (recovery of that id — by itself or by an adopter — needs the
 * connection details), after checking it from where it runs. A removal leaves a
 * tombstone, so that every instance removes it as well.
 */

import type pg from 'pg';
import type { RegistrationRequest } from '../coordinator/participant-registry.js';

export interface SharedParticipant {
  readonly request: RegistrationRequest;
  readonly removed: boolean;
}

/** The registration in a fixed key order, so that two registrations of the same participant compare equal as text. */
export function canonicalRegistration(r: RegistrationRequest): string {
  return JSON.stringify({
    name: r.name,
    kind: r.kind,
    connectionString: r.connectionString,
    baseUrl: r.baseUrl,
    url: r.url,
    options: r.options,
    auth: r.auth,
  });
}

export class SharedParticipants {
  readonly #pool: pg.Pool;
  readonly #instance: string;

  constructor(pool: pg.Pool, instance: string) {
    this.#pool = pool;
    this.#instance = instance;
  }

  /** Publishes a registration; false when the name is taken by a different one. */
  async publish(request: RegistrationRequest): Promise<boolean> {
    const text = canonicalRegistration(request);
    const res = await this.#pool.query(
      `INSERT INTO tcx_participant (name, registration, registered_by, registered_at) VALUES ($1, $2, $3, now())
       ON CONFLICT (name) DO UPDATE SET registration = $2, registered_by = $3, registered_at = now(), removed_at = NULL
       WHERE tcx_participant.removed_at IS NOT NULL OR tcx_participant.registration = $2
       RETURNING name`,
      [request.name, text, this.#instance],
    );
    return res.rowCount === 1;
  }

  async withdraw(name: string): Promise<void> {
    await this.#pool.query('UPDATE tcx_participant SET removed_at = now() WHERE name = $1 AND removed_at IS NULL', [name]);
  }

  async list(): Promise<SharedParticipant[]> {
    const res = await this.#pool.query<{ registration: string; removed: boolean }>(
      'SELECT registration, removed_at IS NOT NULL AS removed FROM tcx_participant ORDER BY name',
    );
    return res.rows.map((r) => ({ request: JSON.parse(r.registration) as RegistrationRequest, removed: r.removed }));
  }
}
