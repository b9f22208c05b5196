/**
 * The coordinator as one object: opens the log, rebuilds the participant
 * registry, resumes unfinished transactions, sweeps participants for orphaned
 * prepared branches, and keeps sweeping while it runs. The API talks to this
 * and to the TransactionManager / ParticipantRegistry it exposes — never to
 * the log directly.
 */

import { randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import type { Config } from '../config.js';
import { ConfigError } from '../config.js';
import { CoordinatorError, errorMessage } from '../errors.js';
import type { Decision } from '../protocol/commit-protocol.js';
import type { LogIo } from '../log/file-log.js';
import { CoordinatorLog } from './coordinator-log.js';
import { gidPrefix, isValidCoordinatorId } from '../participants/gid.js';
import { ManualResolver, type ManualResolutionView, type PreparedBranchView } from './manual-resolution.js';
import { checkParticipantAddress } from './participant-address.js';
import { assertAllowedAddress } from './participant-allowlist.js';
import { kindSpec } from './participant-kinds.js';
import { ParticipantRegistry, type ParticipantView, type RegistrationRequest } from './participant-registry.js';
import { RecoverySweeper, type SweepReport } from './recovery.js';
import { TransactionManager } from './transaction-manager.js';

export type { ManualResolutionView, PreparedBranchView } from './manual-resolution.js';

/** The registry every instance over one log shares (src/cluster/shared-participants.ts). */
export interface SharedRegistry {
  /** False when the name is taken by a different registration. */
  publish(request: RegistrationRequest): Promise<boolean>;
  withdraw(name: string): Promise<void>;
}

export interface CoordinatorLease {
  readonly epoch: string;
  /** True while the lease is safely held (renewed recently enough, by the local clock). */
  readonly held: () => boolean;
}

export interface Health {
  readonly status: 'ok' | 'unhealthy';
  readonly coordinatorId: string;
  readonly reason?: string;
  readonly liveTransactions: number;
  readonly activeTransactions: number;
  readonly inDoubtTransactions: number;
  readonly participants: number;
  readonly log: ReturnType<CoordinatorLog['stats']>;
  /** Finished transactions kept for queries (the retention window). */
  readonly retainedTransactions: number;
  readonly memory: { readonly rssBytes: number; readonly heapUsedBytes: number; readonly externalBytes: number };
  readonly lastRecoverySweep?: RecoverySweeper['lastReport'];
}

export class Coordinator {
  readonly coordinatorId: string;
  readonly transactions: TransactionManager;
  readonly #registry: ParticipantRegistry;
  readonly #log: CoordinatorLog;
  readonly #sweeper: RecoverySweeper;
  readonly #logger: Logger;
  readonly #config: Config;
  readonly #operator: ManualResolver;
  readonly #shared: SharedRegistry | undefined;

  private constructor(
    config: Config,
    log: CoordinatorLog,
    coordinatorId: string,
    logger: Logger,
    cluster: { lease?: CoordinatorLease; shared?: SharedRegistry; liveElsewhere?: (coordinatorId: string) => string | undefined },
  ) {
    const { lease, liveElsewhere } = cluster;
    this.#shared = cluster.shared;
    this.#config = config;
    this.#log = log;
    this.coordinatorId = coordinatorId;
    this.#logger = logger;
    this.#registry = new ParticipantRegistry(
      log,
      {
        participantTimeoutMs: config.participantTimeoutMs,
        connectTimeoutMs: config.connectTimeoutMs,
        statementTimeoutMs: config.statementTimeoutMs,
        idleInTransactionTimeoutMs: config.maxTimeoutMs + 60_000,
        pgMaxSessions: config.pgMaxSessions,
        coordinatorUrl: config.publicUrl,
        uncertainTimeoutMs: config.uncertainTimeoutMs,
      },
      logger,
    );
    this.transactions = new TransactionManager(
      log,
      this.#registry,
      {
        coordinatorId,
        defaultTimeoutMs: config.defaultTimeoutMs,
        maxTimeoutMs: config.maxTimeoutMs,
        maxActiveTransactions: config.maxActiveTransactions,
        tokenQuotas: { maxActive: config.tokenMaxActiveTransactions, beginsPerSecond: config.tokenBeginsPerSecond },
        commitWaitMs: config.commitWaitMs,
        prepareWaitMs: config.statementTimeoutMs + config.participantTimeoutMs + config.connectTimeoutMs + 5_000,
        retry: { initialMs: config.retryInitialMs, maxMs: config.retryMaxMs },
        ...(lease === undefined ? {} : { leaseHeld: lease.held }),
      },
      logger,
    );
    this.#sweeper = new RecoverySweeper({
      log,
      registry: this.#registry,
      manager: this.transactions,
      coordinatorId,
      logger,
      ...(lease === undefined ? {} : { leaseHeld: lease.held }),
    });
    this.#operator = new ManualResolver({ coordinatorId, log, registry: this.#registry, transactions: this.transactions, logger, liveElsewhere });
  }

  /** Opens the log and runs start-up recovery. The coordinator is ready when this resolves. */
  /**
   * `lease` (a Postgres log): the epoch of the lease the caller holds on the coordinator id, and
   * whether it is still safely held — no participant is called for this id once it is not.
   */
  static async start(
    config: Config,
    logger: Logger,
    internal: {
      logIo?: LogIo;
      lease?: CoordinatorLease;
      shared?: SharedRegistry;
      /** With a shared log: the instance that holds the lease on another coordinator id, if it is live. */
      liveElsewhere?: (coordinatorId: string) => string | undefined;
    } = {},
  ): Promise<Coordinator> {
    const started = Date.now();
    // Checked before any log opens: with a Postgres log the id keys the records.
    if ((config.coordinatorId !== undefined || config.logUrl !== undefined) && !isValidCoordinatorId(config.coordinatorId ?? '')) {
      throw new ConfigError('TCX_COORDINATOR_ID must be 1-40 characters of A-Z, a-z, 0-9 and -');
    }
    if (config.logUrl !== undefined && internal.lease === undefined) throw new Error('a coordinator on a Postgres log runs under a lease (see src/cluster)');
    const { log, replayed } = await CoordinatorLog.open({
      dir: config.dataDir,
      ...(config.logUrl === undefined || internal.lease === undefined
        ? {}
        : { url: config.logUrl, coordinatorId: config.coordinatorId ?? '', leaseEpoch: internal.lease.epoch, leaseMs: config.leaseMs }),
      segmentMaxBytes: config.segmentMaxBytes,
      retentionMs: config.retentionMs,
      maxRetainedTransactions: config.maxRetainedTransactions,
      logger,
      ...(internal.logIo === undefined ? {} : { io: internal.logIo }),
    });
    let coordinator: Coordinator | undefined;
    let resumed: number;
    let sweep: SweepReport;
    try {
      const coordinatorId = await resolveCoordinatorId(config, log);
      coordinator = new Coordinator(config, log, coordinatorId, logger, internal);
      await coordinator.#registry.loadFromLog();
      resumed = await coordinator.transactions.resumeUnfinished();
      sweep = await coordinator.#sweeper.sweep();
    } catch (err) {
      // Nothing of a half-started coordinator may go on running: delivery loops, pools, the log.
      if (coordinator === undefined) await log.close().catch(() => undefined);
      else await coordinator.halt();
      throw err;
    }
    const coordinatorId = coordinator.coordinatorId;
    coordinator.#sweeper.start(config.recoveryIntervalMs);
    logger.info(
      { coordinatorId, replayedRecords: replayed, resumedTransactions: resumed, sweep, startupMs: Date.now() - started },
      'recovery: coordinator started',
    );
    return coordinator;
  }

  async registerParticipant(request: RegistrationRequest): Promise<ParticipantView> {
    const view = await this.registerHere(request);
    if (this.#shared !== undefined && !(await this.#shared.publish(request))) {
      await this.#registry.remove(request.name);
      throw new CoordinatorError('PARTICIPANT_EXISTS', `participant ${request.name} is registered through another instance with other details`);
    }
    return view;
  }

  /** Registers in this coordinator id's own log only (the shared registry already has it). */
  async registerHere(request: RegistrationRequest): Promise<ParticipantView> {
    if (this.#log.failed !== undefined) throw new CoordinatorError('LOG_UNAVAILABLE');
    const spec = kindSpec(request.kind);
    const field = spec.addressField;
    const address = request[field] ?? '';
    const url = checkParticipantAddress(spec.address, field, address);
    assertAllowedAddress(url, this.#config.participantHosts, spec.driverHosts?.(address) ?? []);
    return this.#registry.register(request);
  }

  hasParticipant(name: string): boolean {
    return this.#registry.has(name);
  }

  /** How a participant was registered here, secrets included (for the shared registry), or undefined. */
  registrationOf(name: string): RegistrationRequest | undefined {
    const c = this.#registry.config(name);
    if (c === undefined) return undefined;
    return {
      name: c.name,
      kind: c.kind,
      ...(c.connectionString === undefined ? {} : { connectionString: c.connectionString }),
      ...(c.baseUrl === undefined ? {} : { baseUrl: c.baseUrl }),
      ...(c.url === undefined ? {} : { url: c.url }),
      ...(c.options === undefined ? {} : { options: c.options }),
      ...(c.auth === undefined ? {} : { auth: c.auth }),
    };
  }

  /**
   * Removes a participant that no unfinished transaction uses and that holds no prepared
   * branch of this coordinator. `unreachable` (an operator's, with a reason): a participant
   * gone for good cannot be checked for prepared branches; remove it anyway, audited.
   */
  async removeParticipant(name: string, unreachable?: { reason: string; actor: string }): Promise<void> {
    this.#registry.view(name); // 404 when unknown
    // From here on no new branch may enlist it, so the checks below cannot go stale.
    this.#registry.beginRemoval(name);
    try {
      await this.#removeParticipant(name, unreachable);
    } finally {
      this.#registry.endRemoval(name);
    }
    await this.#shared?.withdraw(name);
  }

  async #removeParticipant(name: string, unreachable: { reason: string; actor: string } | undefined): Promise<void> {
    if (await this.transactions.participantInUse(name)) {
      throw new CoordinatorError(
        'PARTICIPANT_IN_USE',
        `participant ${name} has branches in unfinished transactions` +
          (unreachable === undefined ? '' : ' (abort them and forget their branches on it first: POST /v1/transactions/{id}/branches/{branchId}/forget)'),
      );
    }
    // Branches the log never heard of (a crash between PREPARE and the log write) would be
    // orphaned for good once the participant is forgotten: refuse while any is prepared.
    let prepared: string[];
    try {
      prepared = await this.#registry.adapter(name).findPrepared(gidPrefix(this.coordinatorId));
    } catch (err) {
      // Only a participant that cannot be reached at all: one that answers (a refused
      // password, an error) may still hold prepared branches nobody would roll back.
      if (unreachable !== undefined && (!(err instanceof CoordinatorError) || err.code === 'PARTICIPANT_UNREACHABLE')) {
        await this.#registry.remove(name, { ...unreachable, reason: `${unreachable.reason} (unreachable: ${errorMessage(err)})` });
        return;
      }
      if (err instanceof CoordinatorError && err.code !== 'PARTICIPANT_UNREACHABLE') throw err;
      throw new CoordinatorError('PARTICIPANT_UNREACHABLE', `cannot check ${name} for prepared branches before removing it: ${errorMessage(err)}`, {
        cause: err,
        details: { participant: name, hint: 'if it is gone for good: DELETE with ?unreachable=true&reason=…' },
      });
    }
    if (prepared.length > 0) {
      throw new CoordinatorError('PARTICIPANT_IN_USE', `participant ${name} holds ${prepared.length} prepared branch(es) of this coordinator`, {
        details: { prepared: prepared.slice(0, 20) },
      });
    }
    await this.#registry.remove(name);
  }

  participant(name: string): ParticipantView {
    return this.#registry.view(name);
  }

  participants(): ParticipantView[] {
    return this.#registry.views();
  }

  /** Branches prepared on a participant under a coordinator id, with what the log says of each (operators; read-only). */
  preparedBranches(name: string, coordinatorId = this.coordinatorId): Promise<PreparedBranchView[]> {
    return this.#operator.preparedBranches(name, coordinatorId);
  }

  /** Resolves one prepared branch by hand, audited (see ManualResolver). */
  resolveManually(name: string, gid: string, request: { outcome: Decision; reason: string; actor: string }): Promise<ManualResolutionView> {
    return this.#operator.resolveManually(name, gid, request);
  }

  sweep(): Promise<SweepReport> {
    return this.#sweeper.sweep();
  }

  health(): Health {
    const failed = this.#log.failed;
    return {
      status: failed === undefined ? 'ok' : 'unhealthy',
      coordinatorId: this.coordinatorId,
      ...(failed === undefined ? {} : { reason: `write-ahead log failed: ${failed.message}` }),
      liveTransactions: this.transactions.liveCount(),
      activeTransactions: this.transactions.activeCount(),
      inDoubtTransactions: this.transactions.inDoubtCount(),
      participants: this.#registry.views().length,
      log: this.#log.stats(),
      retainedTransactions: this.retainedTransactions,
      memory: memory(),
      ...(this.#sweeper.lastReport === undefined ? {} : { lastRecoverySweep: this.#sweeper.lastReport }),
    };
  }

  /** Finished transactions kept for queries. */
  get retainedTransactions(): number {
    return this.#log.finishedCount();
  }

  /** Set once the write-ahead log failed (fail-stop): this coordinator decides nothing more. */
  get logFailed(): Error | undefined {
    return this.#log.failed;
  }

  /**
   * Nothing is left to do under this id: no transaction runs or is unfinished, none is retained
   * for queries, and the last recovery sweep reached every participant and left nothing prepared.
   */
  settled(): boolean {
    return this.transactions.liveCount() === 0 && this.#sweeper.lastPassClean && this.#log.retained() === 0;
  }

  /** True when this coordinator runs or knows the transaction. */
  async knows(transactionId: string): Promise<boolean> {
    return this.transactions.isLive(transactionId) || (await this.#log.transaction(transactionId)) !== undefined;
  }

  /** Stops at once, writing and sending nothing more: the lease on its id passed to another instance, or its log failed. */
  async halt(): Promise<void> {
    this.transactions.halt();
    await this.#sweeper.stopped();
    await this.#log.close().catch(() => undefined); // fenced out: nothing more reaches the log
    await this.#registry.close();
    this.#logger.warn({ coordinatorId: this.coordinatorId }, 'cluster: coordinator halted: it writes and sends nothing more under this id');
  }

  /** Graceful stop: no new work, in-flight phase 2 finished up to the deadline, log flushed. */
  async stop(deadlineMs = 10_000): Promise<void> {
    this.#sweeper.stop();
    await this.transactions.drain(deadlineMs);
    await this.#log.close().catch((err: unknown) => this.#logger.error({ err }, 'closing the log failed'));
    await this.#registry.close();
    this.#logger.info({ config: { dataDir: this.#config.dataDir } }, 'coordinator stopped');
  }
}

function memory(): Health['memory'] {
  const m = process.memoryUsage();
  return { rssBytes: m.rss, heapUsedBytes: m.heapUsed, externalBytes: m.external };
}

async function resolveCoordinatorId(config: Config, log: CoordinatorLog): Promise<string> {
  const logged = await log.coordinatorId();
  if (logged !== undefined) {
    if (config.coordinatorId !== undefined && config.coordinatorId !== logged) {
      throw new ConfigError(
        `TCX_COORDINATOR_ID is ${config.coordinatorId} but the log in ${config.dataDir} belongs to coordinator ${logged}; ` +
          'changing it would orphan every branch prepared under the old id',
      );
    }
    return logged;
  }
  const id = config.coordinatorId ?? randomBytes(5).toString('hex');
  await log.force({ t: 'coordinator', coordinatorId: id, at: new Date().toISOString() });
  return id;
}
