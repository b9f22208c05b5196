/**
 * What a participant address may look like, checked strictly before anything else looks at
 * it (the allowlist, the drivers). Loose forms are how checks get bypassed and secrets leak:
 * a password with an unencoded `@` or `#` makes every parser find a different "host" — a
 * piece of the password, which an error message would then echo.
 *
 *   - a URL of the kind's schemes, with a host, without a fragment, with at most one `@`
 *     (user name and password validly percent-encoded: a stray `%` makes the drivers throw);
 *   - postgres: only the query parameters below (hosts, port, TLS mode, connect deadline);
 *     none that read files on the coordinator's host, none that change session settings
 *     (`options`, `statement_timeout`, …): the coordinator sets those itself; TCP only —
 *     no host that is a Unix socket directory (`host=/tmp`, `%2Ftmp`), where a local server
 *     would take the coordinator's own OS user as the login (peer authentication);
 *   - redis: TCP host:port (and a database number) only — no query, so no `?path=` to a
 *     Unix socket and no client options smuggled in;
 *   - mysql: host, port and database only — no query (mysql2 would read client options there);
 *   - nats: host and port (credentials in the user info) only;
 *   - http: anything else is the service's business; secret-looking query values and the
 *     password are redacted in every view (better: the `auth` field, never shown).
 *
 * Error messages name parameters and schemes, never a piece of the address.
 */

import { parse as parsePgConnectionString } from 'pg-connection-string';
import { CoordinatorError } from '../errors.js';

/** The registration fields that can hold a participant's address (each kind names its own). */
export type AddressField = 'connectionString' | 'baseUrl' | 'url';
export const ADDRESS_FIELDS: readonly AddressField[] = ['connectionString', 'baseUrl', 'url'];

/** What one kind accepts beyond the checks every address gets: its schemes and its own rules. */
export interface AddressRules {
  readonly schemes: readonly string[];
  /** Throws VALIDATION_FAILED (naming parameters, never pieces of the address). */
  check(field: string, address: string, url: URL): void;
}

/** libpq parameters that make the client read files on the coordinator's host. */
const FILE_PARAMETERS = /^(sslrootcert|sslcert|sslkey|sslpassword|sslcrl|sslcrldir|passfile|service|servicefile)$/i;
/** Postgres URL parameters accepted: where to connect and how; nothing that changes the session. */
const POSTGRES_PARAMETERS = new Set(['host', 'hostaddr', 'port', 'sslmode', 'ssl', 'connect_timeout', 'target_session_attrs', 'keepalives', 'keepalives_idle']);

function invalid(field: string, message: string): CoordinatorError {
  return new CoordinatorError('VALIDATION_FAILED', `${field} ${message}`);
}

export const POSTGRES_ADDRESS: AddressRules = {
  schemes: ['postgres:', 'postgresql:'],
  check(field, address, url) {
    for (const key of new Set(url.searchParams.keys())) {
      if (FILE_PARAMETERS.test(key)) {
        throw invalid(field, `parameter ${key} concerns files on the coordinator's host (keys, certificates, password or service files); it is not accepted`);
      }
      // As spelled: the driver reads `host`, not `HOST` (which the allowlist would not see either).
      if (!POSTGRES_PARAMETERS.has(key)) {
        throw invalid(field, `parameter ${safeName(key)} is not accepted: the coordinator sets the session's options and timeouts itself`);
      }
    }
    if (postgresHosts(field, address, url).some((h) => h.includes('/'))) {
      throw invalid(field, 'must connect over TCP: a Unix socket directory as host is not accepted');
    }
  },
};

export const REDIS_ADDRESS: AddressRules = {
  schemes: ['redis:', 'rediss:'],
  check(field, _address, url) {
    if ([...url.searchParams.keys()].length > 0) throw invalid(field, 'must be redis://host:port/db without query parameters (no Unix sockets, no client options)');
    if (!/^(\/\d{0,2})?$/.test(url.pathname)) throw invalid(field, 'may name only a database number as its path (redis://host:port/0)');
  },
};

export const HTTP_ADDRESS: AddressRules = {
  schemes: ['http:', 'https:'],
  check(field, _address, url) {
    // Basic credentials need a user name: a password alone would silently go unsent.
    if (url.username === '' && url.password !== '') throw invalid(field, 'has a password but no user name: use auth {type: "bearer", token} for a token');
  },
};

/**
 * mysql2 reads client options from the query (`multipleStatements`, `socketPath`, `flags`,
 * local-infile…): none is accepted; the adapter sets its own. The path names the database.
 */
export const MYSQL_ADDRESS: AddressRules = {
  schemes: ['mysql:'],
  check(field, _address, url) {
    if ([...url.searchParams.keys()].length > 0) throw invalid(field, 'must be mysql://user:password@host:port/database without query parameters (the coordinator sets the client options)');
    if (!/^\/[A-Za-z0-9_$-]{1,64}$/.test(url.pathname)) throw invalid(field, 'must name a database as its path (mysql://user:password@host:port/database)');
  },
};

export const NATS_ADDRESS: AddressRules = {
  schemes: ['nats:'],
  check(field, _address, url) {
    if ([...url.searchParams.keys()].length > 0 || !/^\/?$/.test(url.pathname)) {
      throw invalid(field, 'must be nats://[user:password@]host:port without a path or query parameters');
    }
  },
};

/** Checks the address of a participant whose kind has `rules`; returns it parsed. Throws 400 without echoing it. */
export function checkParticipantAddress(rules: AddressRules, field: string, address: string): URL {
  const { schemes } = rules;
  if (!URL.canParse(address)) throw invalid(field, `must be a ${schemes.join(' or ')} URL`);
  const url = new URL(address);
  if (!schemes.includes(url.protocol)) throw invalid(field, `must be a ${schemes.join(' or ')} URL`);
  const rest = address.slice(address.indexOf(':') + 1);
  if (!rest.startsWith('//')) throw invalid(field, 'must name a host (scheme://host:port/…)');
  if (address.includes('#')) {
    throw invalid(field, 'must not contain "#": percent-encode it (%23) in a user name or password');
  }
  const authority = rest.slice(2).split(/[/?]/, 1)[0] ?? '';
  if (authority.split('@').length > 2) {
    throw invalid(field, 'must not contain more than one "@": percent-encode it (%40) in a user name or password');
  }
  if (url.hostname === '') throw invalid(field, 'must name a host (scheme://host:port/…)');
  // Port 0 is nobody's port; drivers read it as "the default port" and would go elsewhere.
  if (url.port === '0') throw invalid(field, 'must not name port 0');
  if (!decodes(url.username) || !decodes(url.password)) {
    throw invalid(field, 'must percent-encode "%" (%25) in a user name or password');
  }
  rules.check(field, address, url);
  return url;
}

function decodes(component: string): boolean {
  try {
    decodeURIComponent(component);
    return true;
  } catch {
    return false;
  }
}

/** Every host a Postgres URL names: its own, the host and hostaddr parameters, and what the driver derives. */
function postgresHosts(field: string, address: string, url: URL): string[] {
  let parsed: ReturnType<typeof parsePgConnectionString>;
  try {
    parsed = parsePgConnectionString(address);
  } catch {
    throw invalid(field, 'is not a connection string the Postgres driver can read');
  }
  const hosts = [url.hostname, ...url.searchParams.getAll('host'), ...url.searchParams.getAll('hostaddr'), parsed.host ?? ''];
  if (typeof parsed.hostaddr === 'string') hosts.push(parsed.hostaddr);
  return hosts.flatMap((h) => h.split(','));
}

/** A parameter name fit for an error message (names are the caller's, but keep them short and plain). */
/**
 * Connection parameters Postgres clients know (libpq's keywords and node-postgres's own): an
 * error may name one of these. Any other "parameter" may be a piece of a password whose `?`
 * was not percent-encoded, so it is never quoted.
 */
const KNOWN_POSTGRES_PARAMETERS = new Set([
  'host', 'hostaddr', 'port', 'dbname', 'user', 'password', 'passfile', 'channel_binding', 'connect_timeout',
  'client_encoding', 'options', 'application_name', 'fallback_application_name', 'keepalives', 'keepalives_idle',
  'keepalives_interval', 'keepalives_count', 'tcp_user_timeout', 'replication', 'gssencmode', 'sslmode', 'requiressl',
  'sslcompression', 'sslcert', 'sslkey', 'sslpassword', 'sslcertmode', 'sslrootcert', 'sslcrl', 'sslcrldir', 'sslsni',
  'requirepeer', 'ssl_min_protocol_version', 'ssl_max_protocol_version', 'krbsrvname', 'gsslib', 'gssdelegation',
  'service', 'servicefile', 'target_session_attrs', 'load_balance_hosts', 'ssl', 'statement_timeout', 'query_timeout',
  'lock_timeout', 'idle_in_transaction_session_timeout', 'uselibpqcompat',
]);

function safeName(key: string): string {
  return KNOWN_POSTGRES_PARAMETERS.has(key) ? key : '(one it does not know: percent-encode "?" (%3F) in a password)';
}
