/**
 * HTTP participant: a remote service that implements the participant side of
 * the protocol. Every call is `POST {baseUrl}/<verb>` (the verb after the base URL's path,
 * its query string after the verb) with the JSON body
 * `{ transactionId, branchId, gid, payload }`.
 *
 *   prepare  2xx with `{"vote":"yes"|"no"|"read-only"}` — anything else
 *            (non-2xx, unreadable body, timeout) counts as a no
 *   commit   2xx = acknowledged; anything else is retried by the caller
 *   abort    2xx = acknowledged; anything else is retried by the caller
 *
 * 3PC adds `can-commit` (a vote, like prepare: the durable yes) and
 * `pre-commit` (2xx = acknowledged); `commit` is the do-commit. The body then
 * also carries `protocol: "3pc"`, `coordinatorUrl` and `uncertainTimeoutMs` so
 * the service can run the 3PC timeouts and ask for the outcome.
 *
 * The coordinator logs an HTTP branch (forced) before its prepare is sent, so
 * recovery always knows whom to tell the outcome. `findPrepared` returns []:
 * a service cannot be asked what it prepared; the log is the source.
 */

import { Pool } from 'undici';
import { CoordinatorError, errorMessage } from '../errors.js';
import type { ParticipantAuth } from '../log/log-records.js';
import type { BranchRef, EnlistResult, ParticipantAdapter, PrepareResult } from './participant.js';
import { readBounded } from '../lib/read-bounded.js';

export interface HttpParticipantOptions {
  readonly name: string;
  readonly baseUrl: string;
  /** Sent as the Authorization header of every call. A user:password in baseUrl counts as basic. */
  readonly auth?: ParticipantAuth;
  readonly requestTimeoutMs: number;
  readonly connectTimeoutMs: number;
  /** Where a 3PC participant asks for the outcome when it times out (GET {coordinatorUrl}/v1/transactions/{id}). */
  readonly coordinatorUrl?: string;
  /** How long a 3PC participant may stay uncertain (voted yes, no pre-commit) before it inquires. */
  readonly uncertainTimeoutMs?: number;
}

export const MAX_PAYLOAD_BYTES = 256 * 1024;

type Verb = 'prepare' | 'commit' | 'abort' | 'can-commit' | 'pre-commit';

interface HttpAnswer {
  readonly status: number;
  readonly body: unknown;
}

export class HttpParticipant implements ParticipantAdapter {
  readonly kind = 'http' as const;
  readonly work = 'payload' as const;
  readonly oneBranchPerStore = false;
  readonly listsPreparedBranches = false;
  readonly name: string;
  readonly #baseUrl: string;
  /** The base URL's path, without a trailing slash: each verb's path is this plus `/<verb>` (and the base URL's query). */
  readonly #basePath: string;
  readonly #query: string;
  readonly #headers: Record<string, string>;
  /** One keep-alive pool to the service's origin (its calls skip parsing a URL and finding a pool each time). */
  readonly #pool: Pool;
  readonly #options: HttpParticipantOptions;

  constructor(options: HttpParticipantOptions) {
    this.name = options.name;
    this.#options = options;
    // Credentials travel in the Authorization header, never in the request line.
    const url = new URL(options.baseUrl);
    const auth: ParticipantAuth | undefined =
      options.auth ?? (url.username === '' ? undefined : { type: 'basic', username: decodeURIComponent(url.username), password: decodeURIComponent(url.password) });
    url.username = '';
    url.password = '';
    this.#baseUrl = url.toString().replace(/\/+$/, '');
    this.#headers = {
      'content-type': 'application/json',
      ...(auth === undefined ? {} : { authorization: authorizationHeader(auth) }),
    };
    this.#basePath = url.pathname.replace(/\/+$/, '');
    this.#query = url.search;
    this.#pool = new Pool(url.origin, {
      connect: { timeout: options.connectTimeoutMs },
      headersTimeout: options.requestTimeoutMs,
      bodyTimeout: options.requestTimeoutMs,
      keepAliveTimeout: 10_000,
    });
  }

  async verify(): Promise<void> {
    // A service need not answer anything but the protocol verbs; only check that it is a URL we can use.
    const url = new URL(this.#baseUrl);
    if (url.protocol !== 'http:' && url.protocol !== 'https:') {
      throw new CoordinatorError('VALIDATION_FAILED', `baseUrl must be http or https, got ${url.protocol}`);
    }
  }

  validateWork(work: unknown): void {
    if (work === undefined) throw new CoordinatorError('VALIDATION_FAILED', 'an http branch needs a payload');
    if (Buffer.byteLength(JSON.stringify(work)) > MAX_PAYLOAD_BYTES) {
      throw new CoordinatorError('VALIDATION_FAILED', `payload larger than ${MAX_PAYLOAD_BYTES} bytes`);
    }
  }

  async enlist(_branch: BranchRef, work: unknown): Promise<EnlistResult> {
    this.validateWork(work);
    return {};
  }

  async prepare(branch: BranchRef): Promise<PrepareResult> {
    return this.vote('prepare', branch);
  }

  async canCommit(branch: BranchRef): Promise<PrepareResult> {
    return this.vote('can-commit', branch);
  }

  async preCommit(branch: BranchRef): Promise<void> {
    await this.acknowledge('pre-commit', branch);
  }

  /** Asks for a vote; every failure is a no. Also used for the 3PC can-commit round. */
  async vote(verb: 'prepare' | 'can-commit', branch: BranchRef): Promise<PrepareResult> {
    let answer: HttpAnswer;
    try {
      answer = await this.#call(verb, branch);
    } catch (err) {
      return { vote: 'no', reason: `${verb} to ${this.name} failed: ${errorMessage(err)}` };
    }
    const vote = (answer.body as { vote?: unknown } | null)?.vote;
    if (answer.status >= 200 && answer.status < 300 && (vote === 'yes' || vote === 'no' || vote === 'read-only')) {
      const reason = (answer.body as { reason?: unknown }).reason;
      return vote === 'no' ? { vote, reason: typeof reason === 'string' ? reason : `${this.name} voted no` } : { vote };
    }
    return { vote: 'no', reason: `${verb} to ${this.name} answered ${answer.status} without a valid vote` };
  }

  async commit(branch: BranchRef): Promise<void> {
    await this.acknowledge('commit', branch);
  }

  async abort(branch: BranchRef): Promise<void> {
    await this.acknowledge('abort', branch);
  }

  /** Delivers a decision; throws unless the service answers 2xx. */
  async acknowledge(verb: 'commit' | 'abort' | 'pre-commit', branch: BranchRef): Promise<void> {
    const answer = await this.#call(verb, branch);
    if (answer.status < 200 || answer.status >= 300) {
      throw new Error(`${verb} to ${this.name} answered ${answer.status}`);
    }
  }

  async findPrepared(): Promise<string[]> {
    return [];
  }

  openBranches(): number {
    return 0;
  }

  async close(): Promise<void> {
    await this.#pool.close();
  }

  async #call(verb: Verb, branch: BranchRef): Promise<HttpAnswer> {
    // Bounded without a timer per call: the pool's connect and headers timeouts bound the
    // request, and the deadline (with the pool's idle timeout between chunks) the answer.
    const deadline = Date.now() + this.#options.requestTimeoutMs;
    const res = await this.#pool.request({
      method: 'POST',
      path: `${this.#basePath}/${verb}${this.#query}`,
      headers: this.#headers,
      body: JSON.stringify({
        transactionId: branch.transactionId,
        branchId: branch.branchId,
        gid: branch.gid,
        payload: branch.payload ?? null,
        protocol: branch.protocol ?? '2pc',
        ...(this.#options.coordinatorUrl === undefined ? {} : { coordinatorUrl: this.#options.coordinatorUrl }),
        ...(this.#options.uncertainTimeoutMs === undefined ? {} : { uncertainTimeoutMs: this.#options.uncertainTimeoutMs }),
      }),
    });
    const text = await readBounded(res.body, MAX_ANSWER_BYTES, deadline);
    let body: unknown = null;
    if (text !== '') {
      try {
        body = JSON.parse(text);
      } catch {
        body = null;
      }
    }
    return { status: res.statusCode, body };
  }
}

function authorizationHeader(auth: ParticipantAuth): string {
  return auth.type === 'bearer' ? `Bearer ${auth.token}` : `Basic ${Buffer.from(`${auth.username}:${auth.password}`).toString('base64')}`;
}

/** A participant's answer is a small JSON document; anything larger is cut off and ignored. */
const MAX_ANSWER_BYTES = 64 * 1024;

