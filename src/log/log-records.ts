/**
 * The records of the coordinator's write-ahead log. Each is a JSON payload in
 * one frame of the file log (see file-log.ts for the framing).
 *
 * What a transaction writes (src/coordinator/journal.ts builds every record):
 *   prepare-intent   forced, before the first prepare leaves, only when a branch
 *                    is one recovery cannot find by itself (http): its branches
 *   decision         commit (3PC: precommit) with the whole branch list and the
 *                    transaction's summary, forced before the first commit
 *                    (pre-commit) message leaves (rule 2). Never for an abort
 *                    (presumed abort), never a second one after a 3PC pre-commit.
 *   ended            never forced; for an abort it carries the summary
 *   one-phase-in-doubt  forced, only when a one-phase commit's answer was lost: the
 *                    branch and the store's evidence for asking its outcome later
 * So a committed transaction over stores that list their own prepared branches
 * writes one forced record and one unforced one; group commit shares the fsync.
 *
 * Other records:
 *   participant-registered / participant-removed  forced (recovery needs them)
 *   manual-resolution  forced (the audit trail)
 *   branch-forgotten   forced (the audit trail): a branch of an aborting transaction
 *                    given up on, its participant gone for good
 *   tx-state         snapshot form of one transaction (written at compaction)
 *   tx-begun, branch-enlisted, branch-acked  written by earlier versions; still
 *                    replayed, never written
 */

import type { Decision } from '../protocol/commit-protocol.js';

export type ProtocolName = '2pc' | '3pc';
/** As the log knows it: `unknown` for a transaction known only from branches the recovery sweep found. */
export type LoggedProtocol = ProtocolName | 'unknown';
export type ParticipantKind = 'postgres' | 'http' | 'redis' | 'mysql' | 'nats';

/** Everything needed to reach a participant again after a restart, secrets included. */
export interface ParticipantConfig {
  readonly name: string;
  readonly kind: ParticipantKind;
  readonly connectionString?: string;
  readonly baseUrl?: string;
  readonly url?: string;
  readonly registeredAt: string;
  readonly options?: Readonly<Record<string, unknown>>;
  /** http: credentials sent with every call; stored (recovery needs them), never shown. */
  readonly auth?: ParticipantAuth;
  /** Risks accepted at registration, kept so that operators still see them after a restart. */
  readonly warnings?: readonly string[];
}

export type ParticipantAuth =
  | { readonly type: 'bearer'; readonly token: string }
  | { readonly type: 'basic'; readonly username: string; readonly password: string };

export interface BranchRecord {
  readonly branchId: string;
  readonly participant: string;
  readonly kind: ParticipantKind;
  /** Global transaction id on the participant's side (Postgres gid, Redis staged key suffix). */
  readonly gid: string;
  /** Work kept in the log: http, the payload sent with prepare/commit/abort; nats, the messages. */
  readonly payload?: unknown;
  /** In decision records: the branch's vote (read-only branches get no phase 2). */
  readonly vote?: 'yes' | 'no' | 'read-only';
}

export type LogRecord =
  | { readonly t: 'participant-registered'; readonly participant: ParticipantConfig }
  | {
      readonly t: 'participant-removed';
      readonly name: string;
      readonly at: string;
      /** Removed although it could not be checked for prepared branches (gone for good): who and why. */
      readonly forced?: { readonly reason: string; readonly actor: string };
    }
  | {
      readonly t: 'tx-begun';
      readonly id: string;
      readonly protocol: ProtocolName;
      readonly timeoutMs: number;
      readonly at: string;
    }
  | { readonly t: 'branch-enlisted'; readonly id: string; readonly branch: BranchRecord; readonly at: string }
  | ({ readonly t: 'prepare-intent'; readonly id: string; readonly branches: readonly BranchRecord[]; readonly at: string } & TransactionSummary)
  | ({
      readonly t: 'decision';
      readonly id: string;
      readonly decision: Decision | 'precommit';
      readonly branches: readonly BranchRecord[];
      readonly reason?: string;
      readonly at: string;
    } & Partial<TransactionSummary>)
  | {
      readonly t: 'branch-acked';
      readonly id: string;
      readonly branchId: string;
      /** 'precommit': the branch acknowledged a 3PC pre-commit (not yet the outcome). */
      readonly verdict?: 'precommit';
      readonly at: string;
    }
  | {
      readonly t: 'ended';
      readonly id: string;
      readonly outcome: Decision;
      readonly at: string;
      /** Aborts and one-phase commits (which log no decision): what the view of the finished transaction needs. */
      readonly summary?: TransactionSummary & { readonly branches: readonly BranchRecord[]; readonly reason?: string };
      /** Its only branch's store committed or rolled it back in one step (no decision record). */
      readonly onePhase?: true;
    }
  | ({
      /**
       * A one-phase commit whose answer was lost: the store decided, and the coordinator asks
       * it what (after a restart too) with this evidence (forced, before it asks).
       */
      readonly t: 'one-phase-in-doubt';
      readonly id: string;
      readonly branch: BranchRecord;
      readonly evidence: OnePhaseEvidence;
      readonly reason: string;
      readonly at: string;
    } & TransactionSummary)
  | { readonly t: 'tx-state'; readonly tx: DurableTransaction }
  | {
      /** An operator resolved a prepared branch by hand (forced; the audit trail). */
      readonly t: 'manual-resolution';
      readonly gid: string;
      readonly transactionId: string;
      readonly participant: string;
      readonly outcome: Decision;
      readonly reason: string;
      readonly actor: string;
      readonly at: string;
    }
  | {
      /**
       * An operator gave up on a branch of an aborting transaction whose participant is gone
       * for good (forced; the audit trail). It stands for the branch's abort acknowledgement.
       */
      readonly t: 'branch-forgotten';
      readonly id: string;
      readonly branchId: string;
      readonly participant: string;
      readonly gid: string;
      readonly reason: string;
      readonly actor: string;
      readonly at: string;
    }
  | { readonly t: 'coordinator'; readonly coordinatorId: string; readonly at: string };

export type ForgottenBranch = Extract<LogRecord, { t: 'branch-forgotten' }>;

/** What a record that may be the first of its transaction carries about it. */
export interface TransactionSummary {
  readonly protocol: LoggedProtocol;
  readonly timeoutMs: number;
  readonly createdAt: string;
}

/** What the log knows of one transaction. */
export interface DurableTransaction {
  readonly id: string;
  readonly protocol: LoggedProtocol;
  readonly timeoutMs: number;
  readonly createdAt: string;
  readonly branches: readonly (BranchRecord & { readonly ackedAt?: string; readonly precommittedAt?: string })[];
  readonly decision?: Decision | 'precommit';
  readonly decidedAt?: string;
  readonly reason?: string;
  readonly outcome?: Decision;
  readonly endedAt?: string;
  /** Ended by a one-phase commit. */
  readonly onePhase?: true;
  /** A one-phase commit whose answer was lost, not ended yet: what asking the store needs. */
  readonly onePhaseInDoubt?: { readonly evidence: OnePhaseEvidence; readonly reason: string; readonly at: string };
}

/** A store's evidence for a lost one-phase commit (plain JSON; the adapter reads it). */
export type OnePhaseEvidence = Readonly<Record<string, string | number | null>>;

const RECORD_TYPES: ReadonlySet<string> = new Set([
  'participant-registered',
  'participant-removed',
  'tx-begun',
  'branch-enlisted',
  'prepare-intent',
  'decision',
  'branch-acked',
  'ended',
  'tx-state',
  'coordinator',
  'manual-resolution',
  'branch-forgotten',
  'one-phase-in-doubt',
]);

export function isLogRecord(value: unknown): value is LogRecord {
  return (
    typeof value === 'object' &&
    value !== null &&
    typeof (value as { t?: unknown }).t === 'string' &&
    RECORD_TYPES.has((value as { t: string }).t)
  );
}
