/**
 * One session per Postgres participant, held open for as long as it lasts. A backend that
 * started before a one-phase COMMIT and still runs proves that the server did not crash and
 * reinitialise since (the witness lostCommitOutcome looks for in pg_stat_activity). A role
 * without pg_read_all_stats sees only its own sessions there, and an idle coordinator's pool
 * may have closed them all: this one stays. Opened on first use, dropped when it breaks,
 * opened again by the next one-phase commit; it runs no statement of its own.
 */
import pg from 'pg';
import type { Logger } from 'pino';
import { errorMessage } from '../errors.js';

export class WitnessSession {
  readonly #config: pg.ClientConfig;
  readonly #log: Logger;
  #client: pg.Client | undefined;
  #opening: Promise<void> | undefined;
  #closed = false;

  constructor(config: pg.ClientConfig, log: Logger) {
    this.#config = { ...config, keepAlive: true };
    this.#log = log;
  }

  /** Opens it unless it is open or opening; never waits, never throws. */
  hold(): void {
    if (this.#closed || this.#client !== undefined || this.#opening !== undefined) return;
    const client = new pg.Client(this.#config);
    // A connection that breaks says so with 'error' (else the process would end): dropped, reopened later.
    client.on('error', () => {
      this.#drop(client);
      void client.end().catch(() => undefined);
    });
    client.on('end', () => this.#drop(client));
    this.#opening = client
      .connect()
      .then(
        () => {
          if (this.#closed) void client.end().catch(() => undefined);
          else this.#client = client;
        },
        (err: unknown) => {
          this.#log.debug({ err: errorMessage(err) }, 'could not open the witness session; the next one-phase commit tries again');
        },
      )
      .finally(() => {
        this.#opening = undefined;
      });
  }

  async close(): Promise<void> {
    this.#closed = true;
    await this.#opening;
    const client = this.#client;
    this.#client = undefined;
    await client?.end().catch(() => undefined);
  }

  #drop(client: pg.Client): void {
    if (this.#client === client) this.#client = undefined;
  }
}
