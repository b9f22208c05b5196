/**
 * Operator controls over prepared branches: what is prepared on a participant
 * and what the log says of each, and the audited manual resolution of a branch
 * nobody else will resolve (a lost log, a retired coordinator id) — or of the lone
 * branch of a one-phase commit in doubt that its store cannot settle.
 */

import type { Logger } from 'pino';
import { CoordinatorError, errorMessage } from '../errors.js';
import type { Decision } from '../protocol/commit-protocol.js';
import type { CoordinatorLog } from './coordinator-log.js';
import { gidPrefix, isSafeGid, isValidCoordinatorId, parseGid } from '../participants/gid.js';
import { Mutex } from './mutex.js';
import type { ParticipantRegistry } from './participant-registry.js';
import type { TransactionManager } from './transaction-manager.js';
import { observeCall } from '../observability/events.js';

export interface PreparedBranchView {
  readonly gid: string;
  readonly coordinatorId: string | null;
  readonly transactionId: string | null;
  readonly branchId: string | null;
  readonly log: {
    readonly known: boolean;
    readonly decision: 'commit' | 'abort' | 'precommit' | null;
    readonly outcome: 'commit' | 'abort' | null;
    readonly live: boolean;
  };
}

export interface ManualResolutionView {
  readonly gid: string;
  readonly participant: string;
  readonly outcome: Decision;
  readonly loggedDecision: string | null;
  readonly resolvedAt: string;
}

export interface OperatorDeps {
  readonly coordinatorId: string;
  readonly log: CoordinatorLog;
  readonly registry: ParticipantRegistry;
  readonly transactions: TransactionManager;
  readonly logger: Logger;
  /** With a shared log: the instance holding the lease on another live coordinator id. */
  readonly liveElsewhere: ((coordinatorId: string) => string | undefined) | undefined;
}

export class ManualResolver {
  readonly #deps: OperatorDeps;
  readonly #resolutionLocks = new Map<string, Mutex>();

  constructor(deps: OperatorDeps) {
    this.#deps = deps;
  }

  /**
   * Branches prepared on a participant under a coordinator id (this one by default), each
   * with what the log says of its transaction. For operators; read-only.
   */
  async preparedBranches(name: string, coordinatorId: string): Promise<PreparedBranchView[]> {
    this.#deps.registry.view(name); // 404 when unknown
    if (!isValidCoordinatorId(coordinatorId)) throw new CoordinatorError('VALIDATION_FAILED', 'invalid coordinatorId');
    let gids: string[];
    try {
      gids = await this.#deps.registry.adapter(name).findPrepared(gidPrefix(coordinatorId));
    } catch (err) {
      if (err instanceof CoordinatorError) throw err;
      throw new CoordinatorError('PARTICIPANT_UNREACHABLE', `cannot list prepared branches on ${name}: ${errorMessage(err)}`, { cause: err });
    }
    return Promise.all(gids.map(async (gid) => {
      const parsed = parseGid(gid);
      const ours = parsed?.coordinatorId === this.#deps.coordinatorId;
      const tx = ours && parsed !== undefined ? await this.#deps.log.transaction(parsed.transactionId) : undefined;
      return {
        gid,
        coordinatorId: parsed?.coordinatorId ?? null,
        transactionId: parsed?.transactionId ?? null,
        branchId: parsed === undefined ? null : `b${parsed.branchNo}`,
        log: {
          known: tx !== undefined,
          decision: tx?.decision ?? null,
          outcome: tx?.outcome ?? null,
          live: parsed !== undefined && this.#deps.transactions.ownsBranch(parsed.transactionId, gid),
        },
      };
    }));
  }

  /**
   * Resolves one prepared branch by hand — for a branch whose log record is lost (a wiped
   * data directory, or a coordinator id that no longer runs). Refused when the log holds a
   * contradicting decision, or while a running transaction drives the branch. The
   * resolution is forced to the log before it is carried out (the audit trail) and stands
   * as the transaction's decision when the log had none.
   */
  resolveManually(name: string, gid: string, request: { outcome: Decision; reason: string; actor: string }): Promise<ManualResolutionView> {
    // One resolution per transaction at a time: two operators resolving sibling branches at
    // once must not both pass the consistency checks before either is logged.
    const parsed = parseGid(gid);
    const key = parsed === undefined ? gid : `${parsed.coordinatorId}:${parsed.transactionId}`;
    let lock = this.#resolutionLocks.get(key);
    if (lock === undefined) {
      lock = new Mutex();
      this.#resolutionLocks.set(key, lock);
    }
    const result = lock.run(() => this.#resolveManually(name, gid, request));
    void result.finally(() => {
      if (this.#resolutionLocks.get(key) === lock && !lock.busy) this.#resolutionLocks.delete(key);
    }).catch(() => undefined);
    return result;
  }

  async #resolveManually(
    name: string,
    gid: string,
    request: { outcome: Decision; reason: string; actor: string },
  ): Promise<ManualResolutionView> {
    if (this.#deps.log.failed !== undefined) throw new CoordinatorError('LOG_UNAVAILABLE');
    this.#deps.registry.view(name);
    const parsed = parseGid(gid);
    if (parsed === undefined || !isSafeGid(gid)) throw new CoordinatorError('VALIDATION_FAILED', `not a coordinator gid: ${gid}`);
    const ours = parsed.coordinatorId === this.#deps.coordinatorId;
    // Another coordinator id whose lease is live is no lost log: its holder resolves its branches.
    const holder = ours ? undefined : this.#deps.liveElsewhere?.(parsed.coordinatorId);
    if (holder !== undefined) {
      throw new CoordinatorError('INVALID_STATE_TRANSITION', `coordinator id ${parsed.coordinatorId} is live (instance ${holder} holds its lease): it resolves ${gid} itself`, {
        details: { holder },
      });
    }
    if (ours) {
      // The lone branch of a one-phase commit in doubt: nothing is prepared, the operator says what the store did.
      const onePhase = await this.#deps.transactions.resolveOnePhaseByHand(name, parsed.transactionId, gid, request);
      if (onePhase !== undefined) return { gid, participant: name, outcome: onePhase.outcome, loggedDecision: null, resolvedAt: onePhase.at };
    }
    if (ours && this.#deps.transactions.ownsBranch(parsed.transactionId, gid)) {
      throw new CoordinatorError('INVALID_STATE_TRANSITION', `a running transaction drives ${gid}; use POST /v1/transactions/${parsed.transactionId}/retry`);
    }
    if (ours && this.#deps.log.hasPendingForce(parsed.transactionId)) {
      throw new CoordinatorError('INVALID_STATE_TRANSITION', `a decision for transaction ${parsed.transactionId} is being written; try again`);
    }
    // The owner's log answers from its state as of the call: nothing runs between the pending check and the read.
    const logged = ours ? (await this.#deps.log.transaction(parsed.transactionId))?.decision : undefined;
    // For this coordinator's own branches the log is complete: no decision means abort
    // (presumed abort — recovery may already have rolled siblings back). Only branches of
    // another coordinator id (a lost log) are the operator's to decide.
    const loggedOutcome = logged === 'precommit' ? 'commit' : (logged ?? (ours ? 'abort' : undefined));
    if (loggedOutcome !== undefined && loggedOutcome !== request.outcome) {
      throw new CoordinatorError(
        'RESOLUTION_CONTRADICTS_LOG',
        logged === undefined
          ? `the log of this coordinator holds no commit decision for transaction ${parsed.transactionId}: it is presumed aborted`
          : `the log holds a ${logged} decision for transaction ${parsed.transactionId}`,
        { details: { logged: logged ?? null } },
      );
    }
    const earlier = await this.#deps.log.manualResolution(parsed.coordinatorId, parsed.transactionId);
    if (earlier !== undefined && earlier.outcome !== request.outcome) {
      throw new CoordinatorError(
        'RESOLUTION_CONTRADICTS_LOG',
        `another branch of transaction ${parsed.transactionId} was resolved to ${earlier.outcome} by hand (${earlier.at}, ${earlier.actor})`,
        { details: { logged: `manual ${earlier.outcome}` } },
      );
    }
    const adapter = this.#deps.registry.adapter(name);
    let prepared: string[];
    try {
      prepared = await adapter.findPrepared(gidPrefix(parsed.coordinatorId));
    } catch (err) {
      throw new CoordinatorError('PARTICIPANT_UNREACHABLE', `cannot check ${name} for ${gid}: ${errorMessage(err)}`, { cause: err });
    }
    if (!prepared.includes(gid)) {
      throw new CoordinatorError('INVALID_STATE_TRANSITION', `${gid} is not prepared on ${name}: nothing to resolve`);
    }
    const at = new Date().toISOString();
    await this.#deps.log.force({
      t: 'manual-resolution',
      gid,
      transactionId: parsed.transactionId,
      participant: name,
      outcome: request.outcome,
      reason: request.reason,
      actor: request.actor,
      at,
    });
    this.#deps.logger.warn({ txId: parsed.transactionId, gid, participant: name, outcome: request.outcome, reason: request.reason, actor: request.actor }, 'operator: manual resolution');
    const ref = { transactionId: parsed.transactionId, branchId: `b${parsed.branchNo}`, gid };
    try {
      await (request.outcome === 'commit' ? observeCall(adapter, 'commit', () => adapter.commit(ref)) : observeCall(adapter, 'abort', () => adapter.abort(ref)));
    } catch (err) {
      throw new CoordinatorError('PARTICIPANT_UNREACHABLE', `resolution recorded, but ${name} did not confirm it yet: ${errorMessage(err)}`, {
        cause: err,
      });
    }
    return { gid, participant: name, outcome: request.outcome, loggedDecision: logged ?? null, resolvedAt: at };
  }
}
