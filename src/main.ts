/**
 * Entry point: `node dist/main.js`. Reads the environment (see config.ts),
 * recovers from the log, then serves the API. SIGTERM/SIGINT stop gracefully:
 * no new transactions, in-flight phase 2 finished up to a deadline, log
 * flushed, exit 0.
 */

import { buildServer } from './api/server.js';
import { Cluster } from './cluster/cluster.js';
import { ConfigError, loadConfig } from './config.js';
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
  const logger = createLogger({ level: config.logLevel });
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
  const app = buildServer(coordinator, logger, {
    bodyLimitBytes: config.bodyLimitBytes,
    apiTokens: config.apiTokens,
    adminTokens: config.adminTokens,
    ...(cluster === undefined ? {} : { cluster }),
  });
  await app.listen({ host: config.host, port: config.port });
  logger.info({ host: config.host, port: config.port, dataDir: config.dataDir, coordinatorId: coordinator.coordinatorId }, 'listening');

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
    await (cluster === undefined ? coordinator.stop(10_000) : cluster.stop(10_000));
    process.exit(0);
  };
  process.on('SIGTERM', () => void stop('SIGTERM'));
  process.on('SIGINT', () => void stop('SIGINT'));
  process.on('unhandledRejection', (reason) => {
    logger.error({ err: reason }, 'unhandled promise rejection');
  });
}

void main();
