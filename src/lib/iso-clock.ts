/**
 * The current time as an ISO 8601 UTC string (`2026-12-04T18:30:21.123Z`), formatted once
 * per millisecond. A transaction stamps several times (created, each attempt, decided,
 * ended, every log line) and `new Date().toISOString()` costs more than the rest of the
 * stamping; within one millisecond every caller gets the same string, which is exactly what
 * formatting would give.
 */

let cachedMs = Number.NaN;
let cachedIso = '';

export function isoNow(): string {
  const ms = Date.now();
  if (ms !== cachedMs) {
    cachedIso = new Date(ms).toISOString();
    cachedMs = ms;
  }
  return cachedIso;
}

/** pino's `timestamp` option: its ISO time field, from the same clock. */
export function pinoIsoTime(): string {
  return `,"time":"${isoNow()}"`;
}
