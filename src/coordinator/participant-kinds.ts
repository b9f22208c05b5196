/**
 * The participant-kind registry: everything the coordinator knows about a kind of store, in
 * one entry per kind. The registration checks, the address checks, the allowlist, the adapter
 * factory and the work field of a branch all ask this table; nothing else compares kind
 * strings. Adding a kind is an adapter (src/participants/) plus one entry here, its JSON
 * schema for the work (src/api/schemas.ts) and its openapi.yaml text —
 * test/participants/participant-kinds.test.ts checks that those agree with the table.
 *
 * Capabilities each entry declares (the adapter instance carries the same, the contract at
 * the port; the test checks they agree):
 *   work                 the request field a branch's work comes in
 *   oneBranchPerStore    all work for one store in one transaction shares one branch
 *   listsPreparedBranches recovery finds its prepared branches by asking the store; when
 *                        false the coordinator forces a record of the branch before prepare
 *   canCommit            how 3PC's first round maps onto it: `prepare` (the store's own
 *                        prepare, so a pre-committed sibling never commits beside a lost
 *                        branch) or `own` (the store takes a can-commit call of its own)
 *   preCommit            the store hears 3PC's pre-commit (otherwise the coordinator's forced
 *                        pre-commit record is the only mark)
 *   onePhase             a lone branch commits in one step on the store, which can tell the
 *                        outcome afterwards should the answer be lost (`commitOnePhase`,
 *                        `onePhaseOutcome`): no prepare, nothing forced before it. Postgres only so
 *                        far: Redis and MySQL could not say what a lost one-step commit did,
 *                        an http service has no one-step call, NATS publishes one message at a
 *                        time.
 */

import { parse as parsePgConnectionString } from 'pg-connection-string';
import type { Logger } from 'pino';
import { CoordinatorError } from '../errors.js';
import type { ParticipantAuth, ParticipantKind } from '../log/log-records.js';
import type { ParticipantAdapter } from '../participants/participant.js';
import { PostgresParticipant } from '../participants/postgres-participant.js';
import {
  ADDRESS_FIELDS,
  HTTP_ADDRESS,
  MYSQL_ADDRESS,
  NATS_ADDRESS,
  POSTGRES_ADDRESS,
  REDIS_ADDRESS,
  type AddressField,
  type AddressRules,
} from './participant-address.js';

/** What adapters are built with, from the coordinator's configuration. */
export interface AdapterSettings {
  readonly participantTimeoutMs: number;
  readonly connectTimeoutMs: number;
  readonly statementTimeoutMs: number;
  readonly idleInTransactionTimeoutMs: number;
  /** Sessions per SQL database participant (postgres, mysql): TCX_PG_MAX_SESSIONS. */
  readonly pgMaxSessions: number;
  readonly coordinatorUrl: string;
  readonly uncertainTimeoutMs: number;
}

/** A participant as registered: its kind, its address in the kind's field, options and credentials. */
export interface KindConfig {
  readonly name: string;
  readonly kind: ParticipantKind;
  readonly connectionString?: string;
  readonly baseUrl?: string;
  readonly url?: string;
  readonly options?: Readonly<Record<string, unknown>>;
  readonly auth?: ParticipantAuth;
}

export interface KindCapabilities {
  readonly work: ParticipantAdapter['work'];
  readonly oneBranchPerStore: boolean;
  readonly listsPreparedBranches: boolean;
  readonly canCommit: 'prepare' | 'own';
  readonly preCommit: boolean;
  readonly onePhase: boolean;
}

export interface ParticipantKindSpec {
  readonly kind: ParticipantKind;
  /** The registration field that holds its address. */
  readonly addressField: AddressField;
  readonly address: AddressRules;
  /** Registration options it takes (`options.<name>`). */
  readonly options: readonly string[];
  /** Takes `auth` (credentials kept apart from the address). */
  readonly takesAuth: boolean;
  /** A user name without a password in its address is a secret (a token), hidden in every view. */
  readonly loneUserIsSecret?: boolean;
  readonly capabilities: KindCapabilities;
  /** Hosts its driver may connect to besides the URL's own (the allowlist checks them all). */
  driverHosts?(address: string): string[];
  /**
   * The adapter. Kinds other than Postgres load their driver on first use (dynamic import): a
   * coordinator that never sees one does not pay for it at start-up.
   */
  create(config: KindConfig, settings: AdapterSettings, logger: Logger): Promise<ParticipantAdapter>;
}

const address = (config: KindConfig, field: AddressField): string => config[field] ?? '';

/** What the SQL kinds' branch sessions are bounded by, from the settings. */
const sqlSessions = (s: AdapterSettings) => ({
  maxSessions: s.pgMaxSessions,
  connectTimeoutMs: s.connectTimeoutMs,
  statementTimeoutMs: s.statementTimeoutMs,
  idleInTransactionTimeoutMs: s.idleInTransactionTimeoutMs,
});

const KINDS: Readonly<Record<ParticipantKind, ParticipantKindSpec>> = {
  postgres: {
    kind: 'postgres',
    addressField: 'connectionString',
    address: POSTGRES_ADDRESS,
    options: [],
    takesAuth: false,
    capabilities: { work: 'operations', oneBranchPerStore: true, listsPreparedBranches: true, canCommit: 'prepare', preCommit: false, onePhase: true },
    driverHosts: (a) => (parsePgConnectionString(a).host ?? '').split(','),
    create: async (config, s, logger) =>
      new PostgresParticipant({ name: config.name, connectionString: address(config, 'connectionString'), ...sqlSessions(s), logger }),
  },
  mysql: {
    kind: 'mysql',
    addressField: 'connectionString',
    address: MYSQL_ADDRESS,
    options: ['allowVolatile'],
    takesAuth: false,
    capabilities: { work: 'operations', oneBranchPerStore: true, listsPreparedBranches: true, canCommit: 'prepare', preCommit: false, onePhase: false },
    create: async (config, s, logger) =>
      new (await import('../participants/mysql-participant.js')).MySqlParticipant({
        name: config.name,
        connectionString: address(config, 'connectionString'),
        ...sqlSessions(s),
        logger,
        allowVolatile: config.options?.allowVolatile === true,
      }),
  },
  redis: {
    kind: 'redis',
    addressField: 'url',
    address: REDIS_ADDRESS,
    options: ['allowVolatile'],
    takesAuth: false,
    capabilities: { work: 'operations', oneBranchPerStore: true, listsPreparedBranches: true, canCommit: 'prepare', preCommit: true, onePhase: false },
    create: async (config, s, logger) =>
      new (await import('../participants/redis-participant.js')).RedisParticipant({
        name: config.name,
        url: address(config, 'url'),
        connectTimeoutMs: s.connectTimeoutMs,
        commandTimeoutMs: s.participantTimeoutMs,
        logger,
        allowVolatile: config.options?.allowVolatile === true,
      }),
  },
  http: {
    kind: 'http',
    addressField: 'baseUrl',
    address: HTTP_ADDRESS,
    options: [],
    takesAuth: true,
    capabilities: { work: 'payload', oneBranchPerStore: false, listsPreparedBranches: false, canCommit: 'own', preCommit: true, onePhase: false },
    create: async (config, s) =>
      new (await import('../participants/http-participant.js')).HttpParticipant({
        name: config.name,
        baseUrl: address(config, 'baseUrl'),
        ...(config.auth === undefined ? {} : { auth: config.auth }),
        requestTimeoutMs: s.participantTimeoutMs,
        connectTimeoutMs: s.connectTimeoutMs,
        coordinatorUrl: s.coordinatorUrl,
        uncertainTimeoutMs: s.uncertainTimeoutMs,
      }),
  },
  nats: {
    kind: 'nats',
    addressField: 'url',
    address: NATS_ADDRESS,
    options: [],
    takesAuth: false,
    loneUserIsSecret: true,
    capabilities: { work: 'messages', oneBranchPerStore: false, listsPreparedBranches: true, canCommit: 'prepare', preCommit: false, onePhase: false },
    create: async (config, s, logger) =>
      new (await import('../participants/nats-participant.js')).NatsParticipant({
        name: config.name,
        url: address(config, 'url'),
        connectTimeoutMs: s.connectTimeoutMs,
        requestTimeoutMs: s.participantTimeoutMs,
        logger,
      }),
  },
};

export const PARTICIPANT_KIND_NAMES = Object.keys(KINDS) as readonly ParticipantKind[];

export function kindSpec(kind: ParticipantKind): ParticipantKindSpec {
  const spec = (KINDS as Partial<Record<string, ParticipantKindSpec>>)[kind];
  if (spec === undefined) throw new CoordinatorError('VALIDATION_FAILED', `unknown participant kind ${String(kind)}`);
  return spec;
}

/**
 * The shape of a registration for its kind: its own address field and no other, only the
 * options and credentials it takes. Throws VALIDATION_FAILED saying what was wrong.
 */
export function checkRegistrationShape(config: KindConfig): void {
  const spec = kindSpec(config.kind);
  const wanted = spec.addressField;
  for (const field of ADDRESS_FIELDS) {
    const present = config[field] !== undefined;
    if (field === wanted && !present) throw new CoordinatorError('VALIDATION_FAILED', `a ${config.kind} participant needs a ${field}`);
    if (field !== wanted && present) throw new CoordinatorError('VALIDATION_FAILED', `a ${config.kind} participant takes a ${wanted}, not a ${field}`);
  }
  if (config.auth !== undefined) {
    if (!spec.takesAuth) {
      const takers = PARTICIPANT_KIND_NAMES.filter((k) => KINDS[k].takesAuth).join(', ');
      throw new CoordinatorError('VALIDATION_FAILED', `auth applies to ${takers} participants only`);
    }
    const auth = config.auth as { type: string; token?: string; username?: string; password?: string };
    const ok =
      auth.type === 'bearer'
        ? auth.token !== undefined && auth.username === undefined && auth.password === undefined
        : auth.token === undefined && auth.username !== undefined && auth.password !== undefined;
    if (!ok) throw new CoordinatorError('VALIDATION_FAILED', 'auth is {type: "bearer", token} or {type: "basic", username, password}');
    const at = address(config, wanted);
    if (URL.canParse(at) && new URL(at).username !== '') {
      throw new CoordinatorError('VALIDATION_FAILED', `give credentials either in auth or in ${wanted}, not both`);
    }
  }
  for (const option of Object.keys(config.options ?? {})) {
    if (!spec.options.includes(option)) {
      const takers = PARTICIPANT_KIND_NAMES.filter((k) => KINDS[k].options.includes(option)).join(' and ');
      throw new CoordinatorError('VALIDATION_FAILED', `options.${option} applies to ${takers} participants only`);
    }
  }
}
