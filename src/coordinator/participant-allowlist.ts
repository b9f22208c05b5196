/**
 * Which hosts participants may be registered on. Without it, anyone able to
 * call the API could make the coordinator connect to arbitrary internal
 * addresses. Patterns: an exact host name or IP literal, `*.example.com`, an
 * IPv4 CIDR such as `10.1.0.0/16`, or `*` for any host.
 *
 * Only the literal host of the address is checked (names are not resolved):
 * list names, not the addresses they happen to resolve to.
 */

import { isIP } from 'node:net';
import { parse as parsePgConnectionString } from 'pg-connection-string';
import { CoordinatorError } from '../errors.js';

function ipv4ToInt(ip: string): number {
  return ip.split('.').reduce((acc, part) => (acc << 8) + Number(part), 0) >>> 0;
}

function matches(host: string, pattern: string): boolean {
  const h = host.toLowerCase().replace(/^\[|\]$/g, '');
  const p = pattern.toLowerCase();
  if (p === '*') return true;
  if (p.startsWith('*.')) return h.endsWith(p.slice(1)) && h.length > p.length - 1;
  const cidr = /^(\d{1,3}(?:\.\d{1,3}){3})\/(\d{1,2})$/.exec(p);
  if (cidr !== null) {
    if (isIP(h) !== 4) return false;
    const bits = Number(cidr[2]);
    const mask = bits === 0 ? 0 : (0xffffffff << (32 - bits)) >>> 0;
    return (ipv4ToInt(h) & mask) === (ipv4ToInt(cidr[1] as string) & mask);
  }
  return h === p;
}

/**
 * Every host an address can make the client connect to: a URL's host plus its `host` and
 * `hostaddr` query parameters, or every libpq key=value `host=` / `hostaddr=` entry
 * (comma-separated lists included). A Unix socket path counts as localhost.
 */
export function hostsOf(address: string): string[] {
  const hosts: string[] = [];
  if (URL.canParse(address)) {
    const url = new URL(address);
    hosts.push(url.hostname === '' ? 'localhost' : url.hostname);
    for (const key of ['host', 'hostaddr']) for (const v of url.searchParams.getAll(key)) hosts.push(...v.split(','));
  } else {
    const entry = /(?:^|\s)(host|hostaddr)\s*=\s*('((?:[^'\\]|\\.)*)'|\S+)/g;
    for (const m of address.matchAll(entry)) hosts.push(...(m[3] ?? m[2] ?? '').split(','));
    if (hosts.length === 0) hosts.push('localhost');
  }
  return hosts.map((h) => h.trim()).map((h) => (h === '' || h.startsWith('/') ? 'localhost' : h));
}

/** libpq parameters that make the client read files on the coordinator's host. */
const FILE_PARAMETERS = /^(sslrootcert|sslcert|sslkey|sslpassword|sslcrl|sslcrldir|passfile|service|servicefile)$/i;

/**
 * Postgres addresses must be postgres:// URLs: the key=value form and malformed URLs are
 * parsed differently by the driver than by any check here, which is how allowlists are
 * bypassed. The hosts checked are those of the URL and those the driver itself derives.
 */
function postgresHosts(address: string): string[] {
  if (!URL.canParse(address) || !/^postgres(ql)?:$/.test(new URL(address).protocol)) {
    throw new CoordinatorError('VALIDATION_FAILED', 'a postgres connectionString must be a postgres:// or postgresql:// URL');
  }
  const url = new URL(address);
  for (const key of url.searchParams.keys()) {
    if (FILE_PARAMETERS.test(key)) {
      throw new CoordinatorError('VALIDATION_FAILED', `connection parameter ${key} would read files on the coordinator's host; it is not accepted`);
    }
  }
  const driverHost = parsePgConnectionString(address).host ?? '';
  return [...hostsOf(address), ...driverHost.split(',')].map((h) => (h.trim() === '' || h.startsWith('/') ? 'localhost' : h.trim()));
}

export function assertAllowedAddress(address: string, patterns: readonly string[], kind?: 'postgres' | 'http' | 'redis'): void {
  const hosts = kind === 'postgres' ? postgresHosts(address) : hostsOf(address);
  for (const host of hosts) {
    if (!patterns.some((p) => matches(host, p))) {
      throw new CoordinatorError(
        'PARTICIPANT_NOT_ALLOWED',
        `participant host ${host} is not on the allowlist (TCX_PARTICIPANT_HOSTS=${patterns.join(',')})`,
        { details: { host } },
      );
    }
  }
}
