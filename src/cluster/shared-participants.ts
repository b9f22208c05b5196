/**
 * The participant registry all instances over one log share (table
 * tcx_participant): a participant registered through one instance is usable
 * through every one. Each instance still registers it in its own coordinator
 * id's log too (recovery of that id — by itself or by an adopter — needs the
 * connection details), after checking it from where it runs. A removal leaves a
 * tombstone, so that every instance removes it as well.
 */

import type pg from 'pg';
import type { Logger } from 'pino';
import { errorMessage } from '../errors.js';
import type { RegistrationRequest } from '../coordinator/participant-registry.js';

/** What the registry sync needs of a coordinator. */
export interface RegistryHolder {
  registrationOf(name: string): RegistrationRequest | undefined;
  registerHere(request: RegistrationRequest): Promise<unknown>;
  removeParticipant(name: string): Promise<void>;
}

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
  /** Registrations this instance could not take (unreachable from here, refused): when to try again. */
  readonly #retryAt = new Map<string, number>();

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

  /**
   * Takes every shared registration into `c` (its own log records it, after checking it from
   * here), re-registers one registered elsewhere with other details, and removes those removed
   * elsewhere. One that cannot be taken is tried again only after a while.
   */
  async syncInto(c: RegistryHolder, logger: Logger): Promise<void> {
    let entries;
    try {
      entries = await this.list();
    } catch (err) {
      logger.warn({ err: errorMessage(err) }, 'cluster: reading the shared participant registry failed');
      return;
    }
    const now = Date.now();
    for (const { request, removed } of entries) {
      if ((this.#retryAt.get(request.name) ?? 0) > now) continue;
      const here = c.registrationOf(request.name);
      // Removed, and re-registered with other details: the same name must mean the same store everywhere.
      const changed = !removed && here !== undefined && canonicalRegistration(here) !== canonicalRegistration(request);
      if (!changed && removed !== (here !== undefined)) continue;
      try {
        if (removed || changed) await c.removeParticipant(request.name);
        if (!removed) await c.registerHere(request);
        this.#retryAt.delete(request.name);
        logger.info({ participant: request.name, removed }, 'cluster: participant registry synchronised');
      } catch (err) {
        this.#retryAt.set(request.name, now + 30_000);
        logger.warn({ participant: request.name, removed, err: errorMessage(err) }, 'cluster: could not synchronise a participant; trying again later');
      }
    }
  }
}
