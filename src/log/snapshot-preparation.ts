/**
 * The slow part of a size-triggered compaction's snapshot, done beforehand while the log goes
 * on writing (the file log and the Postgres log share it).
 *
 * At the rotation point a compaction calls snapshot() synchronously, and every forced write
 * waits until the compaction is done; sealing tens of thousands of finished transactions
 * there held the event loop, and with it every transaction in flight, for a fifth of a second
 * under load. So when a compaction falls due the writer asks `ready()`: the first ask starts
 * the preparation (the owner's `prepareSnapshot`, which works in slices with the event loop
 * free) and answers false, and the writer goes on writing batches into the current segment;
 * when the preparation has run (or failed: the compaction then does all of the work, as
 * before) the writer is kicked and the next ask answers true. The snapshot's contract does not
 * change: it is still taken at the rotation point and holds everything appended before it.
 */
import type { Logger } from 'pino';
import { errorMessage } from '../errors.js';

export class SnapshotPreparation {
  #state: 'idle' | 'running' | 'ready' = 'idle';
  /** Bumped by every compaction: a preparation that was overtaken by one does not count as ready. */
  #generation = 0;
  readonly #prepare: (() => Promise<void>) | undefined;
  readonly #onReady: () => void;
  readonly #logger: Logger | undefined;

  constructor(prepare: (() => Promise<void>) | undefined, onReady: () => void, logger: Logger | undefined) {
    this.#prepare = prepare;
    this.#onReady = onReady;
    this.#logger = logger;
  }

  /** True when the compaction may run now; else the preparation is under way (started by this call, maybe). */
  ready(): boolean {
    const prepare = this.#prepare;
    if (prepare === undefined || this.#state === 'ready') return true;
    if (this.#state === 'idle') {
      this.#state = 'running';
      const generation = this.#generation;
      void Promise.resolve()
        .then(prepare)
        .catch((err: unknown) => this.#logger?.warn({ err: errorMessage(err) }, 'preparing the compaction snapshot failed; the compaction does all of it'))
        .finally(() => {
          if (generation !== this.#generation) return; // a compaction ran meanwhile: the next one prepares afresh
          this.#state = 'ready';
          this.#onReady();
        });
    }
    return false;
  }

  /** A compaction ran (on demand, maybe while a preparation was under way): the next one prepares afresh. */
  used(): void {
    this.#generation++;
    this.#state = 'idle';
  }
}
