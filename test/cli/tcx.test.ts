/**
 * The built `tcx` (node dist/cli/tcx.js, as `npx tcx` runs it) against a coordinator process
 * (node dist/main.js, admin token required) with a real Postgres participant and an HTTP
 * participant that can be told to fail its commits: what it prints, what --json gives
 * scripts, and its exit codes. Needs `npm run build` first.
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { TcxClient, type TransactionWithResults } from '../../src/client/index.js';
import { startAuthCheckingService, type AuthCheckingService } from '../support/auth-checking-service.js';
import { CoordinatorProcess, REPO_ROOT } from '../support/coordinator-process.js';
import { balanceOf, createAccounts, eventually, freshDatabase, prepareByHand, preparedGids, withClient } from '../support/databases.js';
import { getFreePort } from '../support/free-port.js';

const TCX = path.join(REPO_ROOT, 'dist', 'cli', 'tcx.js');
const ADMIN = 'cli-admin-token-0123456789abcdef';

interface Run {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

let db: string;
let coordinator: CoordinatorProcess;
let service: AuthCheckingService;
/** Runs the transactions the CLI then looks at (tcx itself has no command to run one). */
let client: TcxClient;

/** Runs `tcx ...args` with TCX_URL and TCX_TOKEN set (unless `env` overrides them). */
function tcx(args: readonly string[], env: Record<string, string | undefined> = {}): Promise<Run> {
  const childEnv: Record<string, string> = {};
  for (const [k, v] of Object.entries({ ...process.env, TCX_URL: coordinator.url, TCX_TOKEN: ADMIN, ...env })) if (v !== undefined) childEnv[k] = v;
  return new Promise((resolve) => {
    execFile(process.execPath, [TCX, ...args], { env: childEnv, timeout: 30_000 }, (err, stdout, stderr) => {
      const code = err === null ? 0 : typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : -1;
      resolve({ code, stdout, stderr });
    });
  });
}

/** Runs tcx and expects exit 0; answers stdout. */
async function ok(args: readonly string[]): Promise<string> {
  const r = await tcx(args);
  expect(r.code, `tcx ${args.join(' ')}\n${r.stderr}`).toBe(0);
  return r.stdout;
}

function transfer(delta: number, extra: { participant: string; payload: unknown }[] = []): Promise<TransactionWithResults> {
  const sql = 'UPDATE accounts SET balance = balance + $1 WHERE id = $2';
  return client.runTransaction({ branches: [{ participant: 'bank', operations: [{ sql, params: [delta, 'alice'] }] }, ...extra] });
}

beforeAll(async () => {
  if (!fs.existsSync(TCX)) throw new Error(`${TCX} is missing: run \`npm run build\` first`);
  db = await freshDatabase(inject('pgUrlA'), 'cli');
  await createAccounts(db, { alice: 100, lost: 0, orphan: 0 });
  service = await startAuthCheckingService();
  coordinator = await CoordinatorProcess.start({
    env: { TCX_ADMIN_TOKENS: ADMIN, TCX_COMMIT_WAIT_MS: '300', TCX_RECOVERY_INTERVAL_MS: '3600000', TCX_LOG_LEVEL: 'warn' },
  });
  // The API requires the token: the helper above hands it over in TCX_TOKEN.
  const open = await coordinator.request('GET', '/v1/participants');
  expect(open.status).toBe(401);
  client = new TcxClient({ url: coordinator.url, token: ADMIN });
});

afterAll(async () => {
  await client?.close();
  await coordinator?.destroy();
  await service?.close();
  if (db !== undefined) for (const gid of await preparedGids(db)) await withClient(db, (c) => c.query(`ROLLBACK PREPARED '${gid}'`));
});

describe('tcx', () => {
  it('reports health, and adds, lists, shows and removes participants', async () => {
    expect(await ok(['health'])).toMatch(/^status: +ok$/m);
    const health = JSON.parse(await ok(['health', '--json']));
    expect(health.status).toBe('ok');
    expect(JSON.parse(await ok(['cluster', '--json'])).mode).toBe('single');

    expect(await ok(['participants', 'add', '--name', 'bank', '--kind', 'postgres', '--connection-string', db])).toMatch(/^kind: +postgres$/m);
    expect(await ok(['participants', 'add', '--name', 'svc', '--kind', 'http', '--base-url', `${service.url}/svc`])).toMatch(/^name: +svc$/m);
    const table = (await ok(['participants', 'list'])).split('\n');
    expect(table[0]).toMatch(/^NAME +KIND +ADDRESS +REGISTERED +WARNINGS$/);
    expect(table.find((l) => l.startsWith('bank '))).toMatch(/^bank +postgres +postgres:\/\//);
    const listed = JSON.parse(await ok(['participants', 'list', '--json']));
    expect(listed.participants.map((p: { name: string }) => p.name).sort()).toEqual(['bank', 'svc']);
    expect(JSON.parse(await ok(['participants', 'show', 'svc', '--json'])).kind).toBe('http');

    await ok(['participants', 'add', '--name', 'spare', '--kind', 'postgres', '--connection-string', db]);
    expect(await ok(['participants', 'remove', 'spare'])).toBe('removed spare\n');
    const gone = await tcx(['participants', 'show', 'spare']);
    expect([gone.code, gone.stdout]).toEqual([1, '']);
    expect(gone.stderr).toMatch(/^error UNKNOWN_PARTICIPANT: /);
    const taken = await tcx(['participants', 'add', '--name', 'bank', '--kind', 'postgres', '--connection-string', db]);
    expect([taken.code, taken.stderr.split(':')[0]]).toEqual([1, 'error PARTICIPANT_EXISTS']);
  });

  it('lists and shows transactions, as tables and as JSON, page by page or all at once', async () => {
    const done = await transfer(-10);
    expect(done.state).toBe('committed');
    for (let i = 0; i < 2; i++) await transfer(0);
    const table = (await ok(['transactions', 'list', '--participant', 'bank'])).split('\n');
    expect(table[0]).toMatch(/^ID +STATE +PROTOCOL +DECISION +IN DOUBT +CREATED +PARTICIPANTS$/);
    expect(table.find((l) => l.startsWith(done.id))).toMatch(new RegExp(`^${done.id} +committed +2pc +commit +no +\\S+ +bank$`));

    const page = JSON.parse(await ok(['transactions', 'list', '--participant', 'bank', '--state', 'committed', '--json']));
    expect(page.transactions.map((t: { id: string }) => t.id)).toContain(done.id);
    expect(page.nextCursor).toBeNull();
    const first = await tcx(['transactions', 'list', '--limit', '1', '--json']);
    expect(JSON.parse(first.stdout).transactions).toHaveLength(1);
    expect(first.stderr).toMatch(/^more: --cursor \S+ \(or --all\)$/m);
    const all = JSON.parse(await ok(['transactions', 'list', '--limit', '1', '--all', '--json']));
    expect(all.transactions.length).toBe(3);
    expect(all.nextCursor).toBeNull();

    const shown = await ok(['transactions', 'show', done.id]);
    expect(shown).toMatch(/^state: +committed$/m);
    // A lone Postgres branch commits one-phase: no vote, and the view says so.
    expect(shown).toMatch(/^b1 +bank +postgres +committed +- +/m);
    expect(shown).toMatch(/^one phase: +yes$/m);
    expect(JSON.parse(await ok(['transactions', 'show', done.id, '--json']))).toMatchObject({ id: done.id, state: 'committed', inDoubt: false });
    expect(await balanceOf(db, 'alice')).toBe(90);
  });

  it('exits 4 for a transaction in doubt, lists it as in doubt, and 0 once delivered', async () => {
    service.failCommits('svc', true);
    const stuck = await transfer(-1, [{ participant: 'svc', payload: { note: 'cli test' } }]);
    expect([stuck.state, stuck.inDoubt]).toEqual(['committing', true]);
    const shown = await tcx(['transactions', 'show', stuck.id]);
    expect(shown.code).toBe(4);
    expect(shown.stdout).toMatch(/^in doubt: +yes$/m);
    const inDoubt = JSON.parse(await ok(['transactions', 'list', '--state', 'in-doubt', '--json']));
    expect(inDoubt.transactions.map((t: { id: string }) => t.id)).toEqual([stuck.id]);
    expect((await tcx(['transactions', 'retry', stuck.id])).code).toBe(4);
    service.failCommits('svc', false);
    await eventually(async () => (await tcx(['transactions', 'show', stuck.id])).code === 0, 15_000);
    expect(JSON.parse(await ok(['transactions', 'show', stuck.id, '--json'])).state).toBe('committed');
  });

  it('lists what is prepared on a participant and resolves a branch by hand (audited)', async () => {
    const own = JSON.parse(await ok(['health', '--json'])).coordinatorId as string;
    // A branch of a coordinator whose log is gone, and one under this coordinator's own id
    // that its log never heard of (presumed abort: it may only be rolled back).
    const lost = 'tcx:lostcoord:55555555-5555-4555-8555-555555555555:1';
    const orphan = `tcx:${own}:66666666-6666-4666-8666-666666666666:1`;
    await prepareByHand(db, lost, 'lost', 5);
    await prepareByHand(db, orphan, 'orphan', 1);

    const table = (await ok(['prepared', 'bank', '--coordinator-id', 'lostcoord'])).split('\n');
    expect(table[0]).toMatch(/^GID +TRANSACTION +BRANCH +KNOWN +DECISION +OUTCOME +LIVE$/);
    expect(table[1]).toMatch(new RegExp(`^${lost} +55555555-5555-4555-8555-555555555555 +b1 +no +- +- +no$`));
    const mine = JSON.parse(await ok(['prepared', 'bank', '--json']));
    expect(mine.branches).toEqual([expect.objectContaining({ gid: orphan, log: { known: false, decision: null, outcome: null, live: false } })]);

    expect(await ok(['resolve', 'bank', lost, '--outcome', 'commit', '--reason', 'OPS-9: its sibling committed'])).toMatch(/^outcome: +commit$/m);
    expect(await balanceOf(db, 'lost')).toBe(5);
    const again = await tcx(['resolve', 'bank', lost, '--outcome', 'commit', '--reason', 'again']);
    expect([again.code, again.stderr.split(':')[0]]).toEqual([1, 'error INVALID_STATE_TRANSITION']);

    const contradicts = await tcx(['resolve', 'bank', orphan, '--outcome', 'commit', '--reason', 'no']);
    expect([contradicts.code, contradicts.stderr.split(':')[0]]).toEqual([1, 'error RESOLUTION_CONTRADICTS_LOG']);
    expect(JSON.parse(await ok(['resolve', 'bank', orphan, '--outcome', 'abort', '--reason', 'OPS-9: never decided', '--json']))).toMatchObject({ gid: orphan, outcome: 'abort' });
    expect(await preparedGids(db)).toEqual([]);
    expect([await balanceOf(db, 'lost'), await balanceOf(db, 'orphan')]).toEqual([5, 0]);
    expect(await ok(['prepared', 'bank'])).toBe('no prepared branches on bank\n');
  });

  it('exits 1 on API errors, 2 on usage errors, 3 when the coordinator cannot be reached', async () => {
    const unknown = await tcx(['transactions', 'show', '00000000-0000-0000-0000-000000000000']);
    expect([unknown.code, unknown.stdout]).toEqual([1, '']);
    expect(unknown.stderr).toMatch(/^error UNKNOWN_TRANSACTION: /);
    const token = 'wrong-token-never-shown-0123456789';
    const unauthorized = await tcx(['participants', 'list'], { TCX_TOKEN: token });
    expect([unauthorized.code, unauthorized.stderr.split(':')[0]]).toEqual([1, 'error UNAUTHORIZED']);
    expect(unauthorized.stderr + unauthorized.stdout).not.toContain(token);

    for (const args of [
      ['transactions', 'list', '--bogus'],
      ['transactions', 'list', '--limit', 'many'],
      ['transactions', 'list', '--state', 'bogus'],
      ['transactions', 'frobnicate'],
      ['transactions', 'show'],
      ['resolve', 'bank', 'tcx:x:y:1', '--outcome', 'maybe', '--reason', 'r'],
      ['resolve', 'bank', 'tcx:x:y:1', '--outcome', 'commit'],
      ['participants', 'remove', 'bank', '--reason', 'no --unreachable'],
      ['participants', 'add', '--name', 'x', '--kind', 'postgres'],
      ['nonsense'],
      [],
    ]) {
      const r = await tcx(args);
      expect(r.code, `tcx ${args.join(' ')}: ${r.stderr}`).toBe(2);
      expect(r.stderr).toMatch(/^error: /);
      expect(r.stdout).toBe('');
    }
    const badUrl = await tcx(['health'], { TCX_URL: 'not a url' });
    expect(badUrl.code).toBe(2);

    const port = await getFreePort();
    const unreachable = await tcx(['health', '--url', `http://127.0.0.1:${port}`]);
    expect(unreachable.code).toBe(3);
    expect(unreachable.stderr).toMatch(/^error: cannot reach the coordinator: GET http:\/\/127\.0\.0\.1:\d+\/healthz: .*ECONNREFUSED/);
  });

  it('documents every command and the exit codes in --help', async () => {
    const help = await ok(['--help']);
    for (const words of ['health', 'participants list', 'participants add', 'participants remove NAME', 'transactions list', 'transactions show ID', 'transactions retry ID', 'prepared NAME', 'resolve NAME GID']) {
      expect(help).toContain(`  ${words}`);
    }
    expect(help).toMatch(/^Exit codes:\n {2}0 +ok\n {2}1 .*\n {2}2 .*\n {2}3 .*\n {2}4 /m);
    expect(await ok(['transactions', 'list', '--help'])).toMatch(/^Usage: tcx transactions list \[--state S\]/);
    expect(await ok(['help', 'resolve'])).toMatch(/--outcome commit\|abort/);
    expect(await ok(['participants', '--help'])).toMatch(/^Subcommands:$/m);
  });
});
