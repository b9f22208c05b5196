/**
 * The adapter conformance suite (test/support/adapter-conformance.ts) for nats, on a
 * nats-server -js of its own with a file stream. A slot's value is the sum of `delta` over
 * the messages the stream really holds on `<prefix>.<slot>`: one message per branch.
 */
import { randomBytes } from 'node:crypto';
import { silentLogger } from '../../src/logger.js';
import { NatsParticipant } from '../../src/participants/nats-participant.js';
import { describeConformance, type ConformanceKind } from '../support/adapter-conformance.js';
import { NatsServer, createStream, readStream } from '../support/nats-server.js';

async function natsKind(): Promise<ConformanceKind> {
  const server = await NatsServer.start({ name: 'conformance' });
  const prefix = `conf${randomBytes(4).toString('hex')}`;
  const stream = 'CONFORMANCE';
  await createStream(server.url, { name: stream, subjects: [`${prefix}.>`] });
  const build = (url: string, timeoutMs: number): NatsParticipant =>
    new NatsParticipant({ name: 'bus', url, connectTimeoutMs: timeoutMs, requestTimeoutMs: timeoutMs, logger: silentLogger() });
  const adapter = build(server.url, 3_000);
  return {
    name: 'nats',
    adapter: () => adapter,
    address: { host: server.host, port: server.port },
    adapterAt: (host, port) => build(`nats://${host}:${port}`, 1_000),
    work: (delta, slot = 0) => [{ subject: `${prefix}.${slot}`, data: { delta } }],
    value: async (slot = 0) => {
      const stored = await readStream(server.url, stream, `${prefix}.${slot}`);
      return stored.reduce((sum, m) => sum + (JSON.parse(m.text) as { delta: number }).delta, 0);
    },
    restart: async () => {
      await server.kill();
      await server.restart();
    },
    close: async () => {
      await adapter.close();
      await server.destroy();
    },
  };
}

describeConformance('nats', natsKind);
