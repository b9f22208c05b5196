/**
 * What every server the suite starts for itself has in common (Postgres, Redis, MariaDB,
 * NATS): one process group in a temp dir of its own on 127.0.0.1 and a free port, a log file,
 * a graceful stop, a crash (SIGKILL of the whole group), a restart on the same port and data,
 * and removal of everything — also when the test process exits without asking.
 *
 * A subclass says how to launch the server and wait until it answers (`launch`), where its log
 * is and which signal stops it gracefully.
 */
import { getFreePort } from './free-port.js';
import { logTail, registerCleanup, removeDirSync, sleep, type SpawnedProcess } from './spawned-process.js';

export abstract class SpawnedServer {
  readonly host = '127.0.0.1';
  protected proc: SpawnedProcess | undefined;
  readonly #unregister: () => void;
  #destroyed = false;
  #port: number;

  protected constructor(
    /** The class, for error messages ("RedisServer"). */
    readonly label: string,
    readonly name: string,
    /** Temp dir holding the server's data and log. */
    readonly dir: string,
    port: number,
    /** Stops it gracefully: the server flushes what it keeps and exits. */
    readonly stopSignal: NodeJS.Signals,
  ) {
    this.#port = port;
    this.#unregister = registerCleanup(() => {
      this.proc?.killGroupSync();
      removeDirSync(this.dir);
    });
  }

  abstract get logFile(): string;

  /** Starts the process on `port` and resolves once it answers (bounded); sets `proc`. */
  protected abstract launch(): Promise<void>;

  get port(): number {
    return this.#port;
  }

  /** Pid of the server's main process, or undefined when it is not running. */
  get pid(): number | undefined {
    return this.proc?.running ? this.proc.pid : undefined;
  }

  get running(): boolean {
    return this.proc?.running ?? false;
  }

  logTail(lines = 40): string {
    return logTail(this.logFile, lines);
  }

  /** Graceful shutdown with `stopSignal` (bounded: SIGKILL after 30 s). */
  async stop(): Promise<void> {
    const proc = this.proc;
    if (!proc) return;
    await proc.terminate(this.stopSignal, 30_000);
    this.proc = undefined;
  }

  /** Simulates a crash: SIGKILL the server and every process of its group. */
  async kill(): Promise<void> {
    const proc = this.proc;
    if (!proc) return;
    await proc.killGroup();
    this.proc = undefined;
  }

  /** Starts again on the same port and data (the server's crash recovery runs if it was killed). */
  async restart(): Promise<void> {
    if (this.#destroyed) throw new Error(`${this.label} ${this.name}: restart() after destroy()`);
    await this.stop();
    await this.launch();
  }

  async destroy(): Promise<void> {
    if (this.#destroyed) return;
    this.#destroyed = true;
    try {
      await this.stop();
    } finally {
      this.#unregister();
      removeDirSync(this.dir);
    }
  }

  /**
   * Runs `proc` as the server and waits, at most `ms`, until `probe` finds it answering: it
   * resolves true, or text saying why not yet (a throw counts as such text). Fails with the
   * log's tail when the process exits first or the time runs out, and kills it then.
   */
  protected async startProcess(proc: SpawnedProcess, probe: () => Promise<true | string>, ms: number): Promise<void> {
    this.proc = proc;
    const deadline = Date.now() + ms;
    let last = '';
    try {
      for (;;) {
        if (!proc.running) {
          throw new Error(`${this.label} ${this.name}: the server on port ${this.port} ${proc.describeExit()} before accepting connections; log ${this.logFile}:\n${this.logTail()}`);
        }
        try {
          const answer = await probe();
          if (answer === true) return;
          last = answer;
        } catch (err) {
          last = err instanceof Error ? err.message : String(err);
        }
        if (Date.now() > deadline) {
          throw new Error(`${this.label} ${this.name}: the server on port ${this.port} not ready within ${ms} ms (last: ${last}); log ${this.logFile}:\n${this.logTail()}`);
        }
        await sleep(25);
      }
    } catch (err) {
      await proc.killGroup().catch(() => undefined);
      this.proc = undefined;
      throw err;
    }
  }

  /**
   * The first launch. The free port may be taken between probing and binding: while the log
   * says so (`portTaken`), it tries again on a new free port (4 attempts). On failure the
   * server is destroyed and the error thrown.
   */
  protected async firstLaunch(portTaken: RegExp): Promise<void> {
    try {
      for (let attempt = 1; ; attempt++) {
        try {
          await this.launch();
          return;
        } catch (err) {
          if (attempt < 4 && portTaken.test(this.logTail(20))) {
            this.#port = await getFreePort();
            continue;
          }
          throw err;
        }
      }
    } catch (err) {
      await this.destroy().catch(() => undefined);
      throw err;
    }
  }
}
