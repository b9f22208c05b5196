/**
 * Whether a Redis participant's prepared branches survive a restart of the server: every
 * master must run with appendonly yes and appendfsync always (a staged record is then the
 * durable yes vote), and no eviction policy may drop staged records or locks.
 */

import { Cluster, type Redis } from 'ioredis';
import { errorMessage } from '../errors.js';
import { isReplyError, redisUnreachable } from './redis-connection.js';

const VOLATILE_RISK = 'staged (prepared) writes would be lost on a Redis restart, breaking atomicity';
const EVICTING_POLICIES = new Set(['allkeys-lru', 'allkeys-lfu', 'allkeys-random']);

/** What each master's settings put at risk, one sentence each; empty when nothing does. Throws PARTICIPANT_UNREACHABLE. */
export async function durabilityProblems(client: Redis | Cluster, participant: string): Promise<string[]> {
  const nodes: Redis[] = client instanceof Cluster ? client.nodes('master') : [client];
  const problems: string[] = [];
  for (const node of nodes) {
    const where = nodes.length > 1 ? ` (node ${node.options.host ?? '?'}:${node.options.port ?? '?'})` : '';
    let settings: Map<string, string>;
    try {
      settings = new Map();
      for (const name of ['appendonly', 'appendfsync', 'maxmemory-policy']) {
        const reply = (await node.config('GET', name)) as unknown;
        if (Array.isArray(reply)) for (let i = 0; i + 1 < reply.length; i += 2) settings.set(String(reply[i]), String(reply[i + 1]));
      }
    } catch (err) {
      if (!isReplyError(err)) throw redisUnreachable(participant, err);
      problems.push(
        `could not verify the durability of redis participant ${participant}${where}: CONFIG GET is not available (${errorMessage(err)}). ` +
          `Unless the server runs with appendonly yes and appendfsync always, ${VOLATILE_RISK}.`,
      );
      continue;
    }
    const appendonly = settings.get('appendonly') ?? 'unknown';
    const appendfsync = settings.get('appendfsync') ?? 'unknown';
    if (appendonly !== 'yes' || appendfsync !== 'always') {
      problems.push(
        `redis participant ${participant}${where} runs with appendonly ${appendonly}, appendfsync ${appendfsync}: ${VOLATILE_RISK}. ` +
          'Set appendonly yes and appendfsync always (CONFIG SET, then CONFIG REWRITE).',
      );
    }
    const policy = settings.get('maxmemory-policy');
    if (policy !== undefined && EVICTING_POLICIES.has(policy)) {
      problems.push(
        `redis participant ${participant}${where} runs with maxmemory-policy ${policy}: staged records and locks could be evicted. ` +
          'Use noeviction (or a volatile-* policy).',
      );
    }
  }
  return problems;
}
