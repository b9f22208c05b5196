import { pino, type Logger } from 'pino';

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

export function createLogger(options: { level?: string; name?: string } = {}): Logger {
  return pino({
    name: options.name ?? 'tx-coordinator',
    level: options.level ?? process.env.TCX_LOG_LEVEL ?? 'info',
    redact: { paths: REDACT_PATHS, censor: '[redacted]' },
  });
}

export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
