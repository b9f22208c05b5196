// Copies the non-TypeScript files the coordinator loads at run time from src/ to dist/: the Lua
// scripts (anywhere under src/), and the dashboard's page, scripts and style sheet (src/ui/ only:
// no other .js under src/ is copied, so nothing stale can shadow what tsc emits).
import { cpSync, existsSync, readdirSync, statSync } from 'node:fs';
import { dirname, join, relative, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const src = join(root, 'src');
const dist = join(root, 'dist');
const EXTENSIONS = ['.lua'];
/** Extensions copied only from under these directories of src/. */
const SCOPED = [{ dir: join(src, 'ui'), extensions: ['.html', '.css', '.js'] }];

function wanted(path) {
  if (EXTENSIONS.some((e) => path.endsWith(e))) return true;
  return SCOPED.some((s) => path.startsWith(s.dir + sep) && s.extensions.some((e) => path.endsWith(e)));
}

function walk(dir) {
  for (const name of readdirSync(dir)) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) walk(path);
    else if (wanted(path)) cpSync(path, join(dist, relative(src, path)));
  }
}
if (existsSync(src)) walk(src);
