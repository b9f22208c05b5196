/**
 * A little HTTP service hosting several participants, each under its own path prefix and
 * each requiring its own Authorization header (401 otherwise, which the coordinator counts
 * as a no vote or a failed delivery). It votes yes, acknowledges decisions, and can be told
 * to fail one participant's commits (to leave a transaction in doubt).
 */
import http from 'node:http';

export interface AuthCheckingService {
  readonly url: string;
  /** Expect `authorization` on every call under `/prefix`. */
  expect(prefix: string, authorization: string): void;
  /** Answer 503 to commits under `/prefix` while set. */
  failCommits(prefix: string, fail: boolean): void;
  /** Calls answered with 401 (wrong or missing credentials). */
  readonly refused: string[];
  /** Calls answered otherwise, as `prefix verb`. */
  readonly served: string[];
  close(): Promise<void>;
}

export async function startAuthCheckingService(): Promise<AuthCheckingService> {
  const expected = new Map<string, string>();
  const failing = new Set<string>();
  const refused: string[] = [];
  const served: string[] = [];
  const server = http.createServer((req, res) => {
    // The verb follows the base URL's path; the base URL's query comes after it.
    const path = (req.url ?? '/').split('?')[0] ?? '/';
    const prefix = path.split('/')[1] ?? '';
    const verb = path.split('/').pop() ?? '';
    req.resume();
    req.on('end', () => {
      if (expected.get(prefix) !== req.headers.authorization) {
        refused.push(`${prefix} ${verb}`);
        res.statusCode = 401;
        res.end('{}');
        return;
      }
      served.push(`${prefix} ${verb}`);
      if (verb === 'commit' && failing.has(prefix)) {
        res.statusCode = 503;
        res.end('{}');
        return;
      }
      res.setHeader('content-type', 'application/json');
      res.end(verb === 'prepare' || verb === 'can-commit' ? '{"vote":"yes"}' : '{}');
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${(server.address() as { port: number }).port}`,
    expect: (prefix, authorization) => void expected.set(prefix, authorization),
    failCommits: (prefix, fail) => void (fail ? failing.add(prefix) : failing.delete(prefix)),
    refused,
    served,
    close: () =>
      new Promise((r) => {
        server.close(() => r());
        server.closeAllConnections();
      }),
  };
}
