/** `tcx participants list|show|add|remove`. */
import type { ParticipantKind, ParticipantView, RegisterParticipantRequest } from '../../client/index.js';
import { UsageError, booleanOption, listOption, oneOf, requiredOption, stringOption, type Command } from '../command.js';
import { EXIT } from '../exit-codes.js';
import { json, keyValues, table } from '../output.js';

const KINDS: readonly ParticipantKind[] = ['postgres', 'mysql', 'redis', 'http', 'nats'];

function address(p: ParticipantView): string | undefined {
  return p.connectionString ?? p.baseUrl ?? p.url;
}

function describe(p: ParticipantView): string {
  return keyValues([
    ['name', p.name],
    ['kind', p.kind],
    ['address', address(p)],
    ['options', p.options === undefined ? undefined : JSON.stringify(p.options)],
    ['auth', p.auth?.type],
    ['registered', p.registeredAt],
    ...(p.warnings ?? []).map((w) => ['warning', w] as const),
  ]);
}

export const participantsList: Command = {
  words: ['participants', 'list'],
  positionals: [],
  options: {},
  summary: 'the registered participants (secrets redacted)',
  synopsis: '',
  details: [],
  async run(ctx) {
    const { participants } = await ctx.client.listParticipants();
    if (ctx.json) ctx.out.stdout(json({ participants }));
    else if (participants.length === 0) ctx.out.stdout('no participants registered\n');
    else
      ctx.out.stdout(
        table(
          ['NAME', 'KIND', 'ADDRESS', 'REGISTERED', 'WARNINGS'],
          participants.map((p) => [p.name, p.kind, address(p), p.registeredAt, p.warnings?.length ? p.warnings.join('; ') : undefined]),
        ),
      );
    return EXIT.OK;
  },
};

export const participantsShow: Command = {
  words: ['participants', 'show'],
  positionals: ['NAME'],
  options: {},
  summary: 'one participant',
  synopsis: '',
  details: [],
  async run(ctx, { args }) {
    const p = await ctx.client.getParticipant(args[0] as string);
    ctx.out.stdout(ctx.json ? json(p) : describe(p));
    return EXIT.OK;
  },
};

/** `--option k=v`: true/false become booleans, integers numbers, anything else stays a string. */
function parseOptions(pairs: readonly string[]): Record<string, unknown> | undefined {
  if (pairs.length === 0) return undefined;
  const options: Record<string, unknown> = {};
  for (const pair of pairs) {
    const eq = pair.indexOf('=');
    if (eq <= 0) throw new UsageError(`--option takes KEY=VALUE, not ${JSON.stringify(pair)}`);
    const key = pair.slice(0, eq);
    const raw = pair.slice(eq + 1);
    options[key] = raw === 'true' ? true : raw === 'false' ? false : /^-?[0-9]+$/.test(raw) ? Number(raw) : raw;
  }
  return options;
}

export const participantsAdd: Command = {
  words: ['participants', 'add'],
  positionals: [],
  options: {
    name: { type: 'string' },
    kind: { type: 'string' },
    'connection-string': { type: 'string' },
    'base-url': { type: 'string' },
    url: { type: 'string' },
    'redis-url': { type: 'string' },
    option: { type: 'string', multiple: true },
  },
  summary: 'register a participant (admin token)',
  synopsis: '--name N --kind postgres|mysql|redis|http|nats (--connection-string S | --base-url U | --url U) [--option K=V]...',
  details: [
    '--connection-string S  postgres: a postgres:// URL (the coordinator checks max_prepared_transactions > 0)',
    '                       mysql: a mysql://user:password@host:port/database URL (MySQL 5.7.7+ or MariaDB 10.5+, XA)',
    '--base-url U           http: the service\'s base URL (it answers /prepare, /commit, /abort)',
    '--url U                redis: a redis:// URL (needs appendonly yes + appendfsync always)',
    '                       nats: a nats:// URL (JetStream on; messages are published on commit)',
    '--redis-url U          the same as --url (older spelling)',
    '--option K=V           an option of the registration, e.g. allowVolatile=true (mysql, redis); repeatable',
  ],
  async run(ctx, { values }) {
    const kind = oneOf(requiredOption(values, 'kind'), KINDS, '--kind');
    const connectionString = stringOption(values, 'connection-string');
    const baseUrl = stringOption(values, 'base-url');
    const urls = [stringOption(values, 'url'), stringOption(values, 'redis-url')].filter((a) => a !== undefined);
    const url = urls[0];
    const given = [connectionString, baseUrl, ...urls].filter((a) => a !== undefined).length;
    if (given !== 1) throw new UsageError('give exactly one of --connection-string, --base-url, --url');
    const options = parseOptions(listOption(values, 'option'));
    const request = {
      name: requiredOption(values, 'name'),
      kind,
      ...(connectionString === undefined ? {} : { connectionString }),
      ...(baseUrl === undefined ? {} : { baseUrl }),
      ...(url === undefined ? {} : { url }),
      ...(options === undefined ? {} : { options }),
    } as RegisterParticipantRequest;
    const p = await ctx.client.registerParticipant(request);
    ctx.out.stdout(ctx.json ? json(p) : describe(p));
    return EXIT.OK;
  },
};

export const participantsRemove: Command = {
  words: ['participants', 'remove'],
  positionals: ['NAME'],
  options: { unreachable: { type: 'boolean' }, reason: { type: 'string' } },
  summary: 'remove a participant (admin token)',
  synopsis: '[--unreachable --reason R]',
  details: [
    '--unreachable --reason R  remove one gone for good, which cannot be checked for prepared branches',
    '                          (forget its branches of aborting transactions first; the reason is logged)',
  ],
  async run(ctx, { args, values }) {
    const name = args[0] as string;
    const unreachable = booleanOption(values, 'unreachable');
    const reason = stringOption(values, 'reason');
    if (unreachable && (reason === undefined || reason === '')) throw new UsageError('--unreachable needs --reason');
    if (!unreachable && reason !== undefined) throw new UsageError('--reason goes with --unreachable');
    await ctx.client.removeParticipant(name, unreachable ? { unreachable, ...(reason === undefined ? {} : { reason }) } : {});
    ctx.out.stdout(ctx.json ? json({ removed: name }) : `removed ${name}\n`);
    return EXIT.OK;
  },
};
