/**
 * Names for the request and answer types of the API, all taken from the types generated from
 * openapi.yaml (api-types.ts): the client's signatures change when the contract does.
 */
import type { components, operations } from './api-types.js';

type Schemas = components['schemas'];

/** The JSON body an operation answers with for a status. */
export type AnswerOf<Op extends keyof operations, Status extends keyof operations[Op]['responses']> =
  operations[Op]['responses'][Status] extends { content: { 'application/json': infer Body } } ? Body : never;

/** Every code of the error catalogue (`ErrorCode` in openapi.yaml). */
export type ErrorCode = Schemas['ErrorCode'];
export type ErrorBody = Schemas['ErrorBody'];

export type Health = Schemas['Health'];
export type ClusterView = AnswerOf<'getCluster', 200>;

export type RegisterParticipantRequest = Schemas['RegisterParticipantRequest'];
export type ParticipantView = Schemas['ParticipantView'];
export type ParticipantList = AnswerOf<'listParticipants', 200>;
export type ParticipantKind = ParticipantView['kind'];
export interface RemoveParticipantOptions {
  /** Remove it although it cannot be checked for prepared branches (gone for good); needs `reason`. */
  readonly unreachable?: boolean;
  readonly reason?: string;
}

export type PreparedBranchView = Schemas['PreparedBranchView'];
export type PreparedBranchList = Schemas['PreparedBranchList'];
export type ManualResolutionRequest = Schemas['ManualResolutionRequest'];
export type ManualResolutionView = Schemas['ManualResolutionView'];
export type ResolutionOutcome = ManualResolutionRequest['outcome'];

export type TransactionState = Schemas['TransactionState'];
export type TransactionView = Schemas['TransactionView'];
export type BranchView = Schemas['BranchView'];
export type EnlistAnswer = Schemas['EnlistAnswer'];
export type TransactionWithResults = Schemas['TransactionWithResults'];
export type TransactionPage = AnswerOf<'listTransactions', 200>;

export type SqlOperation = Schemas['SqlOperation'];
/**
 * A redis operation: the spec names `op` and `key` and leaves the rest open (`value`, `by`,
 * `min`, `max`, `field` depending on `op`), so the other fields are allowed here too.
 */
export type RedisOperation = Schemas['RedisOperation'] & { readonly [field: string]: unknown };
export type BranchRequest = Omit<Schemas['BranchRequest'], 'operations'> & {
  operations?: (SqlOperation | RedisOperation)[];
};
export type BeginTransactionRequest = Omit<Schemas['BeginTransactionRequest'], 'branches'> & {
  branches?: BranchRequest[];
};
/** A one-request transaction: its branches, run and committed by one call. */
export type RunTransactionRequest = Omit<BeginTransactionRequest, 'branches' | 'commit'> & {
  branches: BranchRequest[];
};

type ListQuery = NonNullable<operations['listTransactions']['parameters']['query']>;
/** Filters of `GET /v1/transactions`; `limit` may be a number, `since` a Date. */
export interface TransactionFilters {
  /** A state, or `in-doubt` for every transaction whose decision is not yet delivered everywhere. */
  readonly state?: ListQuery['state'];
  readonly participant?: string;
  readonly since?: string | Date;
  /** Page size, 1–1000 (the coordinator's default is 100). */
  readonly limit?: number;
}
export interface TransactionListOptions extends TransactionFilters {
  /** The `nextCursor` of the previous page. */
  readonly cursor?: string;
}
