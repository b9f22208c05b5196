// Copies the non-TypeScript files the coordinator loads at run time (Lua scripts) from src/ to dist/.
import { cpSync, existsSync, readdirSync, statSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const src = join(root, 'src');
const dist = join(root, 'dist');
const EXTENSIONS = ['.lua'];

function walk(dir) {
  for (const name of readdirSync(dir)) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) walk(path);
    else if (EXTENSIONS.some((e) => name.endsWith(e))) cpSync(path, join(dist, relative(src, path)));
  }
}
if (existsSync(src)) walk(src);
