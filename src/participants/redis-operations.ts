/**
 * The work of a redis branch, and where the adapter keeps its own state in Redis.
 *
 * Work is a non-empty array (at most 100 per enlist) of:
 *
 *   {"op":"set",    "key", "value"}                      SET key value (drops any TTL)
 *   {"op":"del",    "key"}                               DEL key
 *   {"op":"incrby", "key", "by", "min"?, "max"?}         INCRBY; the branch votes no if the
 *                                                        result leaves [min, max]
 *   {"op":"expect", "key", "value": string | null}       guard: votes no unless the key holds
 *                                                        exactly that string (null: key absent)
 *   {"op":"hset",   "key", "field", "value"}             HSET key field value
 *   {"op":"get",    "key"}                               read at enlist time, answered at once
 *
 * Keys are 1..1024 bytes and may not start with the reserved prefix `tcx:`; values and
 * fields are strings (values at most 512 KiB, fields at most 1024 bytes); numbers in
 * incrby are JS safe integers. A branch (all its enlists) holds at most 1,000 operations and
 * 64 MiB of keys, fields and values. Guards and bounds see the values as left by the branch's
 * earlier operations. Unknown properties are refused (a typo must not silently drop a guard).
 *
 * Key layout (every key the adapter owns starts with `tcx:`):
 *
 *   tcx:lock:{T}:<key>         lock of a data key; value = gid of the prepared branch
 *   tcx:{T}:staged:<gid>       staged record (hash: gid, created, ops, keys, v)
 *   tcx:staged:<coordinatorId> index (hash: gid -> staged record key), for recovery
 *
 * T is the branch's hash tag: the key's own hash tag `{T}` when it has one, otherwise a
 * short computed tag that hashes to the same slot as the whole key. A lock thus always
 * lives in its data key's slot, and the staged record in the slot of the branch's keys,
 * so in Redis Cluster one Lua script can touch them all. The index cannot share a slot
 * with every branch; it is written by separate commands (see redis-participant.ts).
 */

import { CoordinatorError } from '../errors.js';

export type RedisWriteOperation =
  | { readonly op: 'set'; readonly key: string; readonly value: string }
  | { readonly op: 'del'; readonly key: string }
  | { readonly op: 'incrby'; readonly key: string; readonly by: number; readonly min?: number; readonly max?: number }
  | { readonly op: 'hset'; readonly key: string; readonly field: string; readonly value: string };

export type RedisGuardOperation = { readonly op: 'expect'; readonly key: string; readonly value: string | null };
export type RedisReadOperation = { readonly op: 'get'; readonly key: string };
/** Operations that go into the prepare script: writes and guards. */
export type RedisStagedOperation = RedisWriteOperation | RedisGuardOperation;
export type RedisOperation = RedisStagedOperation | RedisReadOperation;

export const MAX_OPERATIONS = 100;
/** Across every enlist of one branch. */
export const MAX_BRANCH_OPERATIONS = 1_000;
/** Across every enlist of one branch: keys, fields and values together (the staged record's size). */
export const MAX_BRANCH_BYTES = 64 * 1024 * 1024;
export const MAX_KEY_BYTES = 1024;
export const MAX_FIELD_BYTES = 1024;
export const MAX_VALUE_BYTES = 512 * 1024;
export const RESERVED_PREFIX = 'tcx:';
export const SLOT_COUNT = 16_384;

const ALLOWED: Record<RedisOperation['op'], readonly string[]> = {
  set: ['op', 'key', 'value'],
  del: ['op', 'key'],
  incrby: ['op', 'key', 'by', 'min', 'max'],
  expect: ['op', 'key', 'value'],
  hset: ['op', 'key', 'field', 'value'],
  get: ['op', 'key'],
};

function invalid(message: string, index: number): CoordinatorError {
  return new CoordinatorError('VALIDATION_FAILED', `operation ${index}: ${message}`, { details: { operation: index } });
}

/** UTF-8 size, or -1 when the string holds a lone surrogate (it would not survive the round trip). */
function utf8Bytes(s: string): number {
  const buf = Buffer.from(s, 'utf8');
  return buf.toString('utf8') === s ? buf.length : -1;
}

function checkString(value: unknown, what: string, max: number, index: number, allowEmpty: boolean): string {
  if (typeof value !== 'string') throw invalid(`${what} must be a string`, index);
  const bytes = utf8Bytes(value);
  if (bytes < 0) throw invalid(`${what} is not well-formed unicode`, index);
  if (!allowEmpty && bytes === 0) throw invalid(`${what} must not be empty`, index);
  if (bytes > max) throw invalid(`${what} longer than ${max} bytes`, index);
  return value;
}

function checkInteger(value: unknown, what: string, index: number): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value)) throw invalid(`${what} must be a safe integer`, index);
  return value;
}

function parseOne(raw: unknown, index: number): RedisOperation {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw invalid('must be an object', index);
  const o = raw as Record<string, unknown>;
  const op = o.op;
  if (typeof op !== 'string' || !Object.hasOwn(ALLOWED, op)) {
    throw invalid(`op must be one of ${Object.keys(ALLOWED).join(', ')}`, index);
  }
  const kind = op as RedisOperation['op'];
  for (const name of Object.keys(o)) {
    if (!ALLOWED[kind].includes(name)) throw invalid(`unknown property ${JSON.stringify(name)} for ${kind}`, index);
  }
  const key = checkString(o.key, 'key', MAX_KEY_BYTES, index, false);
  if (key.startsWith(RESERVED_PREFIX)) throw invalid(`keys starting with ${RESERVED_PREFIX} are reserved for the coordinator`, index);
  switch (kind) {
    case 'set':
      return { op: kind, key, value: checkString(o.value, 'value', MAX_VALUE_BYTES, index, true) };
    case 'del':
    case 'get':
      return { op: kind, key };
    case 'hset':
      return {
        op: kind,
        key,
        field: checkString(o.field, 'field', MAX_FIELD_BYTES, index, true),
        value: checkString(o.value, 'value', MAX_VALUE_BYTES, index, true),
      };
    case 'expect': {
      if (!Object.hasOwn(o, 'value')) throw invalid('expect needs a value (a string, or null for "key absent")', index);
      const value = o.value === null ? null : checkString(o.value, 'value', MAX_VALUE_BYTES, index, true);
      return { op: kind, key, value };
    }
    case 'incrby': {
      const by = checkInteger(o.by, 'by', index);
      const min = o.min === undefined ? undefined : checkInteger(o.min, 'min', index);
      const max = o.max === undefined ? undefined : checkInteger(o.max, 'max', index);
      if (min !== undefined && max !== undefined && min > max) throw invalid('min is greater than max', index);
      return { op: kind, key, by, ...(min === undefined ? {} : { min }), ...(max === undefined ? {} : { max }) };
    }
  }
}

export function parseRedisOperations(work: unknown): RedisOperation[] {
  if (!Array.isArray(work) || work.length === 0) {
    throw new CoordinatorError('VALIDATION_FAILED', 'operations must be a non-empty array of {op, key, ...}');
  }
  if (work.length > MAX_OPERATIONS) throw new CoordinatorError('VALIDATION_FAILED', `at most ${MAX_OPERATIONS} operations per request`);
  return work.map((op: unknown, index) => parseOne(op, index));
}

export function isStaged(op: RedisOperation): op is RedisStagedOperation {
  return op.op !== 'get';
}

export function isWrite(op: RedisOperation): op is RedisWriteOperation {
  return op.op !== 'get' && op.op !== 'expect';
}

/**
 * The form the Lua scripts read (stored in the staged record): integers as decimal
 * strings, because Lua numbers are doubles that Redis would print as 9.0071992547409e+15.
 */
export function encodeStagedOperations(ops: readonly RedisStagedOperation[]): string {
  return JSON.stringify(
    ops.map((o) => {
      switch (o.op) {
        case 'incrby':
          return {
            op: o.op,
            key: o.key,
            by: String(o.by),
            ...(o.min === undefined ? {} : { min: String(o.min) }),
            ...(o.max === undefined ? {} : { max: String(o.max) }),
          };
        case 'expect':
          return o.value === null ? { op: o.op, key: o.key, absent: true } : { op: o.op, key: o.key, value: o.value };
        default:
          return o;
      }
    }),
  );
}

/** Bytes of keys, fields and values the operations would stage. */
export function stagedBytes(ops: readonly RedisStagedOperation[]): number {
  let total = 0;
  for (const o of ops) {
    total += Buffer.byteLength(o.key);
    if (o.op === 'set' || o.op === 'expect') total += Buffer.byteLength(o.value ?? '');
    if (o.op === 'hset') total += Buffer.byteLength(o.field) + Buffer.byteLength(o.value);
  }
  return total;
}

/** Distinct keys of the operations, in first-use order. */
export function distinctKeys(ops: readonly RedisStagedOperation[]): string[] {
  return [...new Set(ops.map((o) => o.key))];
}

// ---- hash slots (Redis Cluster spec: CRC16-XMODEM of the hash tag or key, mod 16384) ----

const CRC16_TABLE = (() => {
  const table = new Uint16Array(256);
  for (let i = 0; i < 256; i++) {
    let crc = i << 8;
    for (let bit = 0; bit < 8; bit++) crc = crc & 0x8000 ? ((crc << 1) ^ 0x1021) & 0xffff : (crc << 1) & 0xffff;
    table[i] = crc;
  }
  return table;
})();

export function crc16(data: Uint8Array): number {
  let crc = 0;
  for (const byte of data) crc = ((crc << 8) & 0xffff) ^ (CRC16_TABLE[((crc >> 8) ^ byte) & 0xff] as number);
  return crc;
}

/** The hash tag: the text between the first `{` and the first `}` after it, when not empty. */
export function hashTag(key: string): string | undefined {
  const open = key.indexOf('{');
  if (open < 0) return undefined;
  const close = key.indexOf('}', open + 1);
  if (close <= open + 1) return undefined;
  return key.slice(open + 1, close);
}

export function keySlot(key: string): number {
  return crc16(Buffer.from(hashTag(key) ?? key, 'utf8')) % SLOT_COUNT;
}

/** Redis Cluster: a branch's writes and guards must share one hash slot (one Lua script). */
export function assertOneSlot(ops: readonly RedisStagedOperation[]): void {
  const slots = new Map<number, string>();
  for (const op of ops) if (!slots.has(keySlot(op.key))) slots.set(keySlot(op.key), op.key);
  if (slots.size <= 1) return;
  throw new CoordinatorError(
    'VALIDATION_FAILED',
    `the branch's keys span ${slots.size} hash slots of the Redis Cluster (${[...slots.values()].map((k) => JSON.stringify(k)).join(', ')}); ` +
      'a branch must stay in one slot: give its keys a common hash tag, e.g. {account-42}:balance and {account-42}:history, ' +
      'or split the work into one branch per slot',
    { details: { slots: [...slots.keys()] } },
  );
}

const slotTags = new Map<number, string>();

/** A short tag (`s<n>`) whose slot is `slot`: lets a key without a hash tag share its slot. */
export function slotTag(slot: number): string {
  let tag = slotTags.get(slot);
  if (tag !== undefined) return tag;
  for (let n = 0; ; n++) {
    const candidate = `s${n}`;
    const s = crc16(Buffer.from(candidate, 'utf8')) % SLOT_COUNT;
    if (!slotTags.has(s)) slotTags.set(s, candidate);
    if (s === slot) {
      tag = candidate;
      break;
    }
  }
  return tag;
}

/** The tag that puts coordinator keys into the key's slot. */
export function tagFor(key: string): string {
  return hashTag(key) ?? slotTag(keySlot(key));
}

export function lockKey(key: string): string {
  return `${RESERVED_PREFIX}lock:{${tagFor(key)}}:${key}`;
}

export function stagedRecordKey(firstKey: string, gid: string): string {
  return `${RESERVED_PREFIX}{${tagFor(firstKey)}}:staged:${gid}`;
}

export function stagedIndexKey(coordinatorId: string): string {
  return `${RESERVED_PREFIX}staged:${coordinatorId}`;
}

// ---- script replies ----

/** Return codes of lua/prepare.lua, commit.lua and abort.lua (their headers say which returns which). */
export const SCRIPT_CODE = {
  NOTHING_STAGED: 0,
  STAGED: 1,
  ALREADY_STAGED: 2,
  GUARDS_HOLD: 3,
  LOCKED: -1,
  EXPECT_MISMATCH: -2,
  OUT_OF_BOUNDS: -3,
  CANNOT_APPLY: -4,
  FOREIGN_RECORD: -5,
  MALFORMED_CALL: -6,
} as const;

export interface ScriptReply {
  readonly code: number;
  /** 1-based index into the staged operations, 0 when no operation is concerned. */
  readonly op: number;
  readonly detail: string;
}

export function parseScriptReply(raw: unknown): ScriptReply {
  if (!Array.isArray(raw) || typeof raw[0] !== 'number') throw new Error(`unexpected script reply ${JSON.stringify(raw)}`);
  return { code: raw[0], op: typeof raw[1] === 'number' ? raw[1] : 0, detail: typeof raw[2] === 'string' ? raw[2] : '' };
}

function describe(op: RedisStagedOperation | undefined, index: number): string {
  if (op === undefined) return '';
  return ` (operation ${index}: ${op.op} on ${JSON.stringify(op.key)})`;
}

/** The one translation of a negative script code into words, for votes and errors alike. */
export function scriptFailureReason(reply: ScriptReply, ops: readonly RedisStagedOperation[], participant: string): string {
  const op = ops[reply.op - 1];
  const where = describe(op, reply.op - 1);
  switch (reply.code) {
    case SCRIPT_CODE.LOCKED:
      return `key locked by another prepared branch ${reply.detail} on ${participant}${where}`;
    case SCRIPT_CODE.EXPECT_MISMATCH:
      return `expect guard failed: the key does not hold the expected value on ${participant}${where}`;
    case SCRIPT_CODE.OUT_OF_BOUNDS: {
      const bounds = op?.op === 'incrby' ? ` [${op.min ?? '-inf'}, ${op.max ?? '+inf'}]` : '';
      return `incrby result out of bounds${bounds} on ${participant}${where}`;
    }
    case SCRIPT_CODE.CANNOT_APPLY:
      return `operation cannot apply on ${participant}: the key holds another type or a non-integer, or the result passes ±(2^53-1)${where}`;
    case SCRIPT_CODE.FOREIGN_RECORD:
      return `the staged record on ${participant} belongs to another branch`;
    case SCRIPT_CODE.MALFORMED_CALL:
      return `malformed script call on ${participant}: keys do not match the branch${where}`;
    default:
      return `unexpected script code ${reply.code} on ${participant}`;
  }
}
