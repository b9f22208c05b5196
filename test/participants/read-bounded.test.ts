/**
 * readBounded, which reads every participant's answer: the whole body within the limit, ''
 * past it, an error past the deadline or when the connection ends mid-body — against a real
 * HTTP server through undici, as the HTTP participant reads.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { Pool } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readBounded } from '../../src/lib/read-bounded.js';

let server: http.Server;
let pool: Pool;

beforeAll(async () => {
  server = http.createServer((req, res) => {
    req.resume();
    switch (req.url) {
      case '/small':
        res.end('{"vote":"yes"}');
        return;
      case '/chunked':
        res.write('{"vote":');
        setTimeout(() => res.end('"yes"}'), 20);
        return;
      case '/large':
        res.end('x'.repeat(100_000));
        return;
      case '/trickle': {
        res.write('{');
        const timer = setInterval(() => res.write(' '), 30);
        res.on('close', () => clearInterval(timer));
        return;
      }
      case '/cut':
        res.writeHead(200, { 'content-length': '100' });
        res.write('{"vote":');
        setTimeout(() => res.destroy(), 20);
        return;
    }
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  pool = new Pool(`http://127.0.0.1:${(server.address() as AddressInfo).port}`);
});

afterAll(async () => {
  await pool.close();
  await new Promise((resolve) => server.close(resolve));
});

const get = async (path: string) => (await pool.request({ method: 'GET', path })).body;

describe('readBounded', () => {
  it('reads a body in one chunk or several', async () => {
    expect(await readBounded(await get('/small'), 1024)).toBe('{"vote":"yes"}');
    expect(await readBounded(await get('/chunked'), 1024, Date.now() + 5_000)).toBe('{"vote":"yes"}');
  });

  it('reads a body past the limit as nothing, and stops reading it', async () => {
    expect(await readBounded(await get('/large'), 64 * 1024)).toBe('');
  });

  it('fails a body still arriving past the deadline', async () => {
    await expect(readBounded(await get('/trickle'), 64 * 1024, Date.now() + 150)).rejects.toThrow(/longer than the request deadline/);
  });

  it('fails a body whose connection ends before it is complete', async () => {
    await expect(readBounded(await get('/cut'), 64 * 1024)).rejects.toThrow();
  });
});
