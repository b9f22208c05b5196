/**
 * The Dockerfile and docker-compose.yml, checked without a Docker engine: the image runs
 * Node 22 as a user other than root with a 0700 data directory; the compose file parses,
 * allows every participant service it runs, and registers the ledger where the README says;
 * and the healthcheck commands, run by hand, pass against a live coordinator and ledger and
 * fail against an unhealthy one or when nothing answers.
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { buildLedger, type Ledger } from '../../src/examples/ledger-service.js';
import { getFreePort } from '../support/free-port.js';
import { startCoordinator, type InProcessCoordinator } from '../support/in-process-coordinator.js';

const run = promisify(execFile);
const dockerfile = fs.readFileSync('Dockerfile', 'utf8');
const readme = fs.readFileSync('README.md', 'utf8');

interface Service {
  command?: string[];
  environment?: Record<string, string>;
  healthcheck?: { test: string[] };
  depends_on?: Record<string, unknown>;
}
const compose = parse(fs.readFileSync('docker-compose.yml', 'utf8')) as { services: Record<string, Service> };
const service = (name: string): Service => compose.services[name] ?? {};

/** The command of the Dockerfile's HEALTHCHECK (exec form). */
const imageHealthcheck = (): string[] => JSON.parse(/^HEALTHCHECK[^\n]*\\\n\s*CMD (\[.*\])$/m.exec(dockerfile)?.[1] ?? '[]') as string[];

/** Runs `node -e <script>` as the healthcheck would; resolves its exit code. */
async function exitCode(command: string[], env: Record<string, string> = {}): Promise<number> {
  expect(command.slice(0, 2)).toEqual(['node', '-e']);
  try {
    await run(process.execPath, ['-e', command[2] ?? ''], { env: { ...process.env, ...env }, timeout: 15_000 });
    return 0;
  } catch (err) {
    return (err as { code?: number }).code ?? -1;
  }
}

let c: InProcessCoordinator;
let coordinatorPort: number;
let ledger: Ledger;
let ledgerPort: number;

beforeAll(async () => {
  c = await startCoordinator();
  await c.app.listen({ host: '127.0.0.1', port: 0 });
  coordinatorPort = (c.app.server.address() as AddressInfo).port;
  ledger = await buildLedger({ balances: { alice: 100 } });
  await ledger.app.listen({ host: '127.0.0.1', port: 0 });
  ledgerPort = (ledger.app.server.address() as AddressInfo).port;
});

afterAll(async () => {
  await c?.destroy();
  await ledger?.app.close();
});

describe('the image', () => {
  it('runs Node 22 as the unprivileged node user, its data directory its own and 0700', () => {
    expect(dockerfile.match(/^FROM \S+/gm)).toEqual(['FROM node:22-bookworm-slim', 'FROM node:22-bookworm-slim']);
    expect(dockerfile).toMatch(/^USER node$/m);
    expect(dockerfile).toMatch(/chown node:node \/var\/lib\/tcx/);
    expect(dockerfile).toMatch(/chmod 0700 \/var\/lib\/tcx/);
    expect(dockerfile.indexOf('USER node')).toBeLessThan(dockerfile.indexOf('CMD ["node", "dist/main.js"]'));
    expect(fs.readFileSync('.dockerignore', 'utf8').split('\n')).toEqual(expect.arrayContaining(['node_modules', 'dist', 'data', 'test', '.git']));
  });

  it('has a healthcheck that passes on a healthy coordinator and fails on an unhealthy one or when nothing answers', async () => {
    const command = imageHealthcheck();
    expect(command[2]).toMatch(/AbortSignal\.timeout\(\d+\)/); // bounded: a hung coordinator fails it too
    expect(await exitCode(command, { TCX_PORT: String(coordinatorPort) })).toBe(0);
    expect(await exitCode(command, { TCX_PORT: String(await getFreePort()) })).toBe(1);
    const unhealthy = http.createServer((_req, res) => {
      res.statusCode = 503;
      res.end('{"status":"unhealthy"}');
    });
    await new Promise<void>((r) => unhealthy.listen(0, '127.0.0.1', r));
    try {
      expect(await exitCode(command, { TCX_PORT: String((unhealthy.address() as AddressInfo).port) })).toBe(1);
    } finally {
      unhealthy.close();
    }
  });
});

describe('the compose file', () => {
  it('allows every participant service it runs, and runs the ledger where the README registers it', () => {
    const coordinator = service('coordinator');
    const allowed = (coordinator.environment?.TCX_PARTICIPANT_HOSTS ?? '').split(',');
    for (const name of ['bank-a', 'bank-b', 'shop-db', 'redis', 'nats', 'ledger']) expect(allowed).toContain(name);
    const ledgerService = service('ledger');
    expect(ledgerService.command).toEqual(['node', 'dist/examples/ledger-service.js']);
    expect(ledgerService.environment?.HOST).toBe('0.0.0.0');
    expect(ledgerService.environment?.COORDINATOR_TOKEN?.split(',')[0]).toBe(coordinator.environment?.TCX_API_TOKENS?.split(',')[0]);
    expect(readme).toContain(`"baseUrl":"http://ledger:${ledgerService.environment?.PORT}"`);
    expect(Object.keys(coordinator.depends_on ?? {})).toContain('ledger');
  });

  it('runs three instances with their own ids over one log database in the cluster profile', () => {
    const merged = parse(fs.readFileSync('docker-compose.yml', 'utf8'), { merge: true }) as { services: Record<string, Service & { profiles?: string[]; restart?: string }> };
    const instances = ['tcx-1', 'tcx-2', 'tcx-3'].map((name) => merged.services[name]!);
    expect(new Set(instances.map((i) => i.environment?.TCX_COORDINATOR_ID))).toEqual(new Set(['tcx-1', 'tcx-2', 'tcx-3']));
    expect(new Set(instances.map((i) => i.environment?.TCX_LOG_URL)).size).toBe(1);
    expect(instances[0]!.environment?.TCX_LOG_URL).toMatch(/^postgres:\/\/[^@]+@log-db:5432\//);
    for (const i of instances) {
      expect(i.profiles).toEqual(['cluster']);
      expect(i.restart).toBe('unless-stopped'); // a stepped-down instance comes back and asks for its id
      expect(i.environment?.TCX_PUBLIC_URL).toBe(`http://${i.environment?.TCX_COORDINATOR_ID}:7070`);
      expect(Object.keys(i.depends_on ?? {})).toContain('log-db');
    }
    expect(merged.services['log-db']?.profiles).toEqual(['cluster']);
  });

  it('has a ledger healthcheck that passes on a running ledger and fails when nothing answers', async () => {
    const command = service('ledger').healthcheck?.test.slice(1) ?? [];
    const port = service('ledger').environment?.PORT ?? '';
    const at = (p: number): string[] => command.map((part) => part.replace(`127.0.0.1:${port}`, `127.0.0.1:${p}`));
    expect(command.join(' ')).toContain(`127.0.0.1:${port}/accounts`);
    expect(await exitCode(at(ledgerPort))).toBe(0);
    expect(await exitCode(at(await getFreePort()))).toBe(1);
  });
});
