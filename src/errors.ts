/**
 * The error catalogue. Every error the coordinator reports carries a stable
 * machine-readable `code` and the HTTP status the API answers with. Messages
 * are for people; codes are for programs. Add new codes here only.
 */

export const ERROR_CATALOGUE = {
  VALIDATION_FAILED: { status: 400, message: 'The request is malformed' },
  UNAUTHORIZED: { status: 401, message: 'A valid bearer token is required' },
  FORBIDDEN: { status: 403, message: 'This operation needs an admin token' },
  PARTICIPANT_NOT_ALLOWED: { status: 403, message: 'The participant address is not on the allowlist' },
  UNKNOWN_PARTICIPANT: { status: 404, message: 'No participant is registered under that name' },
  PARTICIPANT_EXISTS: { status: 409, message: 'A participant with that name is already registered' },
  PARTICIPANT_IN_USE: { status: 409, message: 'The participant has unfinished branches' },
  PARTICIPANT_UNREACHABLE: { status: 422, message: 'The participant could not be reached' },
  PARTICIPANT_AUTH_FAILED: { status: 422, message: 'The participant refused the credentials' },
  PARTICIPANT_MISCONFIGURED: { status: 422, message: 'The participant cannot take part in two-phase commit' },
  UNKNOWN_TRANSACTION: { status: 404, message: 'No transaction with that id is known' },
  UNKNOWN_BRANCH: { status: 404, message: 'The transaction has no branch with that id' },
  INVALID_STATE_TRANSITION: { status: 409, message: 'The transaction is not in a state that allows this' },
  RESOLUTION_CONTRADICTS_LOG: { status: 409, message: 'The log holds a decision that contradicts this resolution' },
  TRANSACTION_ABORTED: { status: 409, message: 'The transaction was aborted' },
  OPERATION_FAILED: { status: 422, message: 'An operation of the branch failed' },
  LOG_UNAVAILABLE: { status: 503, message: 'The write-ahead log failed; the coordinator accepts no new commits' },
  SHUTTING_DOWN: { status: 503, message: 'The coordinator is shutting down' },
  OWNER_UNREACHABLE: { status: 503, message: 'The instance that runs this transaction could not be reached' },
  TOO_MANY_TRANSACTIONS: { status: 429, message: 'Too many active transactions' },
  QUOTA_EXCEEDED: { status: 429, message: "This token's quota of open transactions or begins per second is used up" },
  PARTICIPANT_BUSY: { status: 503, message: 'Every session to the participant is in use; retry shortly' },
  NOT_FOUND: { status: 404, message: 'No such route' },
  PAYLOAD_TOO_LARGE: { status: 413, message: 'The request body is too large' },
  UNSUPPORTED_MEDIA_TYPE: { status: 415, message: 'The request body must be application/json' },
  INTERNAL: { status: 500, message: 'Internal error' },
} as const;

export type ErrorCode = keyof typeof ERROR_CATALOGUE;

export class CoordinatorError extends Error {
  readonly code: ErrorCode;
  readonly status: number;
  readonly details: Record<string, unknown> | undefined;
  /** Answered as the Retry-After header: when trying again makes sense. */
  readonly retryAfterSeconds: number | undefined;

  constructor(code: ErrorCode, message?: string, options?: { cause?: unknown; details?: Record<string, unknown>; retryAfterSeconds?: number }) {
    super(message ?? ERROR_CATALOGUE[code].message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'CoordinatorError';
    this.code = code;
    this.status = ERROR_CATALOGUE[code].status;
    this.details = options?.details;
    this.retryAfterSeconds = options?.retryAfterSeconds;
  }

  toJSON(): { code: ErrorCode; message: string; details?: Record<string, unknown> } {
    return this.details === undefined
      ? { code: this.code, message: this.message }
      : { code: this.code, message: this.message, details: this.details };
  }
}

/** Raised by the write-ahead log once a write or fsync has failed: fail-stop. */
export class LogFailedError extends CoordinatorError {
  constructor(message: string, cause?: unknown) {
    super('LOG_UNAVAILABLE', message, { cause });
    this.name = 'LogFailedError';
  }
}

export function errorMessage(err: unknown): string {
  if (err instanceof Error) return err.message;
  return String(err);
}

/** What was thrown, as an Error (a thrown string or object becomes one with its text). */
export function asError(err: unknown): Error {
  return err instanceof Error ? err : new Error(String(err));
}
