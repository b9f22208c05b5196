/**
 * Where an HTTP participant's calls go: each verb under the base URL's path, with its query,
 * the credentials of the URL in the Authorization header and never in the request line.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HttpParticipant } from '../../src/participants/http-participant.js';

interface Seen {
  readonly url: string;
  readonly authorization: string | undefined;
  readonly body: Record<string, unknown>;
}

describe('http participant addressing', () => {
  const seen: Seen[] = [];
  let server: http.Server;
  let port: number;

  beforeAll(async () => {
    server = http.createServer((req, res) => {
      let text = '';
      req.setEncoding('utf8');
      req.on('data', (chunk: string) => (text += chunk));
      req.on('end', () => {
        seen.push({ url: req.url ?? '', authorization: req.headers.authorization, body: JSON.parse(text) as Record<string, unknown> });
        const body = req.url?.includes('/prepare') === true ? '{"vote":"yes"}' : '{}';
        res.writeHead(200, { 'content-type': 'application/json' }).end(body);
      });
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    port = (server.address() as AddressInfo).port;
  });

  afterAll(async () => {
    await new Promise((resolve) => server.close(resolve));
  });

  it('calls each verb under the base path, keeps the query, and sends the URL credentials as basic auth', async () => {
    const adapter = new HttpParticipant({
      name: 'ledger',
      baseUrl: `http://svc:s%40cret@127.0.0.1:${port}/api/v2/?tenant=t1`,
      requestTimeoutMs: 2_000,
      connectTimeoutMs: 1_000,
    });
    try {
      const branch = { transactionId: 'tx-1', branchId: 'b1', gid: 'tcx:c:tx-1:1', payload: { amount: 3 } };
      expect(await adapter.prepare(branch)).toEqual({ vote: 'yes' });
      await adapter.commit(branch);
      expect(seen.map((s) => s.url)).toEqual(['/api/v2/prepare?tenant=t1', '/api/v2/commit?tenant=t1']);
      expect(seen.every((s) => s.authorization === `Basic ${Buffer.from('svc:s@cret').toString('base64')}`)).toBe(true);
      expect(seen[0]!.body).toMatchObject({ transactionId: 'tx-1', branchId: 'b1', gid: 'tcx:c:tx-1:1', payload: { amount: 3 }, protocol: '2pc' });
    } finally {
      await adapter.close();
    }
  });

  it('calls a base URL without a path at the root', async () => {
    seen.length = 0;
    const adapter = new HttpParticipant({ name: 'ledger', baseUrl: `http://127.0.0.1:${port}`, requestTimeoutMs: 2_000, connectTimeoutMs: 1_000 });
    try {
      await adapter.abort({ transactionId: 'tx-2', branchId: 'b1', gid: 'tcx:c:tx-2:1' });
      expect(seen.map((s) => [s.url, s.authorization])).toEqual([['/abort', undefined]]);
    } finally {
      await adapter.close();
    }
  });
});
