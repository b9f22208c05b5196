/**
 * The registry of participants. Registrations are durable in the log (rule 8):
 * recovery needs each participant's connection details after a restart. The
 * registry builds one adapter per participant and answers public views with
 * every secret redacted.
 */

import type { Logger } from 'pino';
import { CoordinatorError } from '../errors.js';
import type { ParticipantAuth, ParticipantConfig, ParticipantKind } from '../log/log-records.js';
import type { ParticipantAdapter } from '../participants/participant.js';
import type { CoordinatorLog } from './coordinator-log.js';
import { kindSpec, type AdapterSettings } from './participant-kinds.js';

export type { AdapterSettings } from './participant-kinds.js';

export interface RegistrationRequest {
  readonly name: string;
  readonly kind: ParticipantKind;
  readonly connectionString?: string;
  readonly baseUrl?: string;
  readonly url?: string;
  readonly options?: Readonly<Record<string, unknown>>;
  readonly auth?: ParticipantAuth;
}

export interface ParticipantView {
  readonly name: string;
  readonly kind: ParticipantKind;
  readonly connectionString?: string;
  readonly baseUrl?: string;
  readonly url?: string;
  readonly options?: Readonly<Record<string, unknown>>;
  /** The kind of credentials only; the secret is never shown. */
  readonly auth?: { readonly type: ParticipantAuth['type'] };
  readonly registeredAt: string;
  readonly warnings?: readonly string[];
}

/**
 * Replaces the password and secret-looking query values of a URL (an address that is not a URL
 * is not shown at all). `loneUserIsSecret`: a user name without a password is a token (nats).
 */
export function redactUrl(raw: string, options: { loneUserIsSecret?: boolean } = {}): string {
  try {
    const url = new URL(raw);
    if (url.password !== '') url.password = '***';
    else if (options.loneUserIsSecret === true && url.username !== '') url.username = '***';
    for (const key of [...url.searchParams.keys()]) {
      if (/pass|secret|token|key|auth|sig|credential/i.test(key)) url.searchParams.set(key, '***');
    }
    return url.toString();
  } catch {
    // key=value form: password=...
    return raw.replace(/(password\s*=\s*)('[^']*'|\S+)/gi, '$1***');
  }
}

export class ParticipantRegistry {
  readonly #adapters = new Map<string, ParticipantAdapter>();
  /** How each participant was registered (as its log record says), by name. */
  readonly #configs = new Map<string, ParticipantConfig>();
  readonly #removing = new Set<string>();
  readonly #log: CoordinatorLog;
  readonly #settings: AdapterSettings;
  readonly #logger: Logger;

  constructor(log: CoordinatorLog, settings: AdapterSettings, logger: Logger) {
    this.#log = log;
    this.#settings = settings;
    this.#logger = logger;
  }

  /** Builds adapters for every participant the log knows (start-up). */
  async loadFromLog(): Promise<void> {
    for (const config of await this.#log.participants()) {
      this.#adapters.set(config.name, await this.#createAdapter(config));
      this.#configs.set(config.name, config);
    }
  }

  /** How a participant was registered, secrets included; undefined when it is not. */
  config(name: string): ParticipantConfig | undefined {
    return this.#adapters.has(name) ? this.#configs.get(name) : undefined;
  }

  #createAdapter(config: ParticipantConfig | RegistrationRequest): Promise<ParticipantAdapter> {
    return kindSpec(config.kind).create(config, this.#settings, this.#logger);
  }

  async register(request: RegistrationRequest): Promise<ParticipantView> {
    if (this.#adapters.has(request.name)) {
      throw new CoordinatorError('PARTICIPANT_EXISTS', `participant ${request.name} is already registered`);
    }
    const adapter = await this.#createAdapter(request);
    try {
      await adapter.verify();
    } catch (err) {
      await adapter.close();
      throw err;
    }
    if (this.#adapters.has(request.name)) {
      await adapter.close();
      throw new CoordinatorError('PARTICIPANT_EXISTS', `participant ${request.name} is already registered`);
    }
    const config: ParticipantConfig = {
      name: request.name,
      kind: request.kind,
      ...(request.connectionString === undefined ? {} : { connectionString: request.connectionString }),
      ...(request.baseUrl === undefined ? {} : { baseUrl: request.baseUrl }),
      ...(request.url === undefined ? {} : { url: request.url }),
      ...(request.options === undefined ? {} : { options: request.options }),
      ...(request.auth === undefined ? {} : { auth: request.auth }),
      registeredAt: new Date().toISOString(),
      ...((adapter.warnings?.() ?? []).length === 0 ? {} : { warnings: adapter.warnings?.() ?? [] }),
    };
    this.#adapters.set(request.name, adapter);
    this.#configs.set(request.name, config);
    try {
      await this.#log.force({ t: 'participant-registered', participant: config });
    } catch (err) {
      this.#adapters.delete(request.name);
      this.#configs.delete(request.name);
      await adapter.close();
      throw err;
    }
    this.#logger.info({ participant: request.name, kind: request.kind, warnings: config.warnings }, 'participant registered');
    return toView(config);
  }

  /** `forced`: removed without the check for prepared branches (it could not be reached): who and why. */
  async remove(name: string, forced?: { reason: string; actor: string }): Promise<void> {
    const adapter = this.adapter(name);
    this.#adapters.delete(name);
    this.#configs.delete(name);
    await this.#log.force({ t: 'participant-removed', name, at: new Date().toISOString(), ...(forced === undefined ? {} : { forced }) });
    await adapter.close();
    if (forced === undefined) this.#logger.info({ participant: name }, 'participant removed');
    else this.#logger.warn({ participant: name, reason: forced.reason, actor: forced.actor }, 'operator: unreachable participant removed');
  }

  adapter(name: string): ParticipantAdapter {
    const adapter = this.#adapters.get(name);
    if (adapter === undefined) throw new CoordinatorError('UNKNOWN_PARTICIPANT', `no participant named ${name}`);
    return adapter;
  }

  /** The adapter for new work: refused while the participant is being removed. */
  adapterForNewBranch(name: string): ParticipantAdapter {
    if (this.#removing.has(name)) throw new CoordinatorError('PARTICIPANT_IN_USE', `participant ${name} is being removed`);
    return this.adapter(name);
  }

  beginRemoval(name: string): void {
    if (this.#removing.has(name)) throw new CoordinatorError('PARTICIPANT_IN_USE', `participant ${name} is already being removed`);
    this.#removing.add(name);
  }

  endRemoval(name: string): void {
    this.#removing.delete(name);
  }

  has(name: string): boolean {
    return this.#adapters.has(name);
  }

  adapters(): ParticipantAdapter[] {
    return [...this.#adapters.values()];
  }

  view(name: string): ParticipantView {
    const config = this.config(name);
    if (config === undefined) {
      throw new CoordinatorError('UNKNOWN_PARTICIPANT', `no participant named ${name}`);
    }
    return toView(config);
  }

  views(): ParticipantView[] {
    return [...this.#configs.values()].filter((c) => this.#adapters.has(c.name)).map(toView);
  }

  async close(): Promise<void> {
    await Promise.allSettled([...this.#adapters.values()].map((a) => a.close()));
  }
}

function toView(config: ParticipantConfig): ParticipantView {
  const redact = (address: string): string => redactUrl(address, { loneUserIsSecret: kindSpec(config.kind).loneUserIsSecret === true });
  return {
    name: config.name,
    kind: config.kind,
    ...(config.connectionString === undefined ? {} : { connectionString: redact(config.connectionString) }),
    ...(config.baseUrl === undefined ? {} : { baseUrl: redact(config.baseUrl) }),
    ...(config.url === undefined ? {} : { url: redact(config.url) }),
    ...(config.options === undefined ? {} : { options: config.options }),
    ...(config.auth === undefined ? {} : { auth: { type: config.auth.type } }),
    registeredAt: config.registeredAt,
    ...(config.warnings === undefined ? {} : { warnings: config.warnings }),
  };
}
