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
import { CoordinatorError } from '../errors.js';
import { CoordinatorLog } from './coordinator-log.js';
import { armFailPoints } from './fail-points.js';
import { isValidCoordinatorId } from './gid.js';
import { ParticipantRegistry, type ParticipantView, type RegistrationRequest } from './participant-registry.js';
import { RecoverySweeper, type SweepReport } from './recovery.js';
import { TransactionManager } from './transaction-manager.js';

export interface Health {
  readonly status: 'ok' | 'unhealthy';
  readonly coordinatorId: string;
  readonly reason?: string;
  readonly liveTransactions: number;
  readonly activeTransactions: number;
  readonly inDoubtTransactions: number;
  readonly participants: number;
  readonly log: ReturnType<CoordinatorLog['stats']>;
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

  private constructor(config: Config, log: CoordinatorLog, coordinatorId: string, logger: Logger) {
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
        commitWaitMs: config.commitWaitMs,
        prepareWaitMs: config.statementTimeoutMs + config.participantTimeoutMs + config.connectTimeoutMs + 5_000,
        retry: { initialMs: config.retryInitialMs, maxMs: config.retryMaxMs },
      },
      logger,
    );
    this.#sweeper = new RecoverySweeper({ log, registry: this.#registry, manager: this.transactions, coordinatorId, logger });
  }

  /** Opens the log and runs start-up recovery. The coordinator is ready when this resolves. */
  static async start(config: Config, logger: Logger): Promise<Coordinator> {
    armFailPoints(config.failPoint);
    const started = Date.now();
    const { log, replayed } = await CoordinatorLog.open({
      dir: config.dataDir,
      segmentMaxBytes: config.segmentMaxBytes,
      retentionMs: config.retentionMs,
      maxRetainedTransactions: config.maxRetainedTransactions,
      logger,
    });
    const coordinatorId = await resolveCoordinatorId(config, log);
    const coordinator = new Coordinator(config, log, coordinatorId, logger);
    coordinator.#registry.loadFromLog();
    const resumed = coordinator.transactions.resumeUnfinished();
    const sweep = await coordinator.#sweeper.sweep();
    coordinator.#sweeper.start(config.recoveryIntervalMs);
    logger.info(
      { coordinatorId, replayedRecords: replayed, resumedTransactions: resumed, sweep, startupMs: Date.now() - started },
      'recovery: coordinator started',
    );
    return coordinator;
  }

  registerParticipant(request: RegistrationRequest): Promise<ParticipantView> {
    if (this.#log.failed !== undefined) throw new CoordinatorError('LOG_UNAVAILABLE');
    return this.#registry.register(request);
  }

  async removeParticipant(name: string): Promise<void> {
    this.#registry.view(name); // 404 when unknown
    if (this.transactions.participantInUse(name)) {
      throw new CoordinatorError('PARTICIPANT_IN_USE', `participant ${name} has branches in unfinished transactions`);
    }
    await this.#registry.remove(name);
  }

  participant(name: string): ParticipantView {
    return this.#registry.view(name);
  }

  participants(): ParticipantView[] {
    return this.#registry.views();
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
      inDoubtTransactions: this.transactions.list({ state: 'in-doubt', limit: Number.MAX_SAFE_INTEGER }).length,
      participants: this.#registry.views().length,
      log: this.#log.stats(),
      ...(this.#sweeper.lastReport === undefined ? {} : { lastRecoverySweep: this.#sweeper.lastReport }),
    };
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

async function resolveCoordinatorId(config: Config, log: CoordinatorLog): Promise<string> {
  const logged = log.state.coordinatorId;
  if (config.coordinatorId !== undefined && !isValidCoordinatorId(config.coordinatorId)) {
    throw new ConfigError('TCX_COORDINATOR_ID must be 1-40 characters of A-Z, a-z, 0-9 and -');
  }
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
