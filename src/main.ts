/**
 * Entry point: `node dist/main.js`. Reads the environment (see config.ts),
 * recovers from the log, then serves the API. SIGTERM/SIGINT stop gracefully:
 * no new transactions, in-flight phase 2 finished up to a deadline, log
 * flushed, exit 0.
 */

import Fastify, { LogController, type FastifyBaseLogger } from 'fastify';
import { buildServer } from './api/server.js';
import { installErrorHandling } from './api/error-handler.js';
import { coordinatorMetrics, installMetricsRoute } from './api/operator-routes.js';
import { Cluster } from './cluster/cluster.js';
import { ConfigError, loadConfig, type Config } from './config.js';
import { Coordinator } from './coordinator/coordinator.js';
import { armFailPoints } from './coordinator/fail-points.js';
import { createLogger } from './logger.js';

async function main(): Promise<void> {
  const bootLogger = createLogger();
  let config;
  try {
    config = loadConfig();
  } catch (err) {
    bootLogger.fatal({ err: err instanceof Error ? err.message : String(err) }, 'invalid configuration');
    process.exit(2);
  }
  const logger = createLogger({ level: config.logLevel, format: config.logFormat });
  armFailPoints(config.failPoint);
  let coordinator: Coordinator;
  let cluster: Cluster | undefined;
  try {
    if (config.logUrl === undefined) {
      coordinator = await Coordinator.start(config, logger);
    } else {
      // A shared Postgres log: this instance runs its id under a lease, and adopts lapsed ones.
      cluster = await Cluster.start(config, logger, (reason) => {
        logger.fatal({ reason }, 'cluster: the lease on this instance\'s id was lost; exiting (a supervisor restarts it, and it asks for its id back)');
        process.exit(3);
      });
      coordinator = cluster.home;
    }
  } catch (err) {
    logger.fatal({ err: err instanceof ConfigError ? err.message : err }, 'coordinator failed to start');
    process.exit(err instanceof ConfigError ? 2 : 1);
  }
  const metrics = coordinatorMetrics(coordinator);
  const app = buildServer(coordinator, logger, {
    bodyLimitBytes: config.bodyLimitBytes,
    apiTokens: config.apiTokens,
    adminTokens: config.adminTokens,
    metrics,
    ...(cluster === undefined ? {} : { cluster }),
  });
  await app.listen({ host: config.host, port: config.port });
  // /metrics alone, without a token, for a Prometheus that can reach only this port.
  const metricsApp = config.metricsPort === 0 ? undefined : Fastify({ loggerInstance: logger as FastifyBaseLogger, logController: new LogController({ disableRequestLogging: true }) });
  if (metricsApp !== undefined) {
    installErrorHandling(metricsApp);
    installMetricsRoute(metricsApp, metrics);
    await metricsApp.listen({ host: config.host, port: config.metricsPort });
  }
  logger.info(startupSummary(config, coordinator, cluster !== undefined), `listening on http://${config.host}:${config.port} (docs at /docs)`);

  let stopping = false;
  const stop = async (signal: string): Promise<void> => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal }, 'shutting down');
    const force = setTimeout(() => {
      logger.error('shutdown deadline passed; exiting');
      process.exit(1);
    }, 30_000);
    force.unref();
    await app.close();
    await metricsApp?.close();
    await (cluster === undefined ? coordinator.stop(10_000) : cluster.stop(10_000));
    process.exit(0);
  };
  process.on('SIGTERM', () => void stop('SIGTERM'));
  process.on('SIGINT', () => void stop('SIGINT'));
  process.on('unhandledRejection', (reason) => {
    logger.error({ err: reason }, 'unhandled promise rejection');
  });
}

/** What an operator wants to see first: where it listens, which log, whether auth is on, who takes part. */
function startupSummary(config: Config, coordinator: Coordinator, clustered: boolean): Record<string, unknown> {
  const health = coordinator.health();
  return {
    coordinatorId: coordinator.coordinatorId,
    url: `http://${config.host}:${config.port}`,
    log: config.logUrl === undefined ? { backend: 'file', dataDir: config.dataDir } : { backend: 'postgres', database: logDatabase(config.logUrl), clustered, leaseMs: config.leaseMs },
    tokens: config.apiTokens.length + config.adminTokens.length === 0 ? 'none: no authentication (loopback only)' : { apiTokens: config.apiTokens.length, adminTokens: config.adminTokens.length },
    participants: coordinator.participants().map((p) => `${p.name} (${p.kind})`),
    liveTransactions: health.liveTransactions,
    inDoubtTransactions: health.inDoubtTransactions,
    ...(config.metricsPort === 0 ? {} : { metricsUrl: `http://${config.host}:${config.metricsPort}/metrics` }),
  };
}

/** host:port/database of the log's URL: never its user or password. */
function logDatabase(url: string): string {
  try {
    const u = new URL(url);
    return `${u.host}${u.pathname}`;
  } catch {
    return '(unparsable URL)';
  }
}

void main();
