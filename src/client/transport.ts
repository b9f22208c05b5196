/**
 * One HTTP exchange with the coordinator, over an undici Pool: a deadline on every attempt,
 * and retries with exponential backoff and full jitter where repeating cannot do harm.
 *
 * When a call is retried:
 *   - a connection that could not be opened (refused, connect timeout, no such host): for every
 *     call — the request never left, so nothing can have happened;
 *   - for idempotent calls only (GETs, and the POSTs the spec calls idempotent: prepare, commit,
 *     abort): also a connection that broke or an attempt that ran out of time, and a 503 that
 *     carries Retry-After (waiting at least that long, at most MAX_RETRY_AFTER_MS).
 * Anything else — a 4xx, a 5xx without Retry-After, a broken POST that may have begun a
 * transaction — is answered to the caller at once.
 */
import { Pool } from 'undici';
import { TcxApiError, TcxConnectionError, TcxResponseError } from './errors.js';
import type { ErrorCode } from './types.js';

export type Method = 'GET' | 'POST' | 'DELETE';

export interface TransportOptions {
  /** The coordinator's base URL (http or https; a path prefix is kept). */
  readonly url: string;
  readonly token?: string | undefined;
  /** Deadline of each attempt, from sending to the last byte of the answer. */
  readonly timeoutMs: number;
  /** Further attempts after the first, where a retry is allowed. */
  readonly retries: number;
}

export interface Exchange {
  readonly method: Method;
  /** Path below the base URL, its parameters already encoded. */
  readonly path: string;
  readonly query?: Readonly<Record<string, string | undefined>>;
  /** Sent as JSON; none when undefined. */
  readonly body?: unknown;
  /** Safe to repeat after it may have reached the coordinator. */
  readonly idempotent: boolean;
  /** Non-2xx statuses whose body is a regular answer (the 503 of /healthz). */
  readonly answerStatuses?: readonly number[];
}

export interface Answer {
  readonly status: number;
  readonly body: unknown;
}

const BACKOFF_BASE_MS = 100;
const BACKOFF_MAX_MS = 2_000;
const MAX_RETRY_AFTER_MS = 30_000;
const EXCERPT_CHARS = 200;
/** Errors raised before a request can have been sent. */
const CONNECT_FAILURES = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH', 'UND_ERR_CONNECT_TIMEOUT']);

type Attempt =
  | { readonly kind: 'answer'; readonly answer: Answer }
  | { readonly kind: 'error'; readonly error: TcxApiError | TcxResponseError; readonly retryAfterMs: number | undefined }
  | { readonly kind: 'failed'; readonly cause: unknown; readonly code: string | undefined; readonly timedOut: boolean; readonly connectFailed: boolean };

export class Transport {
  readonly #pool: Pool;
  readonly #prefix: string;
  readonly #origin: string;
  readonly #headers: Readonly<Record<string, string>>;
  readonly #token: string | undefined;
  readonly #timeoutMs: number;
  readonly #retries: number;

  constructor(options: TransportOptions) {
    const base = new URL(options.url);
    if (base.protocol !== 'http:' && base.protocol !== 'https:') throw new TypeError(`the coordinator URL must be http(s), not ${base.protocol}`);
    if (base.username !== '' || base.password !== '') throw new TypeError('the coordinator URL must not carry credentials: pass the token instead');
    if (base.search !== '' || base.hash !== '') throw new TypeError('the coordinator URL must not have a query or a fragment');
    if (!Number.isFinite(options.timeoutMs) || options.timeoutMs <= 0) throw new TypeError('timeoutMs must be a positive number');
    if (!Number.isInteger(options.retries) || options.retries < 0) throw new TypeError('retries must be a non-negative integer');
    this.#origin = base.origin;
    this.#prefix = base.pathname.replace(/\/+$/, '');
    this.#token = options.token === '' ? undefined : options.token;
    this.#timeoutMs = options.timeoutMs;
    this.#retries = options.retries;
    this.#headers = {
      accept: 'application/json',
      'user-agent': 'tcx-client',
      ...(this.#token === undefined ? {} : { authorization: `Bearer ${this.#token}` }),
    };
    this.#pool = new Pool(this.#origin, {
      connections: 16,
      connect: { timeout: Math.min(this.#timeoutMs, 10_000) },
      keepAliveTimeout: 4_000,
    });
  }

  async send(exchange: Exchange): Promise<Answer> {
    let sent = false;
    for (let attempt = 1; ; attempt++) {
      const result = await this.#attempt(exchange);
      const last = attempt > this.#retries;
      if (result.kind === 'answer') return result.answer;
      if (result.kind === 'error') {
        const retryAfter = result.retryAfterMs;
        if (last || !exchange.idempotent || retryAfter === undefined || retryAfter > MAX_RETRY_AFTER_MS) throw result.error;
        await sleep(Math.max(retryAfter, backoff(attempt)));
        continue;
      }
      sent ||= !result.connectFailed;
      if (last || !(result.connectFailed || exchange.idempotent)) {
        throw new TcxConnectionError({
          method: exchange.method,
          url: this.#origin + this.#prefix + exchange.path,
          timedOut: result.timedOut,
          causeCode: result.code,
          attempts: attempt,
          mayHaveTakenEffect: sent && exchange.method !== 'GET',
          reason: result.timedOut ? `no answer within ${this.#timeoutMs} ms` : this.#redact(describe(result.cause)),
          cause: result.cause,
        });
      }
      await sleep(backoff(attempt));
    }
  }

  async close(): Promise<void> {
    await this.#pool.close();
  }

  async #attempt(exchange: Exchange): Promise<Attempt> {
    const controller = new AbortController();
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      controller.abort(new Error(`no answer within ${this.#timeoutMs} ms`));
    }, this.#timeoutMs);
    try {
      const json = exchange.body === undefined ? undefined : JSON.stringify(exchange.body);
      const res = await this.#pool.request({
        method: exchange.method,
        path: this.#prefix + exchange.path + queryString(exchange.query),
        headers: json === undefined ? this.#headers : { ...this.#headers, 'content-type': 'application/json' },
        ...(json === undefined ? {} : { body: json }),
        // The timer above is the deadline (undici's own header and body timeouts are longer).
        signal: controller.signal,
      });
      const text = await res.body.text();
      return this.#interpret(exchange, res.statusCode, res.headers, text);
    } catch (err) {
      const code = errorCode(err);
      return { kind: 'failed', cause: err, code, timedOut, connectFailed: !timedOut && code !== undefined && CONNECT_FAILURES.has(code) };
    } finally {
      clearTimeout(timer);
    }
  }

  #interpret(exchange: Exchange, status: number, headers: Record<string, string | string[] | undefined>, text: string): Attempt {
    const success = status >= 200 && status < 300;
    const retryAfterMs = status === 503 ? parseRetryAfter(headers['retry-after']) : undefined;
    let body: unknown = undefined;
    if (text !== '') {
      try {
        body = JSON.parse(text);
      } catch (err) {
        const error = new TcxResponseError(status, `the answer (HTTP ${status}) is not JSON: is this the coordinator's URL?`, this.#excerpt(text), { cause: err });
        return { kind: 'error', error, retryAfterMs };
      }
    }
    const error = errorOf(body);
    // A listed non-2xx status is an answer unless it carries an error body instead.
    if (success || (error === undefined && body !== undefined && (exchange.answerStatuses?.includes(status) ?? false))) {
      return { kind: 'answer', answer: { status, body } };
    }
    if (error === undefined) {
      const failure = new TcxResponseError(status, `HTTP ${status} without an error body from the coordinator`, this.#excerpt(text));
      return { kind: 'error', error: failure, retryAfterMs };
    }
    const state = typeof (body as { state?: unknown }).state === 'string' ? (body as { state: string }).state : undefined;
    return {
      kind: 'error',
      error: new TcxApiError({ status, code: error.code, message: this.#redact(error.message), details: error.details, state, body, retryAfterMs }),
      retryAfterMs,
    };
  }

  #excerpt(text: string): string {
    return this.#redact(text.slice(0, EXCERPT_CHARS));
  }

  /** Belt and braces: the token never appears in a message, whatever produced it. */
  #redact(text: string): string {
    return this.#token === undefined ? text : text.split(this.#token).join('***');
  }
}

function errorOf(body: unknown): { code: ErrorCode; message: string; details: Record<string, unknown> | undefined } | undefined {
  if (typeof body !== 'object' || body === null) return undefined;
  const error = (body as { error?: unknown }).error;
  if (typeof error !== 'object' || error === null) return undefined;
  const { code, message, details } = error as { code?: unknown; message?: unknown; details?: unknown };
  if (typeof code !== 'string') return undefined;
  return {
    code: code as ErrorCode,
    message: typeof message === 'string' ? message : code,
    details: typeof details === 'object' && details !== null ? (details as Record<string, unknown>) : undefined,
  };
}

function queryString(query: Exchange['query']): string {
  if (query === undefined) return '';
  const params = new URLSearchParams();
  for (const [k, v] of Object.entries(query)) if (v !== undefined) params.set(k, v);
  const text = params.toString();
  return text === '' ? '' : `?${text}`;
}

/** Retry-After as delay-seconds or an HTTP date, in ms; undefined when absent or unreadable. */
export function parseRetryAfter(value: string | string[] | undefined, now = Date.now()): number | undefined {
  const raw = Array.isArray(value) ? value[0] : value;
  if (raw === undefined || raw.trim() === '') return undefined;
  if (/^\d+$/.test(raw.trim())) return Number(raw.trim()) * 1000;
  const at = Date.parse(raw);
  return Number.isNaN(at) ? undefined : Math.max(0, at - now);
}

/** Full jitter: uniform in [0, min(max, base·2^(attempt-1))]. */
export function backoff(attempt: number): number {
  return Math.random() * Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** (attempt - 1));
}

function errorCode(err: unknown): string | undefined {
  if (typeof err !== 'object' || err === null) return undefined;
  const code = (err as { code?: unknown }).code;
  if (typeof code === 'string') return code;
  // undici wraps some system errors (fetch-style) in `cause`.
  return errorCode((err as { cause?: unknown }).cause);
}

function describe(err: unknown): string {
  if (err instanceof AggregateError && err.errors.length > 0) return describe(err.errors[0]);
  const code = errorCode(err);
  const message = err instanceof Error ? err.message : String(err);
  return code !== undefined && !message.includes(code) ? `${code} ${message}` : message;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
