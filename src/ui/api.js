// The page's calls to the coordinator's own API — the only network traffic the dashboard makes.
// The operator's token is kept in sessionStorage (gone when the tab closes) and sent as
// `Authorization: Bearer …`. Every failure becomes an ApiError carrying the error catalogue's
// code (src/errors.ts) and the HTTP status; a 401 also tells the listeners, which ask for a token.

const TOKEN_KEY = 'tcx.dashboard.token';
const TIMEOUT_MS = 15000;

/** The coordinator's root, relative to the page (/ui/ → /), so a path prefix in front of it stays. */
const ROOT = new URL('../', document.baseURI);

export class ApiError extends Error {
  /**
   * @param {number} status HTTP status (0: no answer at all)
   * @param {string} code the catalogue code (NO_ANSWER when the coordinator did not answer)
   * @param {string} message
   * @param {unknown} [details]
   */
  constructor(status, code, message, details) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
    this.details = details;
  }
}

/** @type {Set<(err: ApiError, sent: string) => void>} */
const unauthorizedListeners = new Set();

/**
 * Calls `listener(err, sent)` whenever the API answers 401 (no token, or one it does not know);
 * `sent` is the token that call carried ('' for none): an answer to a token replaced meanwhile says
 * nothing about the current one.
 */
export function onUnauthorized(listener) {
  unauthorizedListeners.add(listener);
}

export function token() {
  try {
    return sessionStorage.getItem(TOKEN_KEY) ?? '';
  } catch {
    return '';
  }
}

export function setToken(value) {
  sessionStorage.setItem(TOKEN_KEY, value);
}

export function clearToken() {
  sessionStorage.removeItem(TOKEN_KEY);
}

/**
 * One API call. Resolves with the parsed JSON body for a 2xx answer (and for the statuses in
 * `accept`, e.g. the 503 of an unhealthy /healthz, whose body is still the health view); rejects
 * with an ApiError otherwise.
 * @param {'GET' | 'POST'} method
 * @param {string} path relative to the coordinator's root, e.g. 'v1/transactions?state=in-doubt'
 * @param {{ accept?: number[] }} [options]
 */
export async function api(method, path, options = {}) {
  const headers = { accept: 'application/json' };
  const bearer = token();
  if (bearer !== '') headers.authorization = `Bearer ${bearer}`;
  let res;
  try {
    res = await fetch(new URL(path, ROOT), { method, headers, cache: 'no-store', credentials: 'omit', signal: AbortSignal.timeout(TIMEOUT_MS) });
  } catch (err) {
    throw new ApiError(0, 'NO_ANSWER', `the coordinator did not answer (${err instanceof Error ? err.message : String(err)})`);
  }
  const text = await res.text();
  let body;
  try {
    body = text === '' ? undefined : JSON.parse(text);
  } catch {
    body = undefined;
  }
  if (res.ok || (options.accept ?? []).includes(res.status)) return body;
  const error = body !== null && typeof body === 'object' && typeof body.error === 'object' && body.error !== null ? body.error : {};
  const failure = new ApiError(
    res.status,
    typeof error.code === 'string' ? error.code : `HTTP_${res.status}`,
    typeof error.message === 'string' ? error.message : text.slice(0, 300) || res.statusText,
    error.details,
  );
  if (res.status === 401) for (const listener of unauthorizedListeners) listener(failure, bearer);
  throw failure;
}

/** A path segment, encoded. */
export const segment = (value) => encodeURIComponent(String(value));
