/**
 * An HTTP front for the client's retry tests: a server on a free port that, request by
 * request, answers itself or forwards to the real coordinator behind it — and may then lie
 * about the outcome (answer 503 although the coordinator did the work, or cut the connection).
 * Every request it gets is counted, so a test can tell how often the client sent one.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { request } from 'undici';

export type Plan =
  /** Pass the request on and its answer back. */
  | { readonly kind: 'forward' }
  /** Answer 503 (with Retry-After seconds, if given) without passing the request on. */
  | { readonly kind: 'unavailable'; readonly retryAfter?: string }
  /** Pass it on, let the coordinator act, then answer 503 with Retry-After instead of its answer. */
  | { readonly kind: 'unavailable-after'; readonly retryAfter: string }
  /** Pass it on, let the coordinator act, then cut the connection without an answer. */
  | { readonly kind: 'reset-after' }
  /** Never answer (until the front closes). */
  | { readonly kind: 'hang' }
  /** Answer this status and JSON body. */
  | { readonly kind: 'json'; readonly status: number; readonly body: unknown }
  /** Answer this status with a body that is not JSON (a proxy's page). */
  | { readonly kind: 'html'; readonly status: number };

export interface Seen {
  readonly method: string;
  readonly path: string;
  readonly authorization: string | undefined;
}

export interface HttpFront {
  readonly url: string;
  readonly seen: Seen[];
  /** How many requests had this method and path (without the query). */
  count(method: string, path: string): number;
  close(): Promise<void>;
}

const UNAVAILABLE = JSON.stringify({ error: { code: 'SHUTTING_DOWN', message: 'The coordinator is shutting down' } });

export async function startFront(target: string | undefined, plan: (req: Seen, nth: number) => Plan): Promise<HttpFront> {
  const seen: Seen[] = [];
  const hanging = new Set<http.ServerResponse>();
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const entry: Seen = { method: req.method ?? '', path: (req.url ?? '').split('?')[0] ?? '', authorization: req.headers.authorization };
      seen.push(entry);
      const nth = seen.filter((s) => s.method === entry.method && s.path === entry.path).length;
      void answer(req, res, Buffer.concat(chunks), plan(entry, nth));
    });
  });

  async function forward(req: http.IncomingMessage, body: Buffer): Promise<{ status: number; headers: Record<string, string>; text: string }> {
    if (target === undefined) throw new Error('front: nothing to forward to');
    const headers: Record<string, string> = {};
    for (const name of ['content-type', 'authorization', 'accept']) {
      const v = req.headers[name];
      if (typeof v === 'string') headers[name] = v;
    }
    const res = await request(`${target}${req.url ?? '/'}`, {
      method: (req.method ?? 'GET') as 'GET',
      headers,
      ...(body.length === 0 ? {} : { body }),
      signal: AbortSignal.timeout(15_000),
    });
    const text = await res.body.text();
    const ct = res.headers['content-type'];
    return { status: res.statusCode, headers: typeof ct === 'string' ? { 'content-type': ct } : {}, text };
  }

  async function answer(req: http.IncomingMessage, res: http.ServerResponse, body: Buffer, p: Plan): Promise<void> {
    try {
      switch (p.kind) {
        case 'forward': {
          const r = await forward(req, body);
          res.writeHead(r.status, r.headers).end(r.text);
          return;
        }
        case 'unavailable':
          res.writeHead(503, { 'content-type': 'application/json', ...(p.retryAfter === undefined ? {} : { 'retry-after': p.retryAfter }) }).end(UNAVAILABLE);
          return;
        case 'unavailable-after':
          await forward(req, body);
          res.writeHead(503, { 'content-type': 'application/json', 'retry-after': p.retryAfter }).end(UNAVAILABLE);
          return;
        case 'reset-after':
          await forward(req, body);
          req.socket.destroy();
          return;
        case 'hang':
          hanging.add(res);
          return;
        case 'json':
          res.writeHead(p.status, { 'content-type': 'application/json' }).end(JSON.stringify(p.body));
          return;
        case 'html':
          res.writeHead(p.status, { 'content-type': 'text/html' }).end('<html><body>Bad Gateway</body></html>');
          return;
      }
    } catch (err) {
      res.writeHead(500, { 'content-type': 'text/plain' }).end(`front failed: ${String(err)}`);
    }
  }

  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    seen,
    count: (method, path) => seen.filter((s) => s.method === method && s.path === path).length,
    close: async () => {
      for (const res of hanging) res.socket?.destroy();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
