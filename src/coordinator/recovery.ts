/**
 * Recovery (rule 6): nothing prepared is left behind.
 *
 * At start-up, after the log is replayed, the transaction manager resumes
 * every transaction the log saw begin but not end. Then the sweep asks every
 * participant that can list its prepared branches (postgres: pg_prepared_xacts; redis: its
 * staged records) for those
 * carrying this coordinator's gid prefix and resolves each one the running
 * coordinator is not itself driving:
 *
 *   the log holds a commit decision        -> commit
 *   anything else (abort, none, never seen) -> roll back (presumed abort)
 *
 * The sweep runs again periodically while the coordinator runs, so a branch
 * orphaned by a lost message or a participant restart is still cleaned up.
 */

import type { Logger } from 'pino';
import { errorMessage } from '../errors.js';
import type { CoordinatorLog } from './coordinator-log.js';
import type { BranchRecord } from '../log/log-records.js';
import { gidPrefix, parseGid } from '../participants/gid.js';
import { presumedAbortRecord } from './journal.js';
import type { ParticipantRegistry } from './participant-registry.js';
import type { TransactionManager } from './transaction-manager.js';
import { events, observeCall } from '../observability/events.js';

export interface SweepReport {
  readonly committed: number;
  readonly rolledBack: number;
  readonly failed: number;
  readonly unreachable: readonly string[];
}

export class RecoverySweeper {
  readonly #log: CoordinatorLog;
  readonly #registry: ParticipantRegistry;
  readonly #manager: TransactionManager;
  readonly #coordinatorId: string;
  readonly #logger: Logger;
  readonly #leaseHeld: () => boolean;
  #timer: NodeJS.Timeout | undefined;
  #running: Promise<SweepReport> | undefined;
  lastReport: (SweepReport & { readonly at: string }) | undefined;
  /** The last pass reached every participant and resolved everything it found. */
  lastPassClean = false;

  constructor(deps: {
    log: CoordinatorLog;
    registry: ParticipantRegistry;
    manager: TransactionManager;
    coordinatorId: string;
    logger: Logger;
    /** False once this instance may no longer hold the coordinator id (a shared log's lease). */
    leaseHeld?: () => boolean;
  }) {
    this.#leaseHeld = deps.leaseHeld ?? (() => true);
    this.#log = deps.log;
    this.#registry = deps.registry;
    this.#manager = deps.manager;
    this.#coordinatorId = deps.coordinatorId;
    this.#logger = deps.logger;
  }

  /** One pass over every participant; concurrent callers share the pass in progress. */
  sweep(): Promise<SweepReport> {
    this.#running ??= this.#sweepOnce().finally(() => {
      this.#running = undefined;
    });
    return this.#running;
  }

  async #sweepOnce(): Promise<SweepReport> {
    let committed = 0;
    let rolledBack = 0;
    let failed = 0;
    const unreachable: string[] = [];
    /** Branches rolled back of transactions the log has no record of, to record them as aborted. */
    const unknown = new Map<string, BranchRecord[]>();
    const prefix = gidPrefix(this.#coordinatorId);
    let stoppedEarly = false;
    // Another instance may be resolving these branches once the lease may have gone: stop, and
    // remember that this pass did not reach everything (it is then not a clean one).
    const mayGoOn = (): boolean => {
      if (!this.#leaseHeld()) stoppedEarly = true;
      return !stoppedEarly;
    };
    for (const adapter of this.#registry.adapters()) {
      if (!mayGoOn()) break;
      let gids: string[];
      try {
        gids = await observeCall(adapter, 'find-prepared', () => adapter.findPrepared(prefix));
      } catch (err) {
        unreachable.push(adapter.name);
        this.#logger.warn({ participant: adapter.name, err: errorMessage(err) }, 'recovery: cannot list prepared branches');
        continue;
      }
      // A listing that came back after the lease may have gone can name another holder's new branches.
      if (!mayGoOn()) break;
      for (const gid of gids) {
        if (!mayGoOn()) break;
        const parsed = parseGid(gid);
        if (parsed === undefined || parsed.coordinatorId !== this.#coordinatorId) continue;
        // A branch a running (or resumed) transaction knows is resolved by that transaction's driver.
        // A resumed transaction may have prepared branches its log never named (a crash between
        // PREPARE and the enlist record): those are resolved here, from the logged decision.
        if (this.#manager.ownsBranch(parsed.transactionId, gid)) continue;
        // A decision handed to the log but not yet durable is not a decision yet.
        if (this.#log.hasPendingForce(parsed.transactionId)) continue;
        // The owner's log answers from its state as of the call: nothing runs between the check and the read.
        const known = await this.#log.transaction(parsed.transactionId);
        const decision = known?.decision;
        const commit = decision === 'commit' || decision === 'precommit'; // a durable 3PC pre-commit means commit
        const ref = { transactionId: parsed.transactionId, branchId: `b${parsed.branchNo}`, gid };
        try {
          await (commit ? observeCall(adapter, 'commit', () => adapter.commit(ref)) : observeCall(adapter, 'abort', () => adapter.abort(ref)));
          if (commit) committed++;
          else rolledBack++;
          if (known === undefined) {
            const branches = unknown.get(parsed.transactionId) ?? [];
            branches.push({ branchId: ref.branchId, participant: adapter.name, kind: adapter.kind, gid });
            unknown.set(parsed.transactionId, branches);
          }
          this.#logger.info(
            { txId: parsed.transactionId, gid, participant: adapter.name, action: commit ? 'commit' : 'rollback', logged: decision ?? 'none' },
            'recovery: resolved prepared branch',
          );
        } catch (err) {
          failed++;
          this.#logger.warn({ txId: parsed.transactionId, gid, participant: adapter.name, err: errorMessage(err) }, 'recovery: could not resolve prepared branch');
        }
      }
    }
    const at = new Date().toISOString();
    for (const [transactionId, branches] of unknown) {
      // Still unknown (no record arrived meanwhile): it ended in abort, by presumption.
      // A live one (its other branches still being delivered) writes its own end record.
      if ((await this.#log.transaction(transactionId)) === undefined && !this.#manager.isLive(transactionId)) {
        this.#log.record(presumedAbortRecord(transactionId, branches, at));
      }
    }
    const report = { committed, rolledBack, failed, unreachable };
    this.lastReport = { ...report, at: new Date().toISOString() };
    this.lastPassClean = mayGoOn() && failed === 0 && unreachable.length === 0;
    if (committed + rolledBack + failed > 0) this.#logger.info(report, 'recovery sweep done');
    if (events.recoverySwept.active) events.recoverySwept.publish({ committed, rolledBack, failed, unreachable: unreachable.length });
    return report;
  }

  start(intervalMs: number): void {
    this.#timer = setInterval(() => {
      void this.sweep().catch((err: unknown) => this.#logger.error({ err: errorMessage(err) }, 'recovery sweep failed'));
    }, intervalMs);
    this.#timer.unref();
  }

  stop(): void {
    clearInterval(this.#timer);
  }

  /** Stops, and waits for a pass under way to end (it stops at its next lease check). */
  async stopped(): Promise<void> {
    this.stop();
    await this.#running?.catch(() => undefined);
  }
}
