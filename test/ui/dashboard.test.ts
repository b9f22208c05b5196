/**
 * The dashboard (src/ui/) end to end: the coordinator as its own process (dist/main.js, with
 * tokens), two real Postgres participants — bank-b reached through a fault proxy — and the page
 * in a real headless Chromium.
 *
 * A transfer is prepared on both banks, then bank-b is black-holed and the commit answers
 * 202 `committing`: in doubt. In the browser the operator enters the token the page asks for,
 * sees the transaction in the in-doubt list with its pending branch on bank-b and the last
 * error, sees bank-b's status as PARTICIPANT_UNREACHABLE, opens the transaction; bank-b is
 * healed, the operator clicks Retry, and the page shows it committed — and the databases say so.
 *
 * The background retry backs off for a minute or more (TCX_RETRY_INITIAL_MS), so only the
 * Retry button can finish the transaction within the test. Every wait on the page is a
 * Playwright locator wait (auto-retrying) with a deadline, never a fixed sleep. Screenshots of
 * each step go to test-artifacts/ui/.
 *
 * Needs the build (`npm run build`) and a Chromium binary: TCX_CHROMIUM, or /usr/bin/chromium
 * (Debian's `chromium`, which .ci/run installs). Without one the browser part is skipped, saying so.
 */
import fs from 'node:fs';
import path from 'node:path';
import { chromium, type Browser, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { CoordinatorProcess, REPO_ROOT } from '../support/coordinator-process.js';
import { balanceOf, createAccounts, freshDatabase, preparedGids } from '../support/databases.js';
import { FaultProxy } from '../support/fault-proxy.js';
import { recordAnswer } from '../support/response-contract.js';

const CHROMIUM = process.env.TCX_CHROMIUM ?? '/usr/bin/chromium';
const HAVE_CHROMIUM = fs.existsSync(CHROMIUM);
if (!HAVE_CHROMIUM) {
  console.warn(`test/ui/dashboard.test.ts: the browser test is SKIPPED: no Chromium at ${CHROMIUM} (set TCX_CHROMIUM, or apt-get install chromium; .ci/run does)`);
}

const API_TOKEN = 'dashboard-api-token-0001';
const ADMIN_TOKEN = 'dashboard-admin-token-0001';
const SHOTS = path.join(REPO_ROOT, 'test-artifacts', 'ui');
/** Deadline of each wait on the page. */
const STEP_MS = 10_000;

let dbA: string;
let dbB: string;
let proxy: FaultProxy;
let coord: CoordinatorProcess;
let browser: Browser | undefined;

interface Answer {
  readonly status: number;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- JSON answers are inspected freely in tests
  readonly body: any;
}

/** An API call with a token; its answer is checked against openapi.yaml (response-contract-setup.ts). */
async function api(method: 'GET' | 'POST', urlPath: string, body?: unknown, bearer = ADMIN_TOKEN): Promise<Answer> {
  const res = await fetch(`${coord.url}${urlPath}`, {
    method,
    headers: { authorization: `Bearer ${bearer}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    signal: AbortSignal.timeout(15_000),
  });
  const text = await res.text();
  recordAnswer({ method, url: urlPath, status: res.status, contentType: res.headers.get('content-type') ?? undefined, body: text });
  return { status: res.status, body: text === '' ? undefined : JSON.parse(text) };
}

const transfer = (account: string, delta: number) => ({
  sql: 'UPDATE accounts SET balance = balance + $1 WHERE id = $2',
  params: [delta, account],
});

async function shot(page: Page, name: string): Promise<void> {
  await page.screenshot({ path: path.join(SHOTS, `${name}.png`), fullPage: true });
}

beforeAll(async () => {
  fs.mkdirSync(SHOTS, { recursive: true });
  dbA = await freshDatabase(inject('pgUrlA'), 'ui');
  dbB = await freshDatabase(inject('pgUrlB'), 'ui');
  await createAccounts(dbA, { alice: 100 });
  await createAccounts(dbB, { bob: 100 });
  proxy = await FaultProxy.forUrl(dbB, { name: 'bank-b' });
  coord = await CoordinatorProcess.start({
    env: {
      TCX_API_TOKENS: API_TOKEN,
      TCX_ADMIN_TOKENS: ADMIN_TOKEN,
      // The commit answers 202 soon, and a black-holed connect fails soon (the last error).
      TCX_COMMIT_WAIT_MS: '500',
      TCX_CONNECT_TIMEOUT_MS: '1000',
      TCX_PARTICIPANT_TIMEOUT_MS: '1000',
      // The background retry waits a minute or more: only the Retry button can finish it here.
      TCX_RETRY_INITIAL_MS: '60000',
      TCX_RETRY_MAX_MS: '120000',
      TCX_RECOVERY_INTERVAL_MS: '600000',
    },
  });
  expect((await api('POST', '/v1/participants', { name: 'bank-a', kind: 'postgres', connectionString: dbA })).status).toBe(201);
  expect((await api('POST', '/v1/participants', { name: 'bank-b', kind: 'postgres', connectionString: proxy.rewriteUrl(dbB) })).status).toBe(201);
  if (HAVE_CHROMIUM) browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox'] });
});

afterAll(async () => {
  await browser?.close();
  await coord?.destroy();
  await proxy?.close();
});

describe('the dashboard routes', () => {
  it('serve the page and its files without a token, with a strict CSP, and nothing else', async () => {
    const redirect = await fetch(`${coord.url}/ui`, { redirect: 'manual' });
    expect(redirect.status).toBe(302);
    expect(redirect.headers.get('location')).toBe('ui/');

    const files = [['', 'text/html'], ['style.css', 'text/css'], ...['app.js', 'api.js', 'dom.js', 'views.js', 'participants.js'].map((f) => [f, 'text/javascript'])];
    for (const [file, type] of files as [string, string][]) {
      const res = await fetch(`${coord.url}/ui/${file}`);
      expect(res.status, `/ui/${file}`).toBe(200);
      expect(res.headers.get('content-type')).toBe(`${type}; charset=utf-8`);
      const csp = res.headers.get('content-security-policy') ?? '';
      expect(csp).toContain("default-src 'self'");
      expect(csp).toContain("script-src 'self'");
      expect(csp).not.toContain('unsafe-inline');
      expect(csp).not.toContain('unsafe-eval');
      expect(res.headers.get('x-content-type-options')).toBe('nosniff');
      expect(res.headers.get('cache-control')).toBe('no-cache');
      const text = await res.text();
      // Nothing from another origin (the SVG namespace is a name, not an address) …
      expect(text.replaceAll('http://www.w3.org/2000/svg', ''), file).not.toMatch(/https?:\/\//i);
      // … no inline script, style or handler in the page, and no HTML ever built from data.
      if (type === 'text/html') expect(text).not.toMatch(/<script(?![^>]*\bsrc=)[^>]*>|<style|\sstyle=|\son[a-z]+=/i);
      if (type === 'text/javascript') expect(text, file).not.toMatch(/innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function/);
    }

    // An unknown file, or the server's own module next to the page: 404 in the API's error shape.
    for (const file of ['nope.js', 'dashboard.js', 'dashboard.d.ts']) {
      const res = await fetch(`${coord.url}/ui/${file}`);
      expect(res.status, file).toBe(404);
      expect(res.headers.get('content-security-policy')).toContain("default-src 'self'");
      expect(await res.json()).toEqual({ error: { code: 'NOT_FOUND', message: `no dashboard file ${file}` } });
    }
    expect((await fetch(`${coord.url}/ui/?debug=1`)).status).toBe(400);
    expect((await fetch(`${coord.url}/ui/`, { method: 'HEAD' })).status).toBe(200);
    // The page's exemption is its own: the API still wants the token.
    expect((await fetch(`${coord.url}/v1/participants`)).status).toBe(401);
  });
});

describe.skipIf(!HAVE_CHROMIUM)('the dashboard in Chromium', () => {
  it('asks for the token, shows an in-doubt transaction and why, and resolves it with Retry', async () => {
    // A transfer prepared on both banks, then bank-b goes silent and the commit cannot reach it.
    const begun = await api('POST', '/v1/transactions', { timeoutMs: 60_000 }, API_TOKEN);
    const id = begun.body.id as string;
    expect((await api('POST', `/v1/transactions/${id}/branches`, { participant: 'bank-a', operations: [transfer('alice', -25)] }, API_TOKEN)).status).toBe(201);
    expect((await api('POST', `/v1/transactions/${id}/branches`, { participant: 'bank-b', operations: [transfer('bob', 25)] }, API_TOKEN)).status).toBe(201);
    expect((await api('POST', `/v1/transactions/${id}/prepare`, undefined, API_TOKEN)).body.state).toBe('prepared');
    proxy.blackhole(true);
    proxy.cutOpenConnections();
    const commit = await api('POST', `/v1/transactions/${id}/commit`, undefined, API_TOKEN);
    expect(commit.status).toBe(202);
    expect(commit.body.state).toBe('committing');

    // Dark, as the dashboard is meant to be read at night (it follows prefers-color-scheme).
    const page = await browser!.newPage({ viewport: { width: 1440, height: 1000 }, colorScheme: 'dark' });
    const problems: string[] = [];
    page.on('pageerror', (err) => problems.push(`page error: ${err.message}`));
    page.on('console', (msg) => {
      if (msg.type() === 'error' && /Content Security Policy|Refused to/i.test(msg.text())) problems.push(`console: ${msg.text()}`);
    });
    const requested: string[] = [];
    page.on('request', (request) => requested.push(request.url()));

    // 1. The page asks for a token: the API answered 401.
    await page.goto(`${coord.url}/ui`);
    expect(page.url()).toBe(`${coord.url}/ui/`);
    const tokenInput = page.getByLabel('API token');
    await tokenInput.waitFor({ state: 'visible', timeout: STEP_MS });
    await shot(page, '01-token-prompt');

    // A wrong token is refused, with the catalogue code.
    await tokenInput.fill('not-a-known-token-0000');
    await page.getByRole('button', { name: 'Use token' }).click();
    await page.locator('#token-reason', { hasText: 'UNAUTHORIZED' }).waitFor({ timeout: STEP_MS });
    await shot(page, '02-token-refused');

    await tokenInput.fill(API_TOKEN);
    await page.getByRole('button', { name: 'Use token' }).click();
    await page.locator('#token-panel').waitFor({ state: 'hidden', timeout: STEP_MS });

    // 2. The transaction in the in-doubt list: one pending branch, on bank-b, with its last error.
    const row = page.locator('#in-doubt tr.tx-row', { hasText: id });
    await row.waitFor({ timeout: STEP_MS });
    await row.locator('.pending-branch', { hasText: 'bank-b' }).locator('.last-error').waitFor({ timeout: STEP_MS });
    await expect.poll(() => row.locator('.pending-branch').count(), { timeout: STEP_MS }).toBe(1);
    expect(await row.locator('.pending-branch').textContent()).toMatch(/bank-b.*b2.*prepared.*attempt/s);
    expect(((await row.locator('.last-error').textContent()) ?? '').replace(/^last error:\s*/, '')).not.toBe('');
    await page.locator('#health-badge', { hasText: /^healthy$/ }).waitFor({ timeout: STEP_MS });
    // bank-b cannot be asked what it has prepared: its status says so, with the catalogue code.
    await page.locator('#participants tr[data-name="bank-b"] .participant-status', { hasText: 'PARTICIPANT_UNREACHABLE' }).waitFor({ timeout: STEP_MS });
    await page.locator('#participants tr[data-name="bank-a"] .participant-status', { hasText: 'answers' }).waitFor({ timeout: STEP_MS });
    await shot(page, '03-in-doubt');

    // 3. Its detail: an unknown id first (the error with its code), then a click on the row's id.
    await page.getByLabel('Transaction id').fill('00000000-0000-4000-8000-000000000000');
    await page.getByRole('button', { name: 'Show' }).click();
    await page.locator('#detail .panel-error', { hasText: 'UNKNOWN_TRANSACTION' }).waitFor({ timeout: STEP_MS });
    await row.locator('button.tx-link').click();
    await page.locator('#detail .tx-id', { hasText: id }).waitFor({ timeout: STEP_MS });
    await page.locator('#detail .tx-state', { hasText: 'committing' }).waitFor({ timeout: STEP_MS });
    await page.locator('#detail tr.pending-row', { hasText: 'bank-b' }).waitFor({ timeout: STEP_MS });
    expect(await page.locator('#detail .panel-error').isHidden()).toBe(true);
    await shot(page, '04-detail');

    // 4. bank-b is back; Retry delivers the commit at once.
    proxy.blackhole(false);
    await row.locator('button.retry').click();
    // The answer is the state after the attempt it triggered (committed, unless that attempt took
    // longer than TCX_COMMIT_WAIT_MS: then the page's polling shows the commit a moment later).
    await page.locator('#in-doubt .notice', { hasText: `Retried ${id}: now` }).waitFor({ timeout: STEP_MS });
    await page.locator('#detail .tx-state', { hasText: 'committed' }).waitFor({ timeout: STEP_MS });
    await page.locator('#in-doubt .all-clear', { hasText: 'Nothing in doubt.' }).waitFor({ timeout: STEP_MS });
    await page.locator('#participants tr[data-name="bank-b"] .participant-status', { hasText: 'answers' }).waitFor({ timeout: 15_000 });
    await shot(page, '05-resolved');

    // The databases agree: both branches committed, nothing left prepared.
    expect(await balanceOf(dbA, 'alice')).toBe(75);
    expect(await balanceOf(dbB, 'bob')).toBe(125);
    expect(await preparedGids(dbB)).toEqual([]);
    expect(await preparedGids(dbA)).toEqual([]);
    expect((await api('GET', `/v1/transactions/${id}`, undefined, API_TOKEN)).body.state).toBe('committed');

    // Nothing went wrong in the page, and it talked to nobody but the coordinator.
    expect(problems).toEqual([]);
    expect(requested.filter((url) => !url.startsWith(`${coord.url}/`))).toEqual([]);
    expect(await page.evaluate("sessionStorage.getItem('tcx.dashboard.token')")).toBe(API_TOKEN); // the tab's own storage
    await page.close();
  }, 60_000);
});
