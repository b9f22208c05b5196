/**
 * vitest globalSetup: obtains the real Postgres A/B and Redis servers once for the whole run
 * and hands their URLs to the tests (`inject('pgUrlA')` etc.); teardown releases them.
 */
import type { TestProject } from 'vitest/node';
import { releaseStalePortReservations } from './free-port.js';
import { acquireServers, type ServerSource } from './servers.js';

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const t0 = Date.now();
  const servers = await acquireServers();
  console.log(
    `[tcx test servers] postgres (${servers.pgSource}) A=${servers.pgUrlA} B=${servers.pgUrlB}; ` +
      `redis (${servers.redisSource}) ${servers.redisUrl}; ready in ${Date.now() - t0} ms`,
  );
  project.provide('pgUrlA', servers.pgUrlA);
  project.provide('pgUrlB', servers.pgUrlB);
  project.provide('redisUrl', servers.redisUrl);
  project.provide('pgSource', servers.pgSource);
  return async () => {
    await servers.release();
    releaseStalePortReservations();
  };
}

declare module 'vitest' {
  export interface ProvidedContext {
    pgUrlA: string;
    pgUrlB: string;
    redisUrl: string;
    /** 'env' when A and B came from TCX_TEST_PG_URL_A/B (then they may share one server). */
    pgSource: ServerSource;
  }
}
