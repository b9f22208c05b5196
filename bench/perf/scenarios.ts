/**
 * The bench's scenarios. Each baseline does the same work as the coordinator
 * without it, from the same (bench) process, against the same servers.
 */
import { spawn } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { Pool } from 'undici';
import { firstJsonLine } from './child-handshake.js';
import type { CoordinatorChild, JsonService } from './coordinator-child.js';

export const UPDATE = 'UPDATE accounts SET balance = balance + $1 WHERE id = $2';

export interface PgPools {
  readonly a: pg.Pool;
  readonly b: pg.Pool;
}

export function pgPools(urlA: string, urlB: string, max: number): PgPools {
  const a = new pg.Pool({ connectionString: urlA, max });
  const b = new pg.Pool({ connectionString: urlB, max });
  for (const pool of [a, b]) pool.on('error', () => undefined); // servers stopping at the end
  return { a, b };
}

/** The hand-written 2PC client: BEGIN, UPDATE, PREPARE TRANSACTION on both databases at once, then COMMIT PREPARED on both. */
export function transferByHand(pools: PgPools): (client: number) => Promise<void> {
  let gidNo = 0;
  return async (c) => {
    const account = `acct${c}`;
    const gid = `bench:${process.pid}:${gidNo++}`;
    await Promise.all(
      [
        [pools.a, -1],
        [pools.b, 1],
      ].map(async ([pool, delta]) => {
        const client = await (pool as pg.Pool).connect();
        try {
          await client.query('BEGIN');
          await client.query(UPDATE, [delta, account]);
          await client.query(`PREPARE TRANSACTION '${gid}'`);
        } finally {
          client.release();
        }
      }),
    );
    await Promise.all([pools.a.query(`COMMIT PREPARED '${gid}'`), pools.b.query(`COMMIT PREPARED '${gid}'`)]);
  };
}

/** A transfer inside one database, by hand: BEGIN, two UPDATEs, COMMIT — what a client does without a coordinator. */
export function localTransferByHand(pool: pg.Pool): (client: number) => Promise<void> {
  return async (c) => {
    const client = await pool.connect();
    try {
      await client.query('BEGIN');
      await client.query(UPDATE, [-1, `acct${c}`]);
      await client.query(UPDATE, [1, `acct${(c + 1) % 64}`]);
      await client.query('COMMIT');
    } finally {
      client.release();
    }
  };
}

/** The same as one request to the coordinator: one branch, so one-phase unless `onePhase` is false. */
export function localTransferThroughCoordinator(coordinator: CoordinatorChild, onePhase: boolean): (client: number) => Promise<void> {
  return async (c) => {
    const res = await coordinator.request('POST', '/v1/transactions', {
      onePhase,
      branches: [{ participant: 'a', operations: [{ sql: UPDATE, params: [-1, `acct${c}`] }, { sql: UPDATE, params: [1, `acct${(c + 1) % 64}`] }] }],
      commit: true,
    });
    const body = res.json as { state?: string; onePhase?: boolean } | null;
    if (body?.state !== 'committed' || (body.onePhase === true) !== onePhase) throw new Error(`transfer answered ${res.status} ${JSON.stringify(res.json)}`);
  };
}

/** The same transfer as one request to the coordinator. */
export function transferThroughCoordinator(coordinator: JsonService, protocol: '2pc' | '3pc', parallel: boolean): (client: number) => Promise<void> {
  return async (c) => {
    const account = `acct${c}`;
    const res = await coordinator.request('POST', '/v1/transactions', {
      protocol,
      parallel,
      branches: [
        { participant: 'a', operations: [{ sql: UPDATE, params: [-1, account] }] },
        { participant: 'b', operations: [{ sql: UPDATE, params: [1, account] }] },
      ],
      commit: true,
    });
    const state = (res.json as { state?: string } | null)?.state;
    if (state !== 'committed') throw new Error(`transfer answered ${res.status} ${JSON.stringify(res.json)}`);
  };
}

const here = path.dirname(fileURLToPath(import.meta.url));

/** Starts the two instant HTTP participants in their own process. */
export async function startHttpParticipants(): Promise<{ ports: number[]; stop: () => void }> {
  const child = spawn(process.execPath, [path.join(here, 'http-participants-process.js')], { stdio: ['ignore', 'pipe', 'inherit'] });
  const { ports } = (await firstJsonLine(child, 'the http participants')) as { ports: number[] };
  return { ports, stop: () => child.kill('SIGTERM') };
}

/** One protocol call to an instant HTTP participant, as the coordinator makes it; throws unless it answers 200 (and a yes vote to prepare). */
export async function callHttpParticipant(pool: Pool, verb: 'prepare' | 'commit', transactionId: string, branchNo: number): Promise<void> {
  const res = await pool.request({
    method: 'POST',
    path: `/${verb}`,
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ transactionId, branchId: `b${branchNo}`, gid: `tcx:bench:${transactionId}:${branchNo}`, payload: {}, protocol: '2pc' }),
    headersTimeout: 30_000,
    bodyTimeout: 30_000,
  });
  const text = await res.body.text();
  if (res.statusCode !== 200) throw new Error(`${verb} answered ${res.statusCode}`);
  if (verb === 'prepare' && (JSON.parse(text) as { vote?: string }).vote !== 'yes') throw new Error('prepare did not vote yes');
}

/** A client doing the coordinator's four calls itself: prepare on both, then commit on both. */
export function emptyByHand(ports: number[], connections: number): { op: () => Promise<void>; close: () => Promise<void> } {
  const pools = ports.map((port) => new Pool(`http://127.0.0.1:${port}`, { connections, pipelining: 1 }));
  return {
    op: async () => {
      const id = randomUUID();
      await Promise.all(pools.map((p, i) => callHttpParticipant(p, 'prepare', id, i + 1)));
      await Promise.all(pools.map((p, i) => callHttpParticipant(p, 'commit', id, i + 1)));
    },
    close: async () => {
      await Promise.all(pools.map((p) => p.close()));
    },
  };
}

export function emptyThroughCoordinator(coordinator: JsonService): () => Promise<void> {
  return async () => {
    const res = await coordinator.request('POST', '/v1/transactions', {
      branches: [
        { participant: 'h1', payload: {} },
        { participant: 'h2', payload: {} },
      ],
      commit: true,
    });
    const state = (res.json as { state?: string } | null)?.state;
    if (state !== 'committed') throw new Error(`empty transaction answered ${res.status} ${JSON.stringify(res.json)}`);
  };
}
