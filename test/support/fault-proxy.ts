/**
 * A loopback TCP fault proxy, placed between the coordinator and one participant (Postgres,
 * Redis or an HTTP service): the coordinator is registered with the proxy's address, the
 * proxy forwards every connection to the real target, and a test turns faults on and off.
 *
 *   const proxy = await FaultProxy.start({ target: { host: '127.0.0.1', port: 5432 } });
 *   proxy.rewriteUrl('postgres://postgres@127.0.0.1:5432/bank')  // same URL, proxy port
 *   proxy.url()                                                   // http://127.0.0.1:<port>
 *
 * Faults (all may be combined; reset() clears them):
 *
 *   setDelay(ms)              every chunk, both directions, is delivered `ms` later (order kept)
 *   dropNewConnections(on)    new connections are accepted, then destroyed at once
 *   cutOpenConnections()      destroys every open connection pair now (both sides)
 *   blackhole(on)             new connections are accepted and read, never forwarded nor
 *                             answered; open pairs go silent too (bytes in both directions
 *                             are discarded). When the blackhole ends, every connection that
 *                             lost bytes (or was never forwarded) is destroyed: its byte
 *                             stream is no longer whole, so it must not carry anything more.
 *   cutReplies(match, n)      the next `n` times a request chunk matching `match` (text or
 *                             RegExp over the raw bytes, e.g. 'POST /commit' or
 *                             'COMMIT PREPARED') is answered, the answer is dropped and the
 *                             pair destroyed: the target did the work, the caller never hears.
 *
 * setTarget(t) sends new connections elsewhere (a participant restarted on another port);
 * counters() and state() tell what happened; close() ends everything.
 *
 * Bounded: at most `maxConnections` pairs (more are accepted and destroyed), an upstream
 * connect deadline, at most `maxQueuedBytes` held per direction by the delay (the sender is
 * paused beyond that), close() destroys everything. Listens on 127.0.0.1 only.
 */
import net from 'node:net';

export interface FaultProxyTarget {
  readonly host: string;
  readonly port: number;
}

export interface FaultProxyOptions {
  readonly target: FaultProxyTarget;
  /** For error messages and stats. */
  readonly name?: string;
  /** Open pairs at most; default 256. */
  readonly maxConnections?: number;
  /** Deadline of the upstream connect; default 5 s. */
  readonly connectTimeoutMs?: number;
  /** Bytes held back by the delay per direction before the sender is paused; default 4 MiB. */
  readonly maxQueuedBytes?: number;
}

export interface FaultProxyCounters {
  /** Client connections accepted (all of them, faulty or not). */
  accepted: number;
  /** Pairs whose upstream connection was established. */
  forwarded: number;
  /** Destroyed at accept by dropNewConnections. */
  dropped: number;
  /** Destroyed at accept because maxConnections pairs were open. */
  refused: number;
  /** Accepted while blackholed (never forwarded). */
  blackholed: number;
  /** Pairs destroyed by cutOpenConnections(), the end of a blackhole, or a reply cut. */
  cut: number;
  /** Replies dropped by cutReplies(). */
  repliesCut: number;
  /** Upstream connects that failed (target down, refused, deadline). */
  upstreamFailures: number;
  bytesUp: number;
  bytesDown: number;
  bytesDiscarded: number;
}

export interface FaultProxyState {
  readonly delayMs: number;
  readonly dropping: boolean;
  readonly blackholed: boolean;
  readonly pendingReplyCuts: number;
  readonly open: number;
}

interface ReplyCut {
  readonly match: string | RegExp;
  remaining: number;
}

const DEFAULT_MAX_CONNECTIONS = 256;
const DEFAULT_CONNECT_TIMEOUT_MS = 5_000;
const DEFAULT_MAX_QUEUED_BYTES = 4 * 1024 * 1024;
/** After one side closed, the other gets this long (plus the delay) to receive what is queued. */
const END_GRACE_MS = 1_000;
const CLOSE_TIMEOUT_MS = 5_000;

/** One direction of a pair: chunks from one socket to the other, with the delay applied. */
class Channel {
  readonly #queue: { at: number; chunk: Buffer }[] = [];
  #queuedBytes = 0;
  #timer: NodeJS.Timeout | undefined;
  #lastAt = 0;
  #ended = false;
  #pausedForQueue = false;
  #pausedForDrain = false;
  #stopped = false;

  constructor(
    private readonly from: () => net.Socket | undefined,
    private readonly to: () => net.Socket | undefined,
    private readonly maxQueuedBytes: number,
    private readonly onBytes: (n: number) => void,
  ) {}

  get queuedBytes(): number {
    return this.#queuedBytes;
  }

  /** Queues a chunk for delivery `delayMs` from now (never before an earlier chunk). */
  push(chunk: Buffer, delayMs: number): void {
    if (this.#stopped) return;
    const at = Math.max(Date.now() + delayMs, this.#lastAt);
    this.#lastAt = at;
    this.#queue.push({ at, chunk });
    this.#queuedBytes += chunk.length;
    if (this.#queuedBytes > this.maxQueuedBytes && !this.#pausedForQueue) {
      this.#pausedForQueue = true;
      this.from()?.pause();
    }
    this.flush();
  }

  /** The sender ended: end the receiver once everything queued is delivered. */
  end(): void {
    this.#ended = true;
    this.flush();
  }

  /** Delivers what is due (when the receiver is connected and not back-pressured). */
  flush(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    const to = this.to();
    if (this.#stopped || to === undefined || to.destroyed || to.connecting) return;
    const now = Date.now();
    while (this.#queue.length > 0 && !this.#pausedForDrain) {
      const head = this.#queue[0] as { at: number; chunk: Buffer };
      if (head.at > now) break;
      this.#queue.shift();
      this.#queuedBytes -= head.chunk.length;
      this.onBytes(head.chunk.length);
      if (!to.write(head.chunk)) {
        this.#pausedForDrain = true;
        to.once('drain', () => {
          this.#pausedForDrain = false;
          this.flush();
        });
      }
    }
    if (this.#pausedForQueue && this.#queuedBytes <= this.maxQueuedBytes / 2) {
      this.#pausedForQueue = false;
      this.from()?.resume();
    }
    const next = this.#queue[0];
    if (next !== undefined) {
      if (!this.#pausedForDrain) this.#timer = setTimeout(() => this.flush(), Math.max(0, next.at - Date.now()));
    } else if (this.#ended && !to.writableEnded) {
      to.end();
    }
  }

  /** Drops everything queued; returns how many bytes. */
  discard(): number {
    const n = this.#queuedBytes;
    this.#queue.length = 0;
    this.#queuedBytes = 0;
    if (this.#pausedForQueue) {
      this.#pausedForQueue = false;
      this.from()?.resume();
    }
    return n;
  }

  stop(): void {
    this.#stopped = true;
    clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#queue.length = 0;
    this.#queuedBytes = 0;
  }
}

class Pair {
  upstream: net.Socket | undefined;
  readonly up: Channel;
  readonly down: Channel;
  /** Bytes were discarded (blackhole) or the pair was never forwarded: it must not carry more. */
  broken = false;
  /** A request matching a reply-cut rule went up; the next answer is dropped. */
  armedCut: ReplyCut | undefined;
  destroyed = false;
  graceTimer: NodeJS.Timeout | undefined;

  constructor(
    readonly client: net.Socket,
    maxQueuedBytes: number,
    counters: FaultProxyCounters,
  ) {
    this.up = new Channel(() => this.client, () => this.upstream, maxQueuedBytes, (n) => (counters.bytesUp += n));
    this.down = new Channel(() => this.upstream, () => this.client, maxQueuedBytes, (n) => (counters.bytesDown += n));
  }

  destroy(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    clearTimeout(this.graceTimer);
    this.up.stop();
    this.down.stop();
    this.client.destroy();
    this.upstream?.destroy();
  }
}

function chunkMatches(chunk: Buffer, match: string | RegExp): boolean {
  const text = chunk.toString('latin1');
  return typeof match === 'string' ? text.includes(match) : match.test(text);
}

export class FaultProxy {
  readonly name: string;
  readonly host = '127.0.0.1';
  #target: FaultProxyTarget;
  readonly #server: net.Server;
  readonly #pairs = new Set<Pair>();
  readonly #maxConnections: number;
  readonly #connectTimeoutMs: number;
  readonly #maxQueuedBytes: number;
  readonly #counters: FaultProxyCounters = {
    accepted: 0,
    forwarded: 0,
    dropped: 0,
    refused: 0,
    blackholed: 0,
    cut: 0,
    repliesCut: 0,
    upstreamFailures: 0,
    bytesUp: 0,
    bytesDown: 0,
    bytesDiscarded: 0,
  };
  #port = 0;
  #delayMs = 0;
  #dropping = false;
  #blackholed = false;
  #replyCuts: ReplyCut[] = [];
  #closed = false;

  private constructor(options: FaultProxyOptions) {
    this.#target = { host: options.target.host, port: options.target.port };
    this.name = options.name ?? `proxy->${this.#target.host}:${this.#target.port}`;
    this.#maxConnections = options.maxConnections ?? DEFAULT_MAX_CONNECTIONS;
    this.#connectTimeoutMs = options.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
    this.#maxQueuedBytes = options.maxQueuedBytes ?? DEFAULT_MAX_QUEUED_BYTES;
    this.#server = net.createServer({ allowHalfOpen: false }, (socket) => this.#accept(socket));
    this.#server.on('error', () => undefined);
  }

  /** A proxy in front of the server a URL names (postgres://…, redis://…, http://…): its host and port. */
  static forUrl(url: string, options: Omit<FaultProxyOptions, 'target'> = {}): Promise<FaultProxy> {
    const { hostname, port } = new URL(url);
    return FaultProxy.start({ ...options, target: { host: hostname, port: Number(port) } });
  }

  /** Listens on 127.0.0.1 (a free port unless `port` is given) and forwards to `target`. */
  static async start(options: FaultProxyOptions & { readonly port?: number }): Promise<FaultProxy> {
    if (!Number.isInteger(options.target.port) || options.target.port <= 0 || options.target.port > 65535) {
      throw new Error(`FaultProxy: invalid target port ${String(options.target.port)}`);
    }
    const proxy = new FaultProxy(options);
    await new Promise<void>((resolve, reject) => {
      proxy.#server.once('error', reject);
      proxy.#server.listen({ host: '127.0.0.1', port: options.port ?? 0, exclusive: true }, () => {
        proxy.#server.off('error', reject);
        resolve();
      });
    });
    const address = proxy.#server.address();
    proxy.#port = typeof address === 'object' && address !== null ? address.port : 0;
    return proxy;
  }

  get port(): number {
    return this.#port;
  }

  get target(): FaultProxyTarget {
    return this.#target;
  }

  /** Where new connections go from now on (a participant that came back on another port); open pairs stay. */
  setTarget(target: FaultProxyTarget): void {
    if (!Number.isInteger(target.port) || target.port <= 0 || target.port > 65535) {
      throw new Error(`FaultProxy.setTarget: invalid port ${String(target.port)}`);
    }
    this.#target = { host: target.host, port: target.port };
  }

  /** host:port of the proxy. */
  get address(): string {
    return `${this.host}:${this.#port}`;
  }

  /** `<scheme>://127.0.0.1:<port><path>`, e.g. the baseUrl of an HTTP participant behind the proxy. */
  url(scheme = 'http', path = ''): string {
    return `${scheme}://${this.address}${path}`;
  }

  /** The same URL (scheme, credentials, path, query) with the proxy's host and port: postgres://, redis://, http://. */
  rewriteUrl(raw: string): string {
    const url = new URL(raw);
    url.hostname = this.host;
    url.port = String(this.#port);
    return url.toString();
  }

  // ---- faults ---------------------------------------------------------------------------

  setDelay(ms: number): void {
    if (!Number.isFinite(ms) || ms < 0 || ms > 600_000) throw new Error(`FaultProxy.setDelay: ${ms} is not within 0..600000 ms`);
    this.#delayMs = ms;
  }

  dropNewConnections(on: boolean): void {
    this.#dropping = on;
  }

  /** Destroys every open pair; returns how many. */
  cutOpenConnections(): number {
    let n = 0;
    for (const pair of [...this.#pairs]) {
      this.#destroyPair(pair, true);
      n++;
    }
    return n;
  }

  blackhole(on: boolean): void {
    if (on === this.#blackholed) return;
    this.#blackholed = on;
    if (on) {
      // Whatever the delay still holds is lost too.
      for (const pair of this.#pairs) {
        const lost = pair.up.discard() + pair.down.discard();
        if (lost > 0) {
          this.#counters.bytesDiscarded += lost;
          pair.broken = true;
        }
      }
      return;
    }
    for (const pair of [...this.#pairs]) if (pair.broken) this.#destroyPair(pair, true);
  }

  /** Drops the next `times` answers to requests whose bytes match `match` (and destroys those pairs). */
  cutReplies(match: string | RegExp, times = 1): void {
    if (!Number.isInteger(times) || times < 1 || times > 10_000) throw new Error(`FaultProxy.cutReplies: times must be 1..10000`);
    this.#replyCuts.push({ match, remaining: times });
  }

  /** Clears every fault (ending a blackhole destroys the pairs it broke); open healthy pairs stay. */
  reset(): void {
    this.#delayMs = 0;
    this.#dropping = false;
    this.#replyCuts = [];
    for (const pair of this.#pairs) pair.armedCut = undefined;
    this.blackhole(false);
  }

  counters(): FaultProxyCounters {
    return { ...this.#counters };
  }

  state(): FaultProxyState {
    return {
      delayMs: this.#delayMs,
      dropping: this.#dropping,
      blackholed: this.#blackholed,
      pendingReplyCuts: this.#replyCuts.reduce((s, r) => s + r.remaining, 0),
      open: this.#pairs.size,
    };
  }

  get openConnections(): number {
    return this.#pairs.size;
  }

  /** Stops listening and destroys every pair (bounded). */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const pair of [...this.#pairs]) this.#destroyPair(pair, false);
    await Promise.race([
      new Promise<void>((resolve) => this.#server.close(() => resolve())),
      new Promise<void>((resolve) => setTimeout(resolve, CLOSE_TIMEOUT_MS).unref()),
    ]);
  }

  // ---- plumbing -------------------------------------------------------------------------

  #destroyPair(pair: Pair, countAsCut: boolean): void {
    if (pair.destroyed) return;
    if (countAsCut) this.#counters.cut++;
    pair.destroy();
    this.#pairs.delete(pair);
  }

  #accept(client: net.Socket): void {
    this.#counters.accepted++;
    client.on('error', () => undefined);
    if (this.#closed) {
      client.destroy();
      return;
    }
    if (this.#dropping) {
      this.#counters.dropped++;
      client.destroy();
      return;
    }
    if (this.#pairs.size >= this.#maxConnections) {
      this.#counters.refused++;
      client.destroy();
      return;
    }
    client.setNoDelay(true);
    const pair = new Pair(client, this.#maxQueuedBytes, this.#counters);
    this.#pairs.add(pair);
    // One side closed: deliver what the delay still holds for the other side (bounded), then destroy the pair.
    const closeSoon = (towardsOther: Channel): void => {
      if (pair.destroyed) return;
      if (pair.broken || towardsOther.queuedBytes === 0) {
        this.#destroyPair(pair, false);
        return;
      }
      towardsOther.end();
      pair.graceTimer ??= setTimeout(() => this.#destroyPair(pair, false), this.#delayMs + END_GRACE_MS);
      pair.graceTimer.unref();
    };
    client.on('close', () => closeSoon(pair.up));

    if (this.#blackholed) {
      // Read and discard; never forwarded, never answered. Destroyed when the blackhole ends.
      this.#counters.blackholed++;
      pair.broken = true;
      client.on('data', (chunk: Buffer) => {
        this.#counters.bytesDiscarded += chunk.length;
      });
      return;
    }

    client.on('data', (chunk: Buffer) => {
      if (pair.destroyed) return;
      if (this.#blackholed) {
        this.#counters.bytesDiscarded += chunk.length;
        pair.broken = true;
        return;
      }
      if (pair.armedCut === undefined) {
        const rule = this.#replyCuts.find((r) => r.remaining > 0 && chunkMatches(chunk, r.match));
        if (rule !== undefined) pair.armedCut = rule;
      }
      pair.up.push(chunk, this.#delayMs);
    });
    client.on('end', () => pair.up.end());

    const upstream = net.connect({ host: this.#target.host, port: this.#target.port, allowHalfOpen: false });
    pair.upstream = upstream;
    let connected = false;
    const failed = (): void => {
      if (!connected && !pair.destroyed) this.#counters.upstreamFailures++;
      this.#destroyPair(pair, false);
    };
    const deadline = setTimeout(failed, this.#connectTimeoutMs);
    deadline.unref();
    upstream.on('error', failed);
    upstream.once('connect', () => {
      clearTimeout(deadline);
      connected = true;
      if (pair.destroyed) {
        upstream.destroy();
        return;
      }
      this.#counters.forwarded++;
      upstream.setNoDelay(true);
      pair.up.flush();
    });
    upstream.once('close', () => {
      clearTimeout(deadline);
      if (!connected) failed();
      else closeSoon(pair.down);
    });
    upstream.on('data', (chunk: Buffer) => {
      if (pair.destroyed) return;
      if (this.#blackholed) {
        this.#counters.bytesDiscarded += chunk.length;
        pair.broken = true;
        return;
      }
      const rule = pair.armedCut;
      if (rule !== undefined) {
        pair.armedCut = undefined;
        if (rule.remaining > 0) {
          rule.remaining--;
          this.#counters.repliesCut++;
          this.#counters.bytesDiscarded += chunk.length;
          this.#replyCuts = this.#replyCuts.filter((r) => r.remaining > 0);
          this.#destroyPair(pair, true);
          return;
        }
      }
      pair.down.push(chunk, this.#delayMs);
    });
    upstream.on('end', () => pair.down.end());
  }
}
