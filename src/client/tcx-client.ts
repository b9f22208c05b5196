/**
 * TcxClient: one method per operation of openapi.yaml, named after its operationId, plus two
 * conveniences (`runTransaction`, `iterateTransactions`). Every answer is typed with the types
 * generated from the spec; every error is a TcxApiError (an error of the catalogue), a
 * TcxResponseError or a TcxConnectionError (errors.ts).
 *
 * Retries (transport.ts): a call that could not connect is repeated whatever it is; GETs and
 * the operations the spec calls idempotent — prepare ("repeating it answers the same"), commit
 * and abort ("idempotent") — are also repeated after a broken connection, a timeout or a 503
 * with Retry-After. Begin, one-request transactions, enlist, register, remove, resolve, forget
 * and retry-delivery are never sent twice once they may have reached the coordinator.
 */
import { Transport } from './transport.js';
import type {
  AnswerOf,
  BeginTransactionRequest,
  BranchRequest,
  ClusterView,
  EnlistAnswer,
  Health,
  ManualResolutionRequest,
  ManualResolutionView,
  ParticipantList,
  ParticipantView,
  PreparedBranchList,
  RegisterParticipantRequest,
  RemoveParticipantOptions,
  RunTransactionRequest,
  TransactionFilters,
  TransactionListOptions,
  TransactionPage,
  TransactionView,
  TransactionWithResults,
} from './types.js';

export interface TcxClientOptions {
  /** The coordinator's base URL, e.g. `http://127.0.0.1:7070`. */
  readonly url: string;
  /** A bearer token (TCX_API_TOKENS / TCX_ADMIN_TOKENS); none for an open coordinator. */
  readonly token?: string | undefined;
  /** Deadline of each attempt of a call, in ms. Default 30 000. */
  readonly timeoutMs?: number | undefined;
  /** How many times a call is repeated where that is safe (see above). Default 2. */
  readonly retries?: number | undefined;
}

export const DEFAULT_TIMEOUT_MS = 30_000;
export const DEFAULT_RETRIES = 2;

const enc = encodeURIComponent;

export class TcxClient {
  readonly #transport: Transport;

  constructor(options: TcxClientOptions) {
    this.#transport = new Transport({
      url: options.url,
      token: options.token,
      timeoutMs: options.timeoutMs ?? DEFAULT_TIMEOUT_MS,
      retries: options.retries ?? DEFAULT_RETRIES,
    });
  }

  /** Releases the connections. The client cannot be used afterwards. */
  async close(): Promise<void> {
    await this.#transport.close();
  }

  // ---- health ----------------------------------------------------------------------------

  /** GET /healthz. An unhealthy coordinator (503) answers the same view with `status: unhealthy`. */
  async getHealth(): Promise<Health> {
    return (await this.#get('/healthz', undefined, [503])) as AnswerOf<'getHealth', 200>;
  }

  /** GET /v1/cluster: the leases of the instances sharing a Postgres log (`mode: single` otherwise). */
  async getCluster(): Promise<ClusterView> {
    return (await this.#get('/v1/cluster')) as ClusterView;
  }

  // ---- participants ----------------------------------------------------------------------

  async listParticipants(): Promise<ParticipantList> {
    return (await this.#get('/v1/participants')) as ParticipantList;
  }

  async getParticipant(name: string): Promise<ParticipantView> {
    return (await this.#get(`/v1/participants/${enc(name)}`)) as ParticipantView;
  }

  /** Admin. Not retried once sent: a repeat of a registration that took effect is PARTICIPANT_EXISTS. */
  async registerParticipant(request: RegisterParticipantRequest): Promise<ParticipantView> {
    return (await this.#post('/v1/participants', request, false)) as AnswerOf<'registerParticipant', 201>;
  }

  /** Admin. `unreachable` (with a `reason`) removes one gone for good. */
  async removeParticipant(name: string, options: RemoveParticipantOptions = {}): Promise<void> {
    await this.#transport.send({
      method: 'DELETE',
      path: `/v1/participants/${enc(name)}`,
      query: { unreachable: options.unreachable === true ? 'true' : undefined, reason: options.reason },
      idempotent: false,
    });
  }

  /** The branches prepared on a participant under this coordinator's id (or `coordinatorId`). */
  async listPreparedBranches(name: string, options: { readonly coordinatorId?: string } = {}): Promise<PreparedBranchList> {
    return (await this.#get(`/v1/participants/${enc(name)}/prepared`, { coordinatorId: options.coordinatorId })) as PreparedBranchList;
  }

  /** Admin, audited: commit or roll back one prepared branch by hand. Not retried (see the spec). */
  async resolvePreparedBranch(name: string, gid: string, request: ManualResolutionRequest): Promise<ManualResolutionView> {
    const path = `/v1/participants/${enc(name)}/prepared/${enc(gid)}/resolve`;
    return (await this.#post(path, request, false)) as ManualResolutionView;
  }

  // ---- transactions ----------------------------------------------------------------------

  /** POST /v1/transactions: begins one (201), optionally with branches; never retried once sent. */
  async beginTransaction(request: BeginTransactionRequest = {}): Promise<TransactionWithResults> {
    return (await this.#post('/v1/transactions', request, false)) as AnswerOf<'beginTransaction', 201>;
  }

  /**
   * A one-request transaction: begins, runs every branch and commits. Answers `committed` (200)
   * or, when the decision is durable but not yet acknowledged everywhere, `committing` /
   * `precommitted` (202, in doubt) — or `one-phase` (202) while a lone branch's store has not
   * told the outcome of its one-step commit yet. An abort is a TcxApiError TRANSACTION_ABORTED whose `body`
   * is the view. Never retried once sent: a repeat would be a second transaction.
   */
  async runTransaction(request: RunTransactionRequest): Promise<TransactionWithResults> {
    return (await this.#post('/v1/transactions', { ...request, commit: true }, false)) as AnswerOf<'beginTransaction', 200>;
  }

  /** One page, newest first; pass `nextCursor` back as `cursor` for the next one. */
  async listTransactions(options: TransactionListOptions = {}): Promise<TransactionPage> {
    return (await this.#get('/v1/transactions', { ...filterQuery(options), cursor: options.cursor })) as TransactionPage;
  }

  /** Every matching transaction, newest first, fetching page after page as they are consumed. */
  async *iterateTransactions(filters: TransactionFilters = {}): AsyncGenerator<TransactionView, void, undefined> {
    let cursor: string | undefined = undefined;
    do {
      const page: TransactionPage = await this.listTransactions({ ...filters, ...(cursor === undefined ? {} : { cursor }) });
      yield* page.transactions;
      cursor = page.nextCursor ?? undefined;
    } while (cursor !== undefined);
  }

  async getTransaction(id: string): Promise<TransactionView> {
    return (await this.#get(`/v1/transactions/${enc(id)}`)) as TransactionView;
  }

  /** Adds work for one participant; never retried once sent (a repeat would run the work twice). */
  async enlistBranch(id: string, branch: BranchRequest): Promise<EnlistAnswer> {
    return (await this.#post(`/v1/transactions/${enc(id)}/branches`, branch, false)) as EnlistAnswer;
  }

  /** Phase 1 only: `prepared` (200) or `preparing` (202, votes outstanding). Idempotent. */
  async prepareTransaction(id: string): Promise<TransactionView> {
    return (await this.#post(`/v1/transactions/${enc(id)}/prepare`, undefined, true)) as TransactionView;
  }

  /** Prepares if needed, decides, delivers: `committed` (200) or in doubt (202). Idempotent. */
  async commitTransaction(id: string): Promise<TransactionView> {
    return (await this.#post(`/v1/transactions/${enc(id)}/commit`, undefined, true)) as TransactionView;
  }

  /** Aborts a transaction without a commit decision. Idempotent. */
  async abortTransaction(id: string, reason?: string): Promise<TransactionView> {
    return (await this.#post(`/v1/transactions/${enc(id)}/abort`, reason === undefined ? undefined : { reason }, true)) as TransactionView;
  }

  /** Operator: retries an in-doubt transaction's pending deliveries now; answers the view after. */
  async retryTransactionDelivery(id: string): Promise<TransactionView> {
    return (await this.#post(`/v1/transactions/${enc(id)}/retry`, undefined, false)) as TransactionView;
  }

  /** Admin, audited: gives up on a branch of an aborting transaction whose participant is gone for good. */
  async forgetBranch(id: string, branchId: string, reason: string): Promise<TransactionView> {
    return (await this.#post(`/v1/transactions/${enc(id)}/branches/${enc(branchId)}/forget`, { reason }, false)) as TransactionView;
  }

  // ---------------------------------------------------------------------------------------

  async #get(path: string, query?: Record<string, string | undefined>, answerStatuses?: readonly number[]): Promise<unknown> {
    const answer = await this.#transport.send({
      method: 'GET',
      path,
      idempotent: true,
      ...(query === undefined ? {} : { query }),
      ...(answerStatuses === undefined ? {} : { answerStatuses }),
    });
    return answer.body;
  }

  async #post(path: string, body: unknown, idempotent: boolean): Promise<unknown> {
    return (await this.#transport.send({ method: 'POST', path, body, idempotent })).body;
  }
}

function filterQuery(filters: TransactionFilters): Record<string, string | undefined> {
  return {
    state: filters.state,
    participant: filters.participant,
    since: filters.since instanceof Date ? filters.since.toISOString() : filters.since,
    limit: filters.limit === undefined ? undefined : String(filters.limit),
  };
}
