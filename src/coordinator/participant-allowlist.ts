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
 * Every host an address can make the client connect to: the URL's host plus its `host` and
 * `hostaddr` query parameters (comma-separated lists included), and the hosts the kind's
 * driver itself derives (Postgres). The address has passed participant-address.ts's strict
 * check, which
 * leaves only URLs, and no Unix socket paths for Postgres (one here would count as localhost).
 */
export function hostsOf(url: URL, driverHosts: readonly string[]): string[] {
  const hosts = [url.hostname];
  for (const key of ['host', 'hostaddr']) for (const v of url.searchParams.getAll(key)) hosts.push(...v.split(','));
  hosts.push(...driverHosts);
  return hosts.map((h) => h.trim()).map((h) => (h === '' || h.startsWith('/') ? 'localhost' : h));
}

/** `url` is `address` as participant-address.ts parsed it; `driverHosts` what its kind's driver derives from it. */
export function assertAllowedAddress(url: URL, patterns: readonly string[], driverHosts: readonly string[]): void {
  for (const host of hostsOf(url, driverHosts)) {
    if (!patterns.some((p) => matches(host, p))) {
      throw new CoordinatorError(
        'PARTICIPANT_NOT_ALLOWED',
        `participant host ${host} is not on the allowlist (TCX_PARTICIPANT_HOSTS=${patterns.join(',')})`,
        { details: { host } },
      );
    }
  }
}
