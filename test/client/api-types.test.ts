/**
 * src/client/api-types.ts is generated from openapi.yaml (`npm run generate:client`). This
 * regenerates it into a temp file with the same two steps — openapi-typescript's CLI, then
 * tools/stamp-client-types.mjs — and fails when the committed file differs: the spec changed
 * and the client's types were not regenerated. It also checks that the client has one method
 * per operationId of the spec.
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { TcxClient } from '../../src/client/index.js';
import { REPO_ROOT } from '../support/coordinator-process.js';

const run = promisify(execFile);
const COMMITTED = path.join(REPO_ROOT, 'src', 'client', 'api-types.ts');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tcx-api-types-'));

afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

describe('the generated API types', () => {
  it('are what openapi-typescript makes of openapi.yaml now (else: npm run generate:client)', async () => {
    const fresh = path.join(tmp, 'api-types.ts');
    const cli = path.join(REPO_ROOT, 'node_modules', 'openapi-typescript', 'bin', 'cli.js');
    const env = { ...process.env, REDOCLY_TELEMETRY: 'off', REDOCLY_SUPPRESS_UPDATE_NOTICE: 'true', NO_COLOR: '1' };
    // The same command as `npm run generate:client` (package.json), into the temp file.
    const redocly = path.join('tools', 'client-types.redocly.yaml');
    await run(process.execPath, [cli, 'openapi.yaml', '--redocly', redocly, '-o', fresh], { cwd: REPO_ROOT, env, timeout: 60_000 });
    await run(process.execPath, [path.join(REPO_ROOT, 'tools', 'stamp-client-types.mjs'), fresh], { cwd: REPO_ROOT, timeout: 10_000 });
    const expected = fs.readFileSync(fresh, 'utf8');
    const committed = fs.readFileSync(COMMITTED, 'utf8');
    expect(committed.includes('npm run generate:client'), 'the header says how to regenerate the file').toBe(true);
    if (committed !== expected) {
      const a = committed.split('\n');
      const b = expected.split('\n');
      const line = a.findIndex((l, i) => l !== b[i]);
      expect.fail(
        `src/client/api-types.ts is stale: run \`npm run generate:client\` (first difference at line ${line + 1}:\n` +
          `  committed: ${a[line] ?? '<end of file>'}\n  generated: ${b[line] ?? '<end of file>'})`,
      );
    }
  });

  it('cover every operation of the API (/healthz, /v1/…) with a client method named after its operationId', () => {
    const spec = parse(fs.readFileSync(path.join(REPO_ROOT, 'openapi.yaml'), 'utf8')) as { paths: Record<string, Record<string, { operationId?: string }>> };
    const operationIds = Object.entries(spec.paths)
      .filter(([p]) => p === '/healthz' || p.startsWith('/v1/'))
      .flatMap(([, item]) => Object.values(item).flatMap((op) => (typeof op === 'object' && op?.operationId ? [op.operationId] : [])));
    expect(operationIds.length).toBeGreaterThan(10);
    const methods = new Set(Object.getOwnPropertyNames(TcxClient.prototype));
    expect(operationIds.filter((id) => !methods.has(id))).toEqual([]);
  });
});
