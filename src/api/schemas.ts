/**
 * JSON schemas of every request the API accepts. openapi.yaml carries the
 * same schemas; test/api/openapi-contract.test.ts fails when they differ.
 */

import { PARTICIPANT_KIND_NAMES } from '../coordinator/participant-kinds.js';

export const NAME_PATTERN = '^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$';
export const TRANSACTION_ID_PATTERN = '^[A-Za-z0-9-]{1,64}$';

/** The query of a route that takes no query parameters: any one is refused (400), none is ignored. */
export const noQuery = { type: 'object', additionalProperties: false } as const;

export const participantNameParams = {
  type: 'object',
  additionalProperties: false,
  required: ['name'],
  properties: { name: { type: 'string', pattern: NAME_PATTERN } },
} as const;

export const transactionIdParams = {
  type: 'object',
  additionalProperties: false,
  required: ['id'],
  properties: { id: { type: 'string', pattern: TRANSACTION_ID_PATTERN } },
} as const;

export const branchParams = {
  type: 'object',
  additionalProperties: false,
  required: ['id', 'branchId'],
  properties: { id: { type: 'string', pattern: TRANSACTION_ID_PATTERN }, branchId: { type: 'string', pattern: '^b[0-9]{1,6}$' } },
} as const;

/** DELETE of a participant gone for good: `unreachable=true` with the operator's reason. */
export const removeParticipantQuery = {
  type: 'object',
  additionalProperties: false,
  properties: {
    unreachable: { type: 'string', enum: ['true'] },
    reason: { type: 'string', minLength: 1, maxLength: 1000 },
  },
} as const;

export const forgetBranchBody = {
  type: 'object',
  additionalProperties: false,
  required: ['reason'],
  properties: { reason: { type: 'string', minLength: 1, maxLength: 1000 } },
} as const;

export const registerParticipantBody = {
  type: 'object',
  additionalProperties: false,
  required: ['name', 'kind'],
  properties: {
    name: { type: 'string', pattern: NAME_PATTERN },
    kind: { type: 'string', enum: PARTICIPANT_KIND_NAMES },
    connectionString: { type: 'string', minLength: 1, maxLength: 2048 },
    baseUrl: { type: 'string', minLength: 1, maxLength: 2048 },
    url: { type: 'string', minLength: 1, maxLength: 2048 },
    options: {
      type: 'object',
      additionalProperties: false,
      properties: {
        allowVolatile: { type: 'boolean' },
      },
    },
    auth: {
      type: 'object',
      additionalProperties: false,
      required: ['type'],
      properties: {
        type: { type: 'string', enum: ['bearer', 'basic'] },
        token: { type: 'string', minLength: 1, maxLength: 4096, pattern: '^[\\x21-\\x7e]+$' },
        username: { type: 'string', minLength: 1, maxLength: 256, pattern: '^[^:\\r\\n]+$' },
        password: { type: 'string', maxLength: 1024, pattern: '^[^\\r\\n]*$' },
      },
    },
  },
} as const;

export const sqlOperation = {
  type: 'object',
  additionalProperties: false,
  required: ['sql'],
  properties: {
    sql: { type: 'string', minLength: 1, maxLength: 100000 },
    params: { type: 'array', maxItems: 1000 },
  },
} as const;

/** One Redis operation; redis-operations.ts checks each op's own fields. */
export const redisOperation = {
  type: 'object',
  required: ['op', 'key'],
  properties: {
    op: { type: 'string', enum: ['set', 'del', 'incrby', 'expect', 'hset', 'get'] },
    key: { type: 'string', minLength: 1, maxLength: 1024 },
  },
} as const;

/** One message of a nats branch, published on commit; nats-messages.ts checks subjects and headers. */
export const natsMessage = {
  type: 'object',
  additionalProperties: false,
  required: ['subject', 'data'],
  properties: {
    subject: { type: 'string', minLength: 1, maxLength: 255 },
    data: {},
    headers: { type: 'object', maxProperties: 64, additionalProperties: { type: 'string', maxLength: 4096 } },
  },
} as const;

export const branchBody = {
  type: 'object',
  additionalProperties: false,
  required: ['participant'],
  properties: {
    participant: { type: 'string', pattern: NAME_PATTERN },
    operations: { type: 'array', minItems: 1, maxItems: 100, items: { anyOf: [sqlOperation, redisOperation] } },
    payload: {},
    messages: { type: 'array', minItems: 1, maxItems: 100, items: natsMessage },
  },
} as const;

export const beginTransactionBody = {
  type: 'object',
  additionalProperties: false,
  properties: {
    protocol: { type: 'string', enum: ['2pc', '3pc'] },
    timeoutMs: { type: 'integer', minimum: 100, maximum: 86400000 },
    branches: { type: 'array', minItems: 1, maxItems: 64, items: branchBody },
    commit: { type: 'boolean' },
    parallel: { type: 'boolean' },
    onePhase: { type: 'boolean' },
  },
} as const;

export const abortBody = {
  type: ['object', 'null'],
  additionalProperties: false,
  properties: {
    reason: { type: 'string', maxLength: 1000 },
  },
} as const;

export const listTransactionsQuery = {
  type: 'object',
  additionalProperties: false,
  properties: {
    state: {
      type: 'string',
      enum: ['in-doubt', 'active', 'preparing', 'prepared', 'deciding', 'precommitted', 'committing', 'aborting', 'committed', 'aborted', 'one-phase'],
    },
    participant: { type: 'string', pattern: NAME_PATTERN },
    since: { type: 'string', maxLength: 40 },
    limit: { type: 'string', pattern: '^[1-9][0-9]{0,3}$' },
    cursor: { type: 'string', pattern: '^[A-Za-z0-9_-]{1,200}$' },
  },
} as const;

export const GID_PATTERN = '^tcx:[A-Za-z0-9-]{1,40}:[A-Za-z0-9-]{1,64}:[0-9]{1,6}$';

export const preparedBranchParams = {
  type: 'object',
  additionalProperties: false,
  required: ['name', 'gid'],
  properties: {
    name: { type: 'string', pattern: NAME_PATTERN },
    gid: { type: 'string', pattern: GID_PATTERN },
  },
} as const;

export const preparedBranchesQuery = {
  type: 'object',
  additionalProperties: false,
  properties: {
    coordinatorId: { type: 'string', pattern: '^[A-Za-z0-9-]{1,40}$' },
  },
} as const;

export const manualResolutionBody = {
  type: 'object',
  additionalProperties: false,
  required: ['outcome', 'reason'],
  properties: {
    outcome: { type: 'string', enum: ['commit', 'abort'] },
    reason: { type: 'string', minLength: 1, maxLength: 1000 },
  },
} as const;
