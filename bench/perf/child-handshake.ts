/**
 * The bench's helper processes announce themselves with one JSON line on stdout (their
 * ports). This waits for it — bounded — and on any failure (no line in time, a line that is
 * not JSON, a failed spawn, an early exit) kills the child, so that a bench that gives up
 * leaves no process behind.
 */
import type { ChildProcess } from 'node:child_process';

export function firstJsonLine(child: ChildProcess, what: string, timeoutMs = 30_000): Promise<unknown> {
  return new Promise((resolve, reject) => {
    let text = '';
    let settled = false;
    const settle = (err: Error | undefined, value?: unknown): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (err === undefined) {
        resolve(value);
        return;
      }
      child.kill('SIGKILL');
      reject(err);
    };
    const timer = setTimeout(() => settle(new Error(`${what} did not start within ${timeoutMs} ms`)), timeoutMs);
    child.once('error', (err) => settle(new Error(`${what} could not start: ${err.message}`)));
    child.once('exit', (code, signal) => settle(new Error(`${what} exited with ${code ?? signal}`)));
    const stdout = child.stdout;
    if (stdout === null) {
      settle(new Error(`${what} has no stdout to announce itself on`));
      return;
    }
    stdout.setEncoding('utf8');
    stdout.on('data', (chunk: string) => {
      text += chunk;
      const nl = text.indexOf('\n');
      if (nl < 0) return;
      try {
        settle(undefined, JSON.parse(text.slice(0, nl)));
      } catch {
        settle(new Error(`${what} announced itself with something other than JSON: ${text.slice(0, Math.min(nl, 200))}`));
      }
    });
  });
}
