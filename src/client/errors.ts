/**
 * What a call of the client can fail with:
 *
 * - `TcxApiError`: the coordinator answered with an error of its catalogue (`code`, HTTP
 *   `status`, `message`, `details`, and `state` when the error concerns a transaction). For a
 *   transaction that aborted (`TRANSACTION_ABORTED`), `body` is the transaction's view.
 * - `TcxResponseError`: something answered that is not the coordinator's API (a proxy's HTML
 *   page, a body that is not JSON).
 * - `TcxConnectionError`: no answer at all — cannot connect, the connection broke, or the call
 *   ran out of time. Whether a state change took effect is then unknown (`mayHaveTakenEffect`).
 *
 * No message, and no property, carries the bearer token.
 */
import type { ErrorCode } from './types.js';

/** Base class of every error the client raises. */
export class TcxError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'TcxError';
  }
}

export class TcxApiError extends TcxError {
  readonly status: number;
  readonly code: ErrorCode;
  readonly details: Readonly<Record<string, unknown>> | undefined;
  /** The transaction's state, when the error concerns one (e.g. `aborted`). */
  readonly state: string | undefined;
  /** The whole answer body (for TRANSACTION_ABORTED: the transaction's view plus `error`). */
  readonly body: unknown;
  /** The answer's Retry-After, in milliseconds, when it had one. */
  readonly retryAfterMs: number | undefined;

  constructor(init: {
    status: number;
    code: ErrorCode;
    message: string;
    details?: Record<string, unknown> | undefined;
    state?: string | undefined;
    body: unknown;
    retryAfterMs?: number | undefined;
  }) {
    super(init.message);
    this.name = 'TcxApiError';
    this.status = init.status;
    this.code = init.code;
    this.details = init.details;
    this.state = init.state;
    this.body = init.body;
    this.retryAfterMs = init.retryAfterMs;
  }
}

export class TcxResponseError extends TcxError {
  readonly status: number;
  /** The start of the answer's body, for diagnosis. */
  readonly bodyExcerpt: string;

  constructor(status: number, message: string, bodyExcerpt: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'TcxResponseError';
    this.status = status;
    this.bodyExcerpt = bodyExcerpt;
  }
}

export class TcxConnectionError extends TcxError {
  readonly method: string;
  /** The coordinator's URL and the request's path (no query, no credentials). */
  readonly url: string;
  /** The last attempt ran out of time (`timeoutMs`). */
  readonly timedOut: boolean;
  /** The system or undici error code of the last attempt (`ECONNREFUSED`, `UND_ERR_SOCKET`, …). */
  readonly causeCode: string | undefined;
  readonly attempts: number;
  /**
   * False when no attempt got as far as sending the request (every one failed to connect): then
   * nothing happened on the coordinator. True means a state change may or may not have happened.
   */
  readonly mayHaveTakenEffect: boolean;

  constructor(init: {
    method: string;
    url: string;
    timedOut: boolean;
    causeCode: string | undefined;
    attempts: number;
    mayHaveTakenEffect: boolean;
    reason: string;
    cause: unknown;
  }) {
    const what = init.timedOut ? 'no answer in time from' : 'cannot reach';
    const tries = init.attempts > 1 ? ` (${init.attempts} attempts)` : '';
    super(`${what} the coordinator: ${init.method} ${init.url}: ${init.reason}${tries}`, { cause: init.cause });
    this.name = 'TcxConnectionError';
    this.method = init.method;
    this.url = init.url;
    this.timedOut = init.timedOut;
    this.causeCode = init.causeCode;
    this.attempts = init.attempts;
    this.mayHaveTakenEffect = init.mayHaveTakenEffect;
  }
}
