/**
 * fast-check arbitraries of participant addresses: credentials in every form each kind's
 * address can carry them (user info raw, encoded or half-encoded with `@ : # %`, query
 * parameters, Postgres key=value), and addresses that smuggle a Unix socket or a driver
 * option (Redis `?path=`, `redis:/sock`, Postgres `options=`, `host=/dir`, file-reading
 * parameters, …). Registration must refuse every one of them before any connection, and
 * never quote a piece of a password.
 */
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import fc from 'fast-check';

export type AddressKind = 'postgres' | 'mysql' | 'redis' | 'http' | 'nats';
export const FIELD = { postgres: 'connectionString', mysql: 'connectionString', redis: 'url', http: 'baseUrl', nats: 'url' } as const;
export const ADDRESS_KINDS: readonly AddressKind[] = ['postgres', 'mysql', 'redis', 'http', 'nats'];

export interface Address {
  readonly kind: AddressKind;
  readonly address: string;
  /** Pieces of the password that no answer may contain. */
  readonly pieces: readonly string[];
}

export const registration = (name: string, a: Address): Record<string, string> => ({ name, kind: a.kind, [FIELD[a.kind]]: a.address });

/** A piece no message could hold by chance: three letters, two digits, three of either. */
const secretPiece = fc
  .tuple(fc.stringMatching(/^[A-Z]{3}$/), fc.stringMatching(/^[0-9]{2}$/), fc.stringMatching(/^[A-Z0-9]{3}$/))
  .map((parts) => parts.join(''));
const separator = fc.constantFrom('@', ':', '#', '%', '%zz', '%40', '%3A', '%2', '/', '?', '&', '=', '+', ' ', '!', '$', ';', ',', '[', ']', '\\', '"', "'", '@@', '::');

/** A password of distinctive pieces joined by characters that URLs treat specially. */
export const password = fc
  .record({ pieces: fc.array(secretPiece, { minLength: 1, maxLength: 3 }), seps: fc.array(separator, { minLength: 4, maxLength: 4 }), lead: fc.boolean() })
  .map(({ pieces, seps, lead }) => {
    let text = lead ? (seps[3] ?? '') : '';
    pieces.forEach((p, i) => (text += p + (i < pieces.length - 1 ? (seps[i] ?? '') : '')));
    return { text, pieces };
  });

const SCHEMES: Record<AddressKind, readonly string[]> = {
  postgres: ['postgres', 'postgresql'],
  mysql: ['mysql'],
  redis: ['redis', 'rediss'],
  http: ['http', 'https'],
  nats: ['nats'],
};
const PATH: Record<AddressKind, string> = { postgres: '/bank', mysql: '/shop', redis: '/0', http: '/svc', nats: '' };
const QUERY_KEYS: Record<AddressKind, readonly string[]> = {
  postgres: ['password', 'sslpassword', 'pass', 'token'],
  mysql: ['password', 'pass', 'passwordSha1'],
  redis: ['password', 'pass', 'auth'],
  http: ['api_key', 'token', 'password', 'access_token', 'sig', 'X-Auth'],
  nats: ['token', 'pass', 'nkey'],
};

/** Encodes only `@` and `#`: a half-encoded password, as a hurried operator writes it. */
const halfEncoded = (pw: string): string => pw.replace(/[@#]/g, (ch) => encodeURIComponent(ch));

/** Hosts no allowlist in these tests admits: every address on them is refused (403 at the latest). */
export const FORBIDDEN_HOSTS = ['10.0.0.9', 'evil.example', '169.254.169.254', '[fd00::1]', '0.0.0.0', 'metadata.google.internal', '192.168.1.1:5432'];

/** Credentials in every form `kind` takes them, on one of `hosts` (host[:port]). */
export function credentialAddress(hosts: readonly string[], kinds: readonly AddressKind[] = ADDRESS_KINDS): fc.Arbitrary<Address> {
  return fc
    .record({
      kind: fc.constantFrom(...kinds),
      schemeIndex: fc.nat(1),
      host: fc.constantFrom(...hosts),
      user: fc.constantFrom('u', 'svc', '', 'default'),
      pw: password,
      form: fc.constantFrom('raw', 'encoded', 'half', 'query', 'query-encoded', 'both', 'keyvalue'),
      queryKeyIndex: fc.nat(5),
    })
    .map(({ kind, schemeIndex, host, user, pw, form, queryKeyIndex }) => {
      const scheme = SCHEMES[kind][schemeIndex] ?? SCHEMES[kind][0];
      const keys = QUERY_KEYS[kind];
      const qkey = keys[queryKeyIndex % keys.length] ?? 'password';
      const base = (userinfo: string): string => `${scheme}://${userinfo}${host}${PATH[kind]}`;
      let address: string;
      switch (form) {
        case 'raw':
          address = base(`${user}:${pw.text}@`);
          break;
        case 'encoded':
          address = base(`${user}:${encodeURIComponent(pw.text)}@`);
          break;
        case 'half':
          address = base(`${user}:${halfEncoded(pw.text)}@`);
          break;
        case 'query':
          address = `${base(user === '' ? '' : `${user}@`)}?${qkey}=${pw.text}`;
          break;
        case 'query-encoded':
          address = `${base(user === '' ? '' : `${user}@`)}?${qkey}=${encodeURIComponent(pw.text)}`;
          break;
        case 'both':
          address = `${base(`${user}:${halfEncoded(pw.text)}@`)}?${qkey}=${encodeURIComponent(pw.text)}`;
          break;
        default:
          // libpq's key=value form (refused for Postgres); other kinds get it as nonsense text.
          address = `host=${host.replace(/:\d+$/, '')} user=${user || 'u'} password=${pw.text} dbname=bank`;
      }
      return { kind, address, pieces: pw.pieces };
    });
}

/** Where smuggled addresses would lead if anything connected: a TCP port and Unix sockets, all listening. */
export interface SmugglingTargets {
  /** 127.0.0.1 port of a listener that counts connections. */
  readonly port: number;
  /** A directory holding `.s.PGSQL.<port>` and `redis.sock`, listeners that count connections. */
  readonly socketDir: string;
}

const spellKey = (key: string, how: 'plain' | 'upper' | 'escaped'): string =>
  how === 'plain' ? key : how === 'upper' ? key.toUpperCase() : `%${key.charCodeAt(0).toString(16)}${key.slice(1)}`;

/** Addresses that would reach a Unix socket, read a file on the coordinator's host or change the session. */
export function smuggledAddress(t: SmugglingTargets): fc.Arbitrary<Address> {
  const dir = t.socketDir;
  const redisSock = `${dir}/redis.sock`;
  const tcp = `127.0.0.1:${t.port}`;
  const pgParams: [string, string[]][] = [
    ['options', ['-c statement_timeout=0', '-c search_path=evil', '--default_transaction_read_only=off']],
    ['host', [dir, `${dir}/`, encodeURIComponent(dir), `127.0.0.1,${dir}`, '/tmp', '/var/run/postgresql']],
    ['hostaddr', [dir]],
    ['sslkey', ['/etc/shadow', `${dir}/key`]],
    ['sslcert', ['/proc/self/environ']],
    ['sslrootcert', ['/etc/ssl/private/x']],
    ['sslcrl', ['/etc/passwd']],
    ['sslpassword', ['x']],
    ['passfile', ['/root/.pgpass']],
    ['service', ['evil']],
    ['servicefile', ['/etc/pg_service.conf']],
    ['statement_timeout', ['0']],
    ['idle_in_transaction_session_timeout', ['0']],
    ['lock_timeout', ['0']],
    ['application_name', ['x']],
    ['fallback_application_name', ['x']],
    ['search_path', ['evil']],
    ['client_encoding', ['SQL_ASCII']],
    ['replication', ['database']],
    ['user', ['postgres']],
    ['dbname', ['postgres']],
    ['requirepeer', ['root']],
    ['gssencmode', ['require']],
  ];
  const redisOptions: [string, string[]][] = [
    ['path', [redisSock]],
    ['socket', [redisSock]],
    ['family', ['6', '0']],
    ['tls', ['true']],
    ['db', ['15']],
    ['password', ['x']],
    ['keyPrefix', ['evil:']],
    ['connectTimeout', ['0']],
    ['sentinels', [tcp]],
    ['name', ['mymaster']],
    ['enableOfflineQueue', ['true']],
  ];
  const withParam = (params: [string, string[]][]) =>
    fc.record({
      param: fc.constantFrom(...params),
      valueIndex: fc.nat(5),
      spelling: fc.constantFrom<'plain' | 'upper' | 'escaped'>('plain', 'plain', 'upper', 'escaped'),
      extra: fc.subarray(['sslmode=disable', 'connect_timeout=5']),
      encodeValue: fc.boolean(),
    });
  const postgres = fc.oneof(
    withParam(pgParams).map(({ param: [key, values], valueIndex, spelling, extra, encodeValue }) => {
      const value = values[valueIndex % values.length] ?? '';
      const pair = `${spellKey(key, spelling)}=${encodeValue ? encodeURIComponent(value) : value}`;
      return `postgres://u:pw@${tcp}/bank?${[...extra, pair].join('&')}`;
    }),
    fc.constantFrom(
      `postgres://u:pw@${encodeURIComponent(dir)}:${t.port}/bank`,
      `postgresql://${encodeURIComponent(dir)}/bank`,
      `postgres:///bank?host=${dir}&port=${t.port}`,
      `postgres://u@/bank?host=${dir}`,
      `postgres:${dir}/bank`,
      `host=${dir} port=${t.port} dbname=bank`,
      `socket://${dir}/.s.PGSQL.${t.port}`,
    ),
  );
  const redis = fc.oneof(
    withParam(redisOptions).map(({ param: [key, values], valueIndex, spelling, encodeValue }) => {
      const value = values[valueIndex % values.length] ?? '';
      return `redis://${tcp}/0?${spellKey(key, spelling)}=${encodeValue ? encodeURIComponent(value) : value}`;
    }),
    fc.constantFrom(
      `redis:${redisSock}`,
      `redis://${tcp}/?path=${redisSock}`,
      `redis://${tcp}${redisSock}`,
      `redis:///${redisSock}`,
      `redis://${encodeURIComponent(redisSock)}/0`,
      `unix://${redisSock}`,
      `redis+unix://${redisSock}`,
      `rediss://${tcp}/0?servername=evil`,
      `redis://${tcp}/0/1`,
      redisSock,
    ),
  );
  const http = fc.constantFrom(
    `http+unix://${encodeURIComponent(redisSock)}/svc`,
    `unix:${redisSock}`,
    `file://${redisSock}`,
    `http://unix:${redisSock}:/svc`,
    `http:${dir}/svc`,
    `ws://${tcp}/svc`,
    `ftp://${tcp}/svc`,
    `http://${tcp}#@evil.example/`,
    `http://user@evil.example@${tcp}/`,
  );
  // mysql2 reads client options from the query: sockets, multiple statements, local files, flags.
  const mysqlOptions: [string, string[]][] = [
    ['socketPath', [redisSock, `${dir}/mysql.sock`]],
    ['multipleStatements', ['true']],
    ['flags', ['+LOCAL_FILES', '-FOUND_ROWS']],
    ['infileStreamFactory', ['x']],
    ['localAddress', ['127.0.0.1']],
    ['ssl', ['{"rejectUnauthorized":false}']],
    ['charset', ['latin1']],
    ['password', ['x']],
    ['debug', ['true']],
  ];
  const mysql = fc.oneof(
    withParam(mysqlOptions).map(({ param: [key, values], valueIndex, spelling, encodeValue }) => {
      const value = values[valueIndex % values.length] ?? '';
      return `mysql://u:pw@${tcp}/shop?${spellKey(key, spelling)}=${encodeValue ? encodeURIComponent(value) : value}`;
    }),
    fc.constantFrom(
      `mysql://u:pw@${encodeURIComponent(redisSock)}/shop`,
      `mysql:${dir}/mysql.sock`,
      `mysql://u:pw@${tcp}`,
      `mysql://u:pw@${tcp}/shop/extra`,
      `mysqlx://u:pw@${tcp}/shop`,
      `mariadb://u:pw@${tcp}/shop`,
    ),
  );
  const nats = fc.oneof(
    withParam([
      ['token', ['x']],
      ['tls', ['true']],
      ['user', ['admin']],
    ]).map(({ param: [key, values], valueIndex, spelling }) => `nats://${tcp}?${spellKey(key, spelling)}=${values[valueIndex % values.length] ?? ''}`),
    fc.constantFrom(`nats://${tcp}/subject`, `nats:${redisSock}`, `ws://${tcp}`, `tls://${tcp}`, `unix://${redisSock}`),
  );
  return fc.oneof(
    postgres.map((address) => ({ kind: 'postgres' as const, address, pieces: [] })),
    mysql.map((address) => ({ kind: 'mysql' as const, address, pieces: [] })),
    redis.map((address) => ({ kind: 'redis' as const, address, pieces: [] })),
    http.map((address) => ({ kind: 'http' as const, address, pieces: [] })),
    nats.map((address) => ({ kind: 'nats' as const, address, pieces: [] })),
  );
}

/** A TCP port and Unix sockets (Postgres- and Redis-named) that count every connection made to them. */
export async function startSmugglingTargets(): Promise<{ targets: SmugglingTargets; connections(): number; close(): Promise<void> }> {
  let connections = 0;
  const servers: net.Server[] = [];
  const listen = (where: net.ListenOptions): Promise<net.Server> =>
    new Promise((resolve, reject) => {
      const server = net.createServer((sock) => {
        connections++;
        sock.destroy();
      });
      server.once('error', reject);
      server.listen(where, () => resolve(server));
      servers.push(server);
    });
  const tcp = await listen({ host: '127.0.0.1', port: 0 });
  const port = (tcp.address() as net.AddressInfo).port;
  const socketDir = fs.mkdtempSync(path.join(os.tmpdir(), 'tcx-sock-'));
  await listen({ path: path.join(socketDir, `.s.PGSQL.${port}`) });
  await listen({ path: path.join(socketDir, `.s.PGSQL.5432`) });
  await listen({ path: path.join(socketDir, 'redis.sock') });
  return {
    targets: { port, socketDir },
    connections: () => connections,
    close: async () => {
      await Promise.all(servers.map((s) => new Promise((r) => s.close(r))));
      fs.rmSync(socketDir, { recursive: true, force: true });
    },
  };
}
