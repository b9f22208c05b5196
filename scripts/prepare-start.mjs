// `npm start`, before the coordinator runs: installs dependencies when they are missing or
// older than package-lock.json, and builds when dist/ is older than any source file, saying
// what it does and how long it took. A second start with nothing changed does neither.
import { spawnSync } from 'node:child_process';
import process from 'node:process';
import { existsSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm';
const say = (line) => process.stderr.write(`[npm start] ${line}\n`);

function mtime(path) {
  try {
    return statSync(path).mtimeMs;
  } catch {
    return 0;
  }
}

function newest(path) {
  const st = statSync(path);
  if (!st.isDirectory()) return st.mtimeMs;
  let latest = st.mtimeMs;
  for (const name of readdirSync(path)) latest = Math.max(latest, newest(join(path, name)));
  return latest;
}

function run(what, args) {
  const started = Date.now();
  say(`${what}...`);
  const result = spawnSync(npm, args, { cwd: root, stdio: 'inherit' });
  if (result.status !== 0) {
    say(`${what} failed (exit ${result.status ?? result.signal})`);
    process.exit(result.status ?? 1);
  }
  say(`${what}: done in ${((Date.now() - started) / 1000).toFixed(1)} s`);
}

// npm ci writes node_modules/.package-lock.json: older than package-lock.json means stale.
const installed = mtime(join(root, 'node_modules', '.package-lock.json'));
if (installed === 0 || installed < mtime(join(root, 'package-lock.json'))) {
  run('installing dependencies (npm ci; a minute or two on a fresh clone)', ['ci', '--no-audit', '--no-fund', '--progress=true']);
}

const stamp = join(root, 'dist', '.build-stamp');
const inputs = ['src', 'openapi.yaml', 'tsconfig.json', 'tsconfig.build.json', 'package.json', 'scripts'].map((p) => join(root, p)).filter((p) => existsSync(p));
const sourcesChanged = Math.max(...inputs.map(newest));
if (!existsSync(join(root, 'dist', 'main.js')) || mtime(stamp) < sourcesChanged) {
  run('building (tsc)', ['run', 'build', '--silent']);
  writeFileSync(stamp, `${new Date().toISOString()}\n`);
} else {
  say('dist/ is up to date: not rebuilding');
}
say('starting the coordinator (node dist/main.js)');
