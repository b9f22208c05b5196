import { createRequire } from 'node:module';
import { destination as pinoDestination, pino, type DestinationStream, type Logger } from 'pino';
import type PinoPretty from 'pino-pretty';
import { pinoIsoTime } from './lib/iso-clock.js';

export type { Logger };

/** Paths redacted from every log line: connection strings and tokens never reach the logs. */
const REDACT_PATHS = [
  'connectionString',
  '*.connectionString',
  '*.*.connectionString',
  'password',
  '*.password',
  '*.*.password',
  'token',
  '*.token',
  '*.*.token',
  'auth',
  '*.auth',
  'req.headers.authorization',
];

/** The top-level paths of REDACT_PATHS: all a line of fixed, flat fields can hold. */
const FLAT_REDACT_PATHS = REDACT_PATHS.filter((p) => !p.includes('*') && !p.includes('.'));

/**
 * A logger for lines written once per transaction whose fields are flat and fixed by the
 * caller (ids, counts, an outcome, a reason string): top-level redaction only. Wildcard
 * paths cost about 10 µs a line, more than writing it.
 */
export function flatLineLogger(logger: Logger): Logger {
  return logger.child({}, { redact: { paths: FLAT_REDACT_PATHS, censor: '[redacted]' } });
}

/**
 * `destination` defaults to stdout (tests pass a stream to read every line written).
 * `format: 'pretty'` (TCX_LOG_FORMAT=pretty) writes coloured, readable lines with local
 * timestamps for a terminal (pino-pretty, in this thread: nothing is lost on exit); JSON
 * lines stay the default, for log collectors. Redaction applies to both.
 */
export function createLogger(options: { level?: string; name?: string; destination?: DestinationStream; format?: 'json' | 'pretty' } = {}): Logger {
  const pinoOptions = {
    name: options.name ?? 'tx-coordinator',
    level: options.level ?? process.env.TCX_LOG_LEVEL ?? 'info',
    redact: { paths: REDACT_PATHS, censor: '[redacted]' },
    // ISO 8601 UTC timestamps: readable as they are, and parsed by every log collector
    // (pino's isoTime, formatted once per millisecond).
    timestamp: pinoIsoTime,
  };
  const format = options.format ?? (process.env.TCX_LOG_FORMAT === 'pretty' ? 'pretty' : 'json');
  if (format === 'pretty') {
    const destination = options.destination ?? pinoDestination({ dest: 1, sync: true });
    // Loaded only for a terminal: JSON logging (production) never pays for it at start-up.
    const pretty = createRequire(import.meta.url)('pino-pretty') as typeof PinoPretty;
    return pino(pinoOptions, pretty({ destination, sync: true, colorize: process.stdout.isTTY, translateTime: 'SYS:yyyy-mm-dd HH:MM:ss.l', ignore: 'pid,hostname,name' }));
  }
  return options.destination === undefined ? pino(pinoOptions) : pino(pinoOptions, options.destination);
}

export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
