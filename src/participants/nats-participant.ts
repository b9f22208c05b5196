/**
 * NATS JetStream participant: messages published on commit. A branch's work is a list of
 * messages (nats-messages.ts); the coordinator keeps them in its own log (the branch's
 * record, written with the forced decision record) and hands them back with every call as
 * `BranchRef.payload`. The adapter keeps nothing between calls and the server holds no
 * prepared state at all:
 *
 *   enlist   validates the messages; nothing is sent. With `prepareAfter` it runs prepare's
 *            check and answers the vote.
 *   prepare  checks that the branch can be published: the server answers, JetStream is on,
 *            and for each subject a stream takes it (one that is not sealed and whose
 *            max_msg_size fits the message), and each message fits the server's max_payload.
 *            Yes, or no naming what is missing (e.g. the subject no stream takes). The yes is
 *            durable because the messages are: they sit in the coordinator's log from the
 *            decision record on (rule 1 holds on the coordinator's side; there is nothing to
 *            make durable on the server before the decision). 3PC: can-commit is this same
 *            check (the interface's default) and there is no pre-commit.
 *   commit   publishes the messages in order, each awaited, with JetStream
 *            (`js.publish(subject, data, { msgID, headers, timeout })`), msgID
 *            `<gid>:<index>` (gid `tcx:<coordinatorId>:<transactionId>:<branchNo>`). It
 *            throws unless every message got its PubAck (a PubAck flagged duplicate counts:
 *            the stream already holds it); the coordinator retries with backoff.
 *   abort    drops them: nothing was sent, nothing to undo. Always succeeds.
 *   recovery findPrepared returns []: nothing is ever prepared on the server, and a branch
 *            the log does not hold was never decided (presumed abort: nothing to publish).
 *
 * The guarantee, honestly: JetStream drops a message whose Nats-Msg-Id it saw within the
 * stream's duplicate window (default 2 minutes; the window survives a server restart), so a
 * commit delivered again — a retry after a lost PubAck, re-delivery by a coordinator that
 * crashed mid-commit — stores each message exactly once as long as it comes within the
 * window of the first publish. Past it (a coordinator down, or a server unreachable, for
 * longer than the window before re-delivering) it is at least once: consumers that must not
 * see a message twice should dedupe on the Nats-Msg-Id header, which stays on every message.
 * A PubAck means the stream has the message as it is configured to keep it: a memory stream
 * loses it on a server restart, a file stream with R1 and the default sync_interval can lose
 * the last seconds on a host crash (use replicas, or sync_interval: always). Prepare logs a
 * warning (and lists it in warnings()) for a memory stream or a duplicate window shorter
 * than 2 minutes. Consumers see a branch's messages only after the decision, but not
 * atomically: a commit that fails half way (e.g. a stream refusing a message at its limits)
 * has published the first ones and stays in doubt, retried, until the rest are stored.
 *
 * Connection: one per participant, opened on first use, reconnecting by itself (and reopened
 * when the client gave up). The URL is nats://[user:password@]host:port, or
 * nats://token@host:port for a token. Cluster updates from the server are ignored: the
 * adapter connects only to the address it was registered with (the allowlist checked it).
 * Every server request is bounded by requestTimeoutMs, the connect by connectTimeoutMs.
 */

import {
  connect,
  headers as natsHeaders,
  type JetStreamClient,
  type JetStreamManager,
  type NatsConnection,
  type StreamInfo,
  StorageType,
} from 'nats';
import type { Logger } from 'pino';
import { CoordinatorError, errorMessage } from '../errors.js';
import { withTimeout } from '../lib/with-timeout.js';
import { DEFAULT_MAX_PAYLOAD, MSG_ID_HEADER_BYTES, parseNatsMessages, type NatsMessage } from './nats-messages.js';
import type { BranchRef, EnlistOptions, EnlistResult, ParticipantAdapter, PrepareResult } from './participant.js';

export interface NatsParticipantOptions {
  readonly name: string;
  /** nats://[user:password@]host:port (nats://token@host:port: a token). */
  readonly url: string;
  readonly connectTimeoutMs: number;
  /** Bound of every request to the server (stream lookups, account info, each publish's PubAck). */
  readonly requestTimeoutMs: number;
  readonly logger: Logger;
}

interface Connection {
  readonly nc: NatsConnection;
  readonly js: JetStreamClient;
  readonly jsm: JetStreamManager;
}

/** A duplicate window shorter than this gets a warning. */
const SHORT_DUPLICATE_WINDOW_MS = 120_000;
const AUTH_CODES = new Set(['AUTHORIZATION_VIOLATION', 'BAD_AUTHENTICATION', 'AUTHENTICATION_EXPIRED', 'AUTHENTICATION_TIMEOUT', 'BAD_CREDS']);

export class NatsParticipant implements ParticipantAdapter {
  readonly kind = 'nats' as const;
  readonly work = 'messages' as const;
  readonly oneBranchPerStore = false;
  /**
   * True although nothing is listed: recovery has nothing to find on the server (no branch is
   * ever prepared there), and the messages live in the coordinator's log — in the branch's
   * record written with the forced decision record — so no forced record is needed before
   * prepare. A crash before the decision loses only messages nobody may publish (presumed abort).
   */
  readonly listsPreparedBranches = true;
  readonly name: string;
  readonly #options: NatsParticipantOptions;
  readonly #log: Logger;
  #connecting: Promise<Connection> | undefined;
  #maxPayload = DEFAULT_MAX_PAYLOAD;
  #closed = false;
  readonly #warnings = new Map<string, string>();

  constructor(options: NatsParticipantOptions) {
    this.name = options.name;
    this.#options = options;
    this.#log = options.logger.child({ participant: options.name });
  }

  /** Risks seen so far: streams of this participant's branches that keep messages in memory or dedupe briefly. */
  warnings(): string[] {
    return [...this.#warnings.values()];
  }

  async verify(): Promise<void> {
    const { nc, jsm } = await this.#connection();
    if (nc.info?.headers !== true) {
      throw new CoordinatorError('PARTICIPANT_MISCONFIGURED', `nats participant ${this.name}: the server does not support headers (needs nats-server 2.2 or later)`);
    }
    await this.#jetStreamOn(jsm);
  }

  validateWork(work: unknown): void {
    parseNatsMessages(work, this.#maxPayload);
  }

  async enlist(branch: BranchRef, work: unknown, _signal?: AbortSignal, options?: EnlistOptions): Promise<EnlistResult> {
    this.validateWork(work);
    if (options?.prepareAfter !== true) return {};
    return { vote: await this.#check(branch, work) };
  }

  async prepare(branch: BranchRef): Promise<PrepareResult> {
    return this.#check(branch, branch.payload);
  }

  async commit(branch: BranchRef): Promise<void> {
    const messages = this.#messagesOf(branch, 'commit');
    const { js } = await this.#connection();
    const timeout = this.#options.requestTimeoutMs;
    for (const [index, m] of messages.entries()) {
      const h = natsHeaders();
      for (const [k, v] of m.headers) h.set(k, v);
      try {
        await withTimeout(js.publish(m.subject, m.data, { msgID: `${branch.gid}:${index}`, headers: h, timeout }), timeout + 1_000, 'publish');
      } catch (err) {
        const failure = this.#publishFailure(index, m.subject, err);
        this.#log.warn({ branch: branch.branchId, index, code: failure.code, err: failure.message }, 'nats publish failed; the commit will be retried');
        throw failure;
      }
    }
  }

  /** Why a publish got no PubAck, as the error commit throws (the coordinator retries any of them). */
  #publishFailure(index: number, subject: string, err: unknown): CoordinatorError {
    const what = `commit on ${this.name}: message ${index} (${subject}) got no PubAck`;
    if (err instanceof CoordinatorError) return err;
    if (isAuthError(err)) return new CoordinatorError('PARTICIPANT_AUTH_FAILED', `${what}: the server refused the credentials: ${errorMessage(err)}`, { cause: err });
    const apiError = (err as { api_error?: { description?: unknown } }).api_error;
    if (apiError !== undefined) {
      // The stream answered and refused (its limits, a sealed stream): stays in doubt until an operator makes room.
      return new CoordinatorError('OPERATION_FAILED', `${what}: the stream refused it: ${String(apiError.description)}`, { cause: err });
    }
    if ((err as { code?: unknown }).code === '503') {
      return new CoordinatorError('PARTICIPANT_UNREACHABLE', `${what}: no JetStream stream answered (deleted since prepare, or JetStream unavailable)`, { cause: err });
    }
    return new CoordinatorError('PARTICIPANT_UNREACHABLE', `${what}: ${errorMessage(err)}`, { cause: err });
  }

  async abort(_branch: BranchRef): Promise<void> {
    // Nothing was sent: the messages are dropped with the branch.
  }

  async findPrepared(_gidPrefix: string): Promise<string[]> {
    return [];
  }

  openBranches(): number {
    return 0;
  }

  async close(): Promise<void> {
    this.#closed = true;
    const connecting = this.#connecting;
    this.#connecting = undefined;
    const conn = await connecting?.catch(() => undefined);
    if (conn === undefined || conn.nc.isClosed()) return;
    // Nothing is ever in flight for long (every publish is awaited): drain, bounded, then close.
    await withTimeout(conn.nc.drain(), this.#options.requestTimeoutMs, 'drain').catch(() => undefined);
    if (!conn.nc.isClosed()) await conn.nc.close().catch(() => undefined);
  }

  // ---- prepare's check ----

  /** Whether the messages can be published now; every failure is a no vote. */
  async #check(branch: BranchRef, work: unknown): Promise<PrepareResult> {
    let messages: NatsMessage[];
    try {
      messages = parseNatsMessages(work, Number.MAX_SAFE_INTEGER);
    } catch (err) {
      return { vote: 'no', reason: `branch ${branch.branchId} on ${this.name}: ${errorMessage(err)}` };
    }
    try {
      const { jsm } = await this.#connection();
      const problem = await withTimeout(this.#publishable(jsm, messages), this.#options.requestTimeoutMs + 1_000, 'prepare check');
      return problem === undefined ? { vote: 'yes' } : { vote: 'no', reason: `branch ${branch.branchId} on ${this.name}: ${problem}` };
    } catch (err) {
      return { vote: 'no', reason: `prepare on ${this.name} failed: ${errorMessage(err)}` };
    }
  }

  /** The first reason the messages cannot be published, or undefined. Throws when the server does not answer. */
  async #publishable(jsm: JetStreamManager, messages: readonly NatsMessage[]): Promise<string | undefined> {
    for (const [index, m] of messages.entries()) {
      if (m.size + MSG_ID_HEADER_BYTES > this.#maxPayload) return `message ${index} is ${m.size} bytes; the server's max_payload is ${this.#maxPayload}`;
    }
    const subjects = [...new Set(messages.map((m) => m.subject))];
    const found = await Promise.all(subjects.map(async (subject) => [subject, await this.#streamFor(jsm, subject)] as const));
    const missing = found.filter(([, stream]) => stream === undefined).map(([subject]) => subject);
    if (missing.length > 0) return `no JetStream stream takes subject${missing.length > 1 ? 's' : ''} ${missing.join(', ')}`;
    const streamOf = new Map(found as (readonly [string, string])[]);
    const names = [...new Set(streamOf.values())];
    const infos = new Map(await Promise.all(names.map(async (n) => [n, await jsm.streams.info(n)] as const)));
    for (const info of infos.values()) this.#noteRisks(info);
    for (const [index, m] of messages.entries()) {
      const info = infos.get(streamOf.get(m.subject) ?? '');
      if (info === undefined) continue;
      if (info.config.sealed) return `stream ${info.config.name} (subject ${m.subject}) is sealed`;
      const max = info.config.max_msg_size ?? -1;
      if (max > 0 && m.size + MSG_ID_HEADER_BYTES > max) return `message ${index} is ${m.size} bytes; stream ${info.config.name} takes at most ${max}`;
    }
    return undefined;
  }

  /** The stream that takes `subject`, or undefined when none does. */
  async #streamFor(jsm: JetStreamManager, subject: string): Promise<string | undefined> {
    try {
      return await jsm.streams.find(subject);
    } catch (err) {
      if (errorMessage(err) === 'no stream matches subject') return undefined;
      throw err;
    }
  }

  #noteRisks(info: StreamInfo): void {
    const name = info.config.name;
    const risks: string[] = [];
    if (info.config.storage === StorageType.Memory) risks.push('keeps its messages in memory (a server restart loses published messages)');
    const windowMs = (info.config.duplicate_window ?? 0) / 1e6;
    if (windowMs > 0 && windowMs < SHORT_DUPLICATE_WINDOW_MS) {
      risks.push(`has a duplicate window of ${Math.round(windowMs)} ms (a commit re-delivered later than that publishes again)`);
    }
    if (risks.length === 0) {
      this.#warnings.delete(name);
      return;
    }
    const warning = `nats participant ${this.name}: stream ${name} ${risks.join(' and ')}`;
    if (this.#warnings.get(name) === warning) return;
    this.#warnings.set(name, warning);
    this.#log.warn(warning);
  }

  #messagesOf(branch: BranchRef, what: string): NatsMessage[] {
    try {
      return parseNatsMessages(branch.payload, Number.MAX_SAFE_INTEGER);
    } catch (err) {
      // The log always hands the messages back: anything else is a bug, never a silent success.
      throw new CoordinatorError('INTERNAL', `${what} of branch ${branch.branchId} on ${this.name}: the branch's messages are missing or malformed: ${errorMessage(err)}`);
    }
  }

  async #jetStreamOn(jsm: JetStreamManager): Promise<void> {
    try {
      await withTimeout(jsm.getAccountInfo(), this.#options.requestTimeoutMs + 1_000, 'account info');
    } catch (err) {
      const code = (err as { code?: unknown }).code;
      if (code === '503' || /jetstream not enabled/i.test(errorMessage(err))) {
        throw new CoordinatorError(
          'PARTICIPANT_MISCONFIGURED',
          `nats participant ${this.name}: JetStream is not enabled for this server or account (start nats-server with -js, or enable it for the account)`,
          { cause: err },
        );
      }
      throw new CoordinatorError('PARTICIPANT_UNREACHABLE', `nats participant ${this.name}: JetStream account info failed: ${errorMessage(err)}`, { cause: err });
    }
  }

  // ---- connection ----

  async #connection(): Promise<Connection> {
    if (this.#closed) throw new CoordinatorError('SHUTTING_DOWN', `nats participant ${this.name} is closed`);
    const current = this.#connecting;
    if (current !== undefined) {
      const conn = await current;
      if (!conn.nc.isClosed()) return conn;
      if (this.#connecting === current) this.#connecting = undefined; // the client gave up: open a new one
    }
    this.#connecting ??= this.#open().catch((err: unknown) => {
      this.#connecting = undefined;
      throw err;
    });
    return this.#connecting;
  }

  async #open(): Promise<Connection> {
    const o = this.#options;
    const server = serverOptions(o.url, this.name);
    const connecting = connect({
      ...server,
      name: 'tx-coordinator',
      timeout: o.connectTimeoutMs,
      reconnect: true,
      maxReconnectAttempts: -1,
      reconnectTimeWait: 250,
      waitOnFirstConnect: false,
      ignoreClusterUpdates: true,
      noRandomize: true,
      pingInterval: 10_000,
      maxPingOut: 3,
    });
    let nc: NatsConnection;
    try {
      nc = await withTimeout(connecting, o.connectTimeoutMs + 1_000, 'connect');
    } catch (err) {
      // A connection that comes up after we gave up would reconnect forever, unused: close it.
      connecting.then((late) => late.close(), () => undefined).catch(() => undefined);
      if (isAuthError(err)) {
        throw new CoordinatorError('PARTICIPANT_AUTH_FAILED', `nats participant ${this.name} refused the credentials: ${errorMessage(err)}`, { cause: err });
      }
      throw new CoordinatorError('PARTICIPANT_UNREACHABLE', `cannot reach nats participant ${this.name}: ${errorMessage(err)}`, { cause: err });
    }
    if (this.#closed) {
      await nc.close().catch(() => undefined);
      throw new CoordinatorError('SHUTTING_DOWN', `nats participant ${this.name} is closed`);
    }
    this.#maxPayload = nc.info?.max_payload ?? DEFAULT_MAX_PAYLOAD;
    void this.#watch(nc);
    const opts = { timeout: o.requestTimeoutMs };
    return { nc, js: nc.jetstream(opts), jsm: await nc.jetstreamManager({ ...opts, checkAPI: false }) };
  }

  /** Logs the connection's ups and downs (once each) and keeps max_payload current. */
  async #watch(nc: NatsConnection): Promise<void> {
    let healthy = true;
    try {
      for await (const s of nc.status()) {
        if (s.type === 'disconnect' && healthy) {
          healthy = false;
          this.#log.warn('nats connection lost; reconnecting');
        } else if (s.type === 'reconnect') {
          healthy = true;
          this.#maxPayload = nc.info?.max_payload ?? this.#maxPayload;
          this.#log.info('nats connection restored');
        }
      }
    } catch {
      // the iterator ends with the connection
    }
    const err = await nc.closed();
    if (err !== undefined && !this.#closed) this.#log.warn({ err: errorMessage(err) }, 'nats connection closed; the next call reconnects');
  }
}

/** Connection options from the URL: the address, and user+password or a token from its user info. */
function serverOptions(url: string, name: string): { servers: string; user?: string; pass?: string; token?: string } {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new CoordinatorError('VALIDATION_FAILED', `nats participant ${name}: url must be nats://[user:password@]host:port`);
  }
  if (u.protocol !== 'nats:' || u.hostname === '') {
    throw new CoordinatorError('VALIDATION_FAILED', `nats participant ${name}: url must be nats://[user:password@]host:port`);
  }
  const servers = `${u.hostname}:${u.port === '' ? '4222' : u.port}`;
  if (u.username === '') return { servers };
  const user = decodeURIComponent(u.username);
  return u.password === '' && !url.includes(`${u.username}:@`) ? { servers, token: user } : { servers, user, pass: decodeURIComponent(u.password) };
}

function isAuthError(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' && AUTH_CODES.has(code);
}
