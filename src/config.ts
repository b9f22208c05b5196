/**
 * Configuration from environment variables. Every setting has a default that
 * works on a laptop: `npm start` needs nothing else. The table in README.md
 * lists the same settings; keep them equal.
 */

export interface Config {
  readonly host: string;
  readonly port: number;
  readonly dataDir: string;
  /** A postgres:// URL: the write-ahead log lives in that database instead of dataDir. */
  readonly logUrl: string | undefined;
  /** With a Postgres log: how long a coordinator id's lease lasts unrenewed (renewed every third of it). */
  readonly leaseMs: number;
  /** With a Postgres log: how long start-up waits for the log database to answer (it may start after the coordinator, or be restarting). */
  readonly logWaitMs: number;
  readonly coordinatorId: string | undefined;
  readonly logLevel: string;
  /** json (default: one JSON object per line) or pretty (for a terminal, pino-pretty). */
  readonly logFormat: 'json' | 'pretty';
  /** When set: /metrics also on this port, without a token (for a Prometheus that reaches only it). 0: off. */
  readonly metricsPort: number;
  readonly defaultTimeoutMs: number;
  readonly maxTimeoutMs: number;
  readonly retentionMs: number;
  readonly maxRetainedTransactions: number;
  readonly recoveryIntervalMs: number;
  readonly maxActiveTransactions: number;
  /** Per API token: open transactions at once, and begins per second (0: no limit). */
  readonly tokenMaxActiveTransactions: number;
  readonly tokenBeginsPerSecond: number;
  readonly commitWaitMs: number;
  readonly participantTimeoutMs: number;
  readonly connectTimeoutMs: number;
  readonly statementTimeoutMs: number;
  readonly pgMaxSessions: number;
  readonly retryInitialMs: number;
  readonly retryMaxMs: number;
  readonly segmentMaxBytes: number;
  readonly failPoint: string | undefined;
  /** The URL participants use to reach this coordinator (3PC inquiries). */
  readonly publicUrl: string;
  readonly uncertainTimeoutMs: number;
  /** Bearer tokens for the API; admin tokens also unlock participant registration and manual resolution. */
  readonly apiTokens: readonly string[];
  readonly adminTokens: readonly string[];
  /** Hosts participants may live on: names, `*.suffix`, IPv4/IPv6 literals, IPv4 CIDRs, or `*`. */
  readonly participantHosts: readonly string[];
  readonly bodyLimitBytes: number;
}

export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

type Env = Readonly<Record<string, string | undefined>>;

function int(env: Env, name: string, fallback: number, min: number, max: number): number {
  const raw = env[name];
  if (raw === undefined || raw === '') return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new ConfigError(`${name} must be an integer between ${min} and ${max}, got ${JSON.stringify(raw)}`);
  }
  return value;
}

function list(raw: string | undefined): string[] {
  return (raw ?? '')
    .split(',')
    .map((x) => x.trim())
    .filter((x) => x !== '');
}

export function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host);
}

function logFormat(raw: string | undefined): 'json' | 'pretty' {
  if (raw === undefined || raw === '' || raw === 'json') return 'json';
  if (raw === 'pretty') return 'pretty';
  throw new ConfigError(`TCX_LOG_FORMAT must be json or pretty, got ${JSON.stringify(raw)}`);
}

function str(env: Env, name: string, fallback: string): string {
  const raw = env[name];
  return raw === undefined || raw === '' ? fallback : raw;
}

export function loadConfig(env: Env = process.env): Config {
  const retentionHours = int(env, 'TCX_RETENTION_HOURS', 24, 0, 24 * 365);
  let config: Config = {
    host: str(env, 'TCX_HOST', '127.0.0.1'),
    port: int(env, 'TCX_PORT', 7070, 0, 65535),
    dataDir: str(env, 'TCX_DATA_DIR', './data'),
    logUrl: env.TCX_LOG_URL === '' ? undefined : env.TCX_LOG_URL,
    leaseMs: int(env, 'TCX_LEASE_MS', 10_000, 300, 600_000),
    logWaitMs: int(env, 'TCX_LOG_WAIT_MS', 60_000, 0, 3_600_000),
    coordinatorId: env.TCX_COORDINATOR_ID === '' ? undefined : env.TCX_COORDINATOR_ID,
    logLevel: str(env, 'TCX_LOG_LEVEL', 'info'),
    logFormat: logFormat(env.TCX_LOG_FORMAT),
    metricsPort: int(env, 'TCX_METRICS_PORT', 0, 0, 65535),
    defaultTimeoutMs: int(env, 'TCX_DEFAULT_TIMEOUT_MS', 30_000, 100, 86_400_000),
    maxTimeoutMs: int(env, 'TCX_MAX_TIMEOUT_MS', 600_000, 100, 86_400_000),
    retentionMs: retentionHours * 3_600_000,
    maxRetainedTransactions: int(env, 'TCX_MAX_RETAINED_TRANSACTIONS', 1_000_000, 0, 100_000_000),
    recoveryIntervalMs: int(env, 'TCX_RECOVERY_INTERVAL_MS', 30_000, 100, 86_400_000),
    maxActiveTransactions: int(env, 'TCX_MAX_ACTIVE_TRANSACTIONS', 10_000, 1, 10_000_000),
    tokenMaxActiveTransactions: int(env, 'TCX_TOKEN_MAX_ACTIVE_TRANSACTIONS', 1_000, 1, 10_000_000),
    tokenBeginsPerSecond: int(env, 'TCX_TOKEN_BEGINS_PER_SECOND', 0, 0, 10_000_000),
    commitWaitMs: int(env, 'TCX_COMMIT_WAIT_MS', 5_000, 0, 600_000),
    participantTimeoutMs: int(env, 'TCX_PARTICIPANT_TIMEOUT_MS', 10_000, 10, 600_000),
    connectTimeoutMs: int(env, 'TCX_CONNECT_TIMEOUT_MS', 5_000, 10, 600_000),
    statementTimeoutMs: int(env, 'TCX_STATEMENT_TIMEOUT_MS', 30_000, 10, 3_600_000),
    pgMaxSessions: int(env, 'TCX_PG_MAX_SESSIONS', 50, 1, 10_000),
    retryInitialMs: int(env, 'TCX_RETRY_INITIAL_MS', 100, 1, 600_000),
    retryMaxMs: int(env, 'TCX_RETRY_MAX_MS', 10_000, 1, 3_600_000),
    segmentMaxBytes: int(env, 'TCX_SEGMENT_MAX_BYTES', 8 * 1024 * 1024, 4096, 2 ** 40),
    failPoint: env.TCX_FAIL_POINT === '' ? undefined : env.TCX_FAIL_POINT,
    publicUrl: '',
    uncertainTimeoutMs: int(env, 'TCX_UNCERTAIN_TIMEOUT_MS', 30_000, 100, 86_400_000),
    apiTokens: list(env.TCX_API_TOKENS),
    adminTokens: list(env.TCX_ADMIN_TOKENS),
    participantHosts: list(env.TCX_PARTICIPANT_HOSTS ?? 'localhost,127.0.0.0/8,::1'),
    bodyLimitBytes: int(env, 'TCX_BODY_LIMIT_BYTES', 1024 * 1024, 1024, 64 * 1024 * 1024),
  };
  for (const pattern of config.participantHosts) {
    const cidr = /^(\d{1,3}(?:\.\d{1,3}){3})\/(\d{1,3})$/.exec(pattern);
    const badCidr = cidr !== null && (Number(cidr[2]) > 32 || cidr[1]!.split('.').some((o) => Number(o) > 255));
    if (badCidr || pattern.includes('/') !== (cidr !== null) || /\s/.test(pattern)) {
      throw new ConfigError(`TCX_PARTICIPANT_HOSTS: ${JSON.stringify(pattern)} is not a host name, *.suffix, IP literal, IPv4 CIDR (a.b.c.d/0-32) or *`);
    }
  }
  for (const token of [...config.apiTokens, ...config.adminTokens]) {
    if (token.length < 16) throw new ConfigError('API and admin tokens must be at least 16 characters long');
  }
  if (!isLoopback(config.host) && config.apiTokens.length + config.adminTokens.length === 0) {
    throw new ConfigError(
      `TCX_HOST=${config.host} is not a loopback address: set at least one bearer token before listening there ` +
        '(TCX_API_TOKENS for clients, TCX_ADMIN_TOKENS for operators; with admin tokens alone, every call needs one)',
    );
  }
  if (config.logUrl !== undefined) {
    if (!/^postgres(ql)?:\/\//.test(config.logUrl)) throw new ConfigError('TCX_LOG_URL must be a postgres:// URL');
    if (config.coordinatorId === undefined) {
      throw new ConfigError('TCX_LOG_URL needs TCX_COORDINATOR_ID: records in a shared log database are kept per coordinator id');
    }
  }
  const publicUrl = env.TCX_PUBLIC_URL ?? '';
  if (publicUrl !== '' && !/^https?:\/\//.test(publicUrl)) throw new ConfigError('TCX_PUBLIC_URL must be an http(s) URL');
  const host = config.host === '0.0.0.0' || config.host === '::' ? '127.0.0.1' : config.host;
  config = { ...config, publicUrl: publicUrl === '' ? `http://${host.includes(':') ? `[${host}]` : host}:${config.port}` : publicUrl.replace(/\/+$/, '') };
  if (config.defaultTimeoutMs > config.maxTimeoutMs) {
    throw new ConfigError('TCX_DEFAULT_TIMEOUT_MS must not exceed TCX_MAX_TIMEOUT_MS');
  }
  if (config.retryInitialMs > config.retryMaxMs) throw new ConfigError('TCX_RETRY_INITIAL_MS must not exceed TCX_RETRY_MAX_MS');
  return Object.freeze(config);
}
