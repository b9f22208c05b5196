/**
 * The recovery sweep under a lease: a pass that stopped because the lease may have gone is
 * never a clean one — even when the lease is held again by the end of it — since an adopted id
 * is settled (given up for good) only after a clean pass.
 */
import { describe, expect, it } from 'vitest';
import type { CoordinatorLog } from '../../src/coordinator/coordinator-log.js';
import type { ParticipantRegistry } from '../../src/coordinator/participant-registry.js';
import { RecoverySweeper } from '../../src/coordinator/recovery.js';
import type { TransactionManager } from '../../src/coordinator/transaction-manager.js';
import { DurableState } from '../../src/log/durable-state.js';
import { createLogger } from '../../src/logger.js';

function sweeperWith(gidsPerParticipant: string[][], leaseHeld: () => boolean) {
  const asked: string[] = [];
  const adapters = gidsPerParticipant.map((gids, i) => ({
    name: `p${i}`,
    kind: 'postgres',
    findPrepared: async () => {
      asked.push(`p${i}`);
      return gids;
    },
    abort: async () => undefined,
    commit: async () => undefined,
  }));
  const sweeper = new RecoverySweeper({
    log: { state: new DurableState(), hasPendingForce: () => false, record: () => undefined } as unknown as CoordinatorLog,
    registry: { adapters: () => adapters } as unknown as ParticipantRegistry,
    manager: { ownsBranch: () => false, isLive: () => false } as unknown as TransactionManager,
    coordinatorId: 'c1',
    logger: createLogger({ level: 'silent' }),
    leaseHeld,
  });
  return { sweeper, asked };
}

describe('the recovery sweep under a lease', () => {
  it('is clean when it reached every participant under the lease', async () => {
    const { sweeper, asked } = sweeperWith([[], []], () => true);
    await sweeper.sweep();
    expect(asked).toEqual(['p0', 'p1']);
    expect(sweeper.lastPassClean).toBe(true);
  });

  it('stops at a lease gap and is not clean, even when the lease is held again by its end', async () => {
    // Held, then not (while the first listing was under way), then held again.
    const answers = [true, false];
    const { sweeper, asked } = sweeperWith([['tcx:c1:00000000-0000-4000-8000-000000000001:1'], []], () => answers.shift() ?? true);
    await sweeper.sweep();
    expect(asked).toEqual(['p0']); // the listing that came back after the gap was dropped, p1 never asked
    expect(sweeper.lastPassClean).toBe(false);
  });
});
