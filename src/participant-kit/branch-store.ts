/**
 * Durable per-branch state for services that take part in transactions as
 * HTTP participants. A branch's "yes" must survive the service's own restart
 * (rule 1), so every change is written and fsynced before the handler answers.
 *
 * FileBranchStore appends one JSON line per change to a file and fsyncs it;
 * on open it replays the file (a torn last line is ignored). Any other store
 * (the service's own database, say) can implement BranchStore.
 */

import fs from 'node:fs/promises';
import path from 'node:path';

export type BranchStatus = 'prepared' | 'precommitted' | 'committed' | 'aborted' | 'read-only';

export interface BranchEntry {
  readonly transactionId: string;
  readonly branchId: string;
  readonly status: BranchStatus;
  readonly payload: unknown;
  readonly updatedAt: string;
}

export interface BranchStore {
  get(transactionId: string, branchId: string): Promise<BranchEntry | undefined>;
  /** Must be durable when the promise resolves. */
  put(entry: BranchEntry): Promise<void>;
  list(): Promise<BranchEntry[]>;
}

const key = (transactionId: string, branchId: string): string => `${transactionId}/${branchId}`;

export class MemoryBranchStore implements BranchStore {
  readonly #entries = new Map<string, BranchEntry>();
  async get(transactionId: string, branchId: string): Promise<BranchEntry | undefined> {
    return this.#entries.get(key(transactionId, branchId));
  }
  async put(entry: BranchEntry): Promise<void> {
    this.#entries.set(key(entry.transactionId, entry.branchId), entry);
  }
  async list(): Promise<BranchEntry[]> {
    return [...this.#entries.values()];
  }
}

export class FileBranchStore implements BranchStore {
  readonly #entries = new Map<string, BranchEntry>();
  readonly #file: fs.FileHandle;
  #queue: Promise<void> = Promise.resolve();

  private constructor(file: fs.FileHandle) {
    this.#file = file;
  }

  static async open(filePath: string): Promise<FileBranchStore> {
    await fs.mkdir(path.dirname(filePath), { recursive: true });
    let text = '';
    try {
      text = await fs.readFile(filePath, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
    const file = await fs.open(filePath, 'a');
    const store = new FileBranchStore(file);
    let good = 0;
    for (const line of text.split('\n')) {
      if (line === '') continue;
      try {
        const entry = JSON.parse(line) as BranchEntry;
        store.#entries.set(key(entry.transactionId, entry.branchId), entry);
        good += line.length + 1;
      } catch {
        break; // torn tail from a crash mid-write
      }
    }
    if (good < Buffer.byteLength(text)) await file.truncate(good);
    return store;
  }

  async get(transactionId: string, branchId: string): Promise<BranchEntry | undefined> {
    return this.#entries.get(key(transactionId, branchId));
  }

  put(entry: BranchEntry): Promise<void> {
    this.#entries.set(key(entry.transactionId, entry.branchId), entry);
    const line = `${JSON.stringify(entry)}\n`;
    const write = this.#queue.then(async () => {
      await this.#file.write(line);
      await this.#file.datasync();
    });
    this.#queue = write.catch(() => undefined);
    return write;
  }

  async list(): Promise<BranchEntry[]> {
    return [...this.#entries.values()];
  }

  async close(): Promise<void> {
    await this.#queue;
    await this.#file.close();
  }
}
