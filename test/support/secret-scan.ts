/**
 * Looking for secrets where they must not be: every form a secret can take once it has been
 * through a URL, a JSON string or an Authorization header; log lines captured from the
 * coordinator's logger; and the files (with their modes) under a data directory.
 */
import fs from 'node:fs';
import path from 'node:path';
import { Writable } from 'node:stream';

export interface Secret {
  readonly name: string;
  /** Every spelling of it worth looking for (raw, percent-encoded, in a Basic header, …). */
  readonly forms: readonly string[];
}

/** A secret as given, percent-encoded, JSON-escaped, and (with `basicUser`) as a Basic credential. */
export function secret(name: string, value: string, basicUser?: string): Secret {
  const forms = new Set([value, encodeURIComponent(value), JSON.stringify(value).slice(1, -1)]);
  if (basicUser !== undefined) forms.add(Buffer.from(`${basicUser}:${value}`).toString('base64'));
  return { name, forms: [...forms] };
}

/** The names of the secrets `text` holds in any form. */
export function secretsIn(text: string, secrets: readonly Secret[]): string[] {
  return secrets.filter((s) => s.forms.some((f) => text.includes(f))).map((s) => s.name);
}

/** A pino destination that keeps every line written to it. */
export function logCapture(): { stream: Writable; lines: () => string[] } {
  const lines: string[] = [];
  let partial = '';
  const stream = new Writable({
    write(chunk: Buffer | string, _encoding, done) {
      const parts = (partial + chunk.toString()).split('\n');
      partial = parts.pop() ?? '';
      lines.push(...parts.filter((l) => l !== ''));
      done();
    },
  });
  return { stream, lines: () => (partial === '' ? [...lines] : [...lines, partial]) };
}

export interface FileEntry {
  readonly path: string;
  readonly isDirectory: boolean;
  /** Permission bits, in octal: '600', '700', … */
  readonly mode: string;
}

/** `dir` itself and everything under it. */
export function walk(dir: string): FileEntry[] {
  const entries: FileEntry[] = [];
  const visit = (p: string): void => {
    const st = fs.lstatSync(p);
    entries.push({ path: p, isDirectory: st.isDirectory(), mode: (st.mode & 0o777).toString(8) });
    if (st.isDirectory()) for (const name of fs.readdirSync(p)) visit(path.join(p, name));
  };
  visit(dir);
  return entries;
}

/** Every byte of every file under `dir`, as latin1 text (binary files included). */
export function contentsUnder(dir: string): string {
  return walk(dir)
    .filter((e) => !e.isDirectory)
    .map((e) => fs.readFileSync(e.path).toString('latin1'))
    .join('\n');
}
