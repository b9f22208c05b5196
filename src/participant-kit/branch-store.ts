/**
 * Durable per-branch state for services that take part in transactions as
 * HTTP participants. A branch's "yes" must survive the service's own restart
 * (rule 1), so every change is written and fsynced before the handler answers.
 *
 * FileBranchStore appends one JSON line per change to a file and fsyncs it;
 * on open it replays the file (a torn last line is cut off), and when the file
 * holds many superseded lines it is compacted (temp file, fsync, rename, fsync
 * of the directory). A new file's directory entry is fsynced too. Any other
 * store (the service's own database, say) can implement BranchStore; `put`
 * must be durable when its promise resolves.
 *
 * Statuses:
 *   prepared      2PC: voted yes. 3PC: voted yes to can-commit (UNCERTAIN).
 *   precommitted  3PC: acknowledged pre-commit.
 *   committed / aborted / read-only   final (an abort of a branch never seen
 *                 is stored too, so a late prepare votes no).
 */

import fs from 'node:fs/promises';
import path from 'node:path';

export type BranchStatus = 'prepared' | 'precommitted' | 'committed' | 'aborted' | 'read-only';
export type BranchProtocol = '2pc' | '3pc';

export interface BranchEntry {
  readonly transactionId: string;
  readonly branchId: string;
  readonly status: BranchStatus;
  readonly payload: unknown;
  /** When the branch entered `status` (the 3PC timeouts run from here, also after a restart). */
  readonly updatedAt: string;
  /** Absent in entries written before 3PC existed: read as '2pc'. */
  readonly protocol?: BranchProtocol;
  /** 3PC: where to ask for the outcome on a timeout (GET {coordinatorUrl}/v1/transactions/{id}). */
  readonly coordinatorUrl?: string;
  /** The coordinator's gid for the branch (it names the coordinator id the answer must come from). */
  readonly gid?: string;
  /** 3PC: how long the branch may stay uncertain before it inquires. */
  readonly uncertainTimeoutMs?: number;
  /** Why the branch is in this status (a no vote's reason, a timeout's resolution, ...). */
  readonly reason?: string;
  /** Who moved the branch to a final status: the coordinator's message or the kit's own 3PC timeout. */
  readonly resolvedBy?: 'coordinator' | 'timeout';
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

async function fsyncDir(dir: string): Promise<void> {
  const handle = await fs.open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** Compact on open when the file holds more than this many lines per live entry (and at least 64 lines). */
const COMPACT_RATIO = 4;

export class FileBranchStore implements BranchStore {
  readonly #entries = new Map<string, BranchEntry>();
  readonly #file: fs.FileHandle;
  #queue: Promise<void> = Promise.resolve();
  #failed: Error | undefined;

  private constructor(file: fs.FileHandle) {
    this.#file = file;
  }

  static async open(filePath: string): Promise<FileBranchStore> {
    const dir = path.dirname(filePath);
    await fs.mkdir(dir, { recursive: true });
    let text: string | undefined;
    try {
      text = await fs.readFile(filePath, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
    const entries = new Map<string, BranchEntry>();
    let goodBytes = 0;
    let lines = 0;
    const all = (text ?? '').split('\n');
    for (const [index, line] of all.entries()) {
      if (line === '') continue;
      let entry: BranchEntry;
      try {
        entry = JSON.parse(line) as BranchEntry;
      } catch {
        // Only the last line can be torn by a crash mid-write; a bad line with good ones after
        // it is corruption, and dropping the rest would forget acknowledged votes.
        if (all.slice(index + 1).some((l) => l !== '')) {
          throw new Error(`${filePath}: line ${index + 1} is corrupt and later lines exist; refusing to guess`);
        }
        break;
      }
      entries.set(key(entry.transactionId, entry.branchId), entry);
      goodBytes += Buffer.byteLength(line) + 1;
      lines++;
    }
    if (text !== undefined && lines >= 64 && lines > COMPACT_RATIO * entries.size) {
      const tmp = `${filePath}.compact`;
      const out = await fs.open(tmp, 'w');
      try {
        await out.writeFile([...entries.values()].map((e) => `${JSON.stringify(e)}\n`).join(''));
        await out.sync();
      } finally {
        await out.close();
      }
      await fs.rename(tmp, filePath);
      await fsyncDir(dir);
    } else if (text !== undefined && goodBytes < Buffer.byteLength(text)) {
      await fs.truncate(filePath, goodBytes);
    }
    const file = await fs.open(filePath, 'a');
    if (text === undefined) {
      await file.sync();
      await fsyncDir(dir); // a new file's directory entry must be durable too
    }
    const store = new FileBranchStore(file);
    for (const [k, e] of entries) store.#entries.set(k, e);
    return store;
  }

  async get(transactionId: string, branchId: string): Promise<BranchEntry | undefined> {
    return this.#entries.get(key(transactionId, branchId));
  }

  put(entry: BranchEntry): Promise<void> {
    if (this.#failed !== undefined) return Promise.reject(this.#failed);
    const line = Buffer.from(`${JSON.stringify(entry)}\n`);
    const write = this.#queue.then(async () => {
      if (this.#failed !== undefined) throw this.#failed;
      try {
        let offset = 0;
        while (offset < line.length) offset += (await this.#file.write(line, offset, line.length - offset)).bytesWritten;
        await this.#file.datasync();
      } catch (err) {
        // Fail-stop: after a failed write the file may hold half a line; writing more after
        // it would bury it mid-file. Every later put is refused.
        this.#failed = err instanceof Error ? err : new Error(String(err));
        throw this.#failed;
      }
      // Visible to get()/list() only once durable: nobody acts on a state a crash could undo.
      this.#entries.set(key(entry.transactionId, entry.branchId), entry);
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
