/**
 * Runs a real Coordinator (file log in a temp dir, real participants) inside
 * the test process, with its API reachable through `app.inject()`.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { FastifyInstance } from 'fastify';
import type { DestinationStream } from 'pino';
import { buildServer } from '../../src/api/server.js';
import { loadConfig } from '../../src/config.js';
import { Coordinator } from '../../src/coordinator/coordinator.js';
import type { LogIo } from '../../src/log/file-log.js';
import { createLogger } from '../../src/logger.js';
import { installResponseValidation } from './response-contract.js';

/** An answer through `app.inject`: its status, and its JSON body (undefined when empty). */
export interface ApiAnswer {
  readonly status: number;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- JSON answers are inspected freely
  readonly body: any;
}

export interface InProcessCoordinator {
  readonly coordinator: Coordinator;
  readonly app: FastifyInstance;
  readonly dataDir: string;
  /** One request to the API, in process (no socket): `payload` is sent as JSON. */
  api(method: 'GET' | 'POST' | 'DELETE', url: string, payload?: unknown): Promise<ApiAnswer>;
  /** Stops the coordinator (graceful) but keeps the data dir. */
  stop(): Promise<void>;
  /** Stops and removes the data dir. */
  destroy(): Promise<void>;
}

export function tempDataDir(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'tcx-coord-'));
}

export async function startCoordinator(
  env: Record<string, string> = {},
  dataDir = tempDataDir(),
  /** logIo: the log's file I/O; logDestination: where log lines go (TCX_LOG_LEVEL in `env` sets the level). */
  internal: { logIo?: LogIo; logDestination?: DestinationStream } = {},
): Promise<InProcessCoordinator> {
  const config = loadConfig({
    TCX_DATA_DIR: dataDir,
    TCX_RETRY_INITIAL_MS: '20',
    TCX_RETRY_MAX_MS: '500',
    TCX_LOG_LEVEL: process.env.TCX_TEST_LOG_LEVEL ?? 'silent',
    ...env,
  });
  const logger = createLogger({ level: config.logLevel, ...(internal.logDestination === undefined ? {} : { destination: internal.logDestination }) });
  const coordinator = await Coordinator.start(config, logger, internal.logIo === undefined ? {} : { logIo: internal.logIo });
  const app = buildServer(coordinator, logger, {
    bodyLimitBytes: config.bodyLimitBytes,
    apiTokens: config.apiTokens,
    adminTokens: config.adminTokens,
  });
  // Every answer is checked against openapi.yaml; a mismatch fails the test (response-contract-setup.ts).
  installResponseValidation(app);
  await app.ready();
  let stopped = false;
  const stop = async (): Promise<void> => {
    if (stopped) return;
    stopped = true;
    await app.close();
    await coordinator.stop(2_000);
  };
  return {
    coordinator,
    app,
    dataDir,
    api: async (method, url, payload) => {
      const res = await app.inject({ method, url, ...(payload === undefined ? {} : { payload: payload as object }) });
      return { status: res.statusCode, body: res.body === '' ? undefined : res.json() };
    },
    stop,
    destroy: async () => {
      await stop();
      fs.rmSync(dataDir, { recursive: true, force: true });
    },
  };
}
