import { pino, type DestinationStream, type Logger } from 'pino';

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

/** `destination` defaults to stdout (tests pass a stream to read every line written). */
export function createLogger(options: { level?: string; name?: string; destination?: DestinationStream } = {}): Logger {
  const pinoOptions = {
    name: options.name ?? 'tx-coordinator',
    level: options.level ?? process.env.TCX_LOG_LEVEL ?? 'info',
    redact: { paths: REDACT_PATHS, censor: '[redacted]' },
  };
  return options.destination === undefined ? pino(pinoOptions) : pino(pinoOptions, options.destination);
}

export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
