/**
 * Redis participant. Redis has no sessions, so a branch lives in this process until it
 * is prepared:
 *
 *   enlist   validates the operations and keeps the writes and guards in memory (repeated
 *            enlists append); `get` operations run at once and answer
 *            `{ results: [{ value: string | null } | null, ...] }` — one entry per
 *            operation, `{value}` for a get, null for every other operation
 *   prepare  one Lua script (lua/prepare.lua): refuses keys locked by another gid, checks
 *            expect guards and incrby bounds against the current values as changed by the
 *            branch's earlier operations, then writes the staged record and takes the
 *            locks, atomically. With AOF fsync always that record is the durable yes.
 *            A branch without writes stages nothing: guards are checked (same script,
 *            'check' mode) and it votes read-only. Any failure is a no.
 *   commit   lua/commit.lua: applies the staged writes in order, releases this gid's locks,
 *            deletes the record. No record = already committed.
 *   abort    drops an unprepared branch from memory; lua/abort.lua releases the locks and
 *            deletes the record. No record = nothing to undo.
 *   recovery the coordinator's index hash (tcx:staged:<coordinatorId>, gid -> record key)
 *
 * Key layout: see redis-operations.ts. Locks are honoured only by coordinator branches:
 * a plain Redis client may still write a locked key. If it does so between prepare and
 * commit, commit applies the staged operations to whatever it finds (bounds are not
 * checked again); when an operation can no longer apply (the key changed type or holds a
 * non-integer), commit applies nothing and throws, so the branch stays in doubt, visible
 * and retried, until an operator repairs the key.
 *
 * The index is written by its own command, before the prepare script runs, and its entry
 * removed after commit or abort: in Redis Cluster the index and a branch's keys live in
 * different slots, so no script may touch both. An index entry therefore means "prepared,
 * or possibly prepared"; findPrepared lists it, and resolving an entry whose record is gone
 * is a no-op that removes it. Every staged record has an index entry.
 *
 * Cluster: `INFO cluster` decides at the first connection (redis-connection.ts); with
 * cluster_enabled:1 the adapter uses ioredis Cluster seeded with the URL's node, and refuses
 * a branch whose keys (writes and guards) span several hash slots. Every call is bounded:
 * connectTimeout, commandTimeout, no offline queue, no retry or re-send of a command whose
 * outcome is unknown.
 */

import type { Logger } from 'pino';
import { CoordinatorError, errorMessage } from '../errors.js';
import { isSafeGid, parseGid } from './gid.js';
import type { BranchRef, EnlistResult, ParticipantAdapter, PrepareResult } from './participant.js';
import { isReplyError, RedisConnection, redisUnreachable } from './redis-connection.js';
import { durabilityProblems } from './redis-durability.js';
import {
  MAX_BRANCH_BYTES,
  MAX_BRANCH_OPERATIONS,
  SCRIPT_CODE,
  distinctKeys,
  encodeStagedOperations,
  isStaged,
  isWrite,
  assertOneSlot,
  lockKey,
  parseRedisOperations,
  parseScriptReply,
  scriptFailureReason,
  stagedBytes,
  stagedIndexKey,
  stagedRecordKey,
  type RedisStagedOperation,
  type ScriptReply,
} from './redis-operations.js';

export interface RedisParticipantOptions {
  readonly name: string;
  /** redis:// or rediss:// URL (user, password, db as ioredis reads them). */
  readonly url: string;
  readonly connectTimeoutMs: number;
  readonly commandTimeoutMs: number;
  readonly logger: Logger;
  /** Accept a server whose durability cannot be confirmed; verify() then records warnings instead of refusing. */
  readonly allowVolatile?: boolean;
}

/** In memory until prepared: 'preparing' means a prepare was sent, so Redis may hold a record. */
interface RedisBranch {
  readonly ops: RedisStagedOperation[];
  state: 'open' | 'preparing' | 'prepared';
  stagedKey: string | undefined;
}

const MAX_LISTED = 100_000;

export class RedisParticipant implements ParticipantAdapter {
  readonly kind = 'redis' as const;
  readonly work = 'operations' as const;
  readonly oneBranchPerStore = true;
  readonly listsPreparedBranches = true;
  readonly name: string;
  readonly #options: RedisParticipantOptions;
  readonly #log: Logger;
  readonly #branches = new Map<string, RedisBranch>();
  readonly #connection: RedisConnection;
  #warnings: string[] = [];

  constructor(options: RedisParticipantOptions) {
    this.name = options.name;
    this.#options = options;
    this.#log = options.logger.child({ participant: options.name });
    this.#connection = new RedisConnection(options, this.#log);
  }

  /** Warnings of the last verify(): durability that allowVolatile let through. */
  warnings(): string[] {
    return [...this.#warnings];
  }

  /** True once connected to a server with cluster_enabled:1. */
  get clusterMode(): boolean {
    return this.#connection.clusterMode;
  }

  async verify(): Promise<void> {
    let protocol: string;
    try {
      protocol = new URL(this.#options.url).protocol;
    } catch {
      protocol = 'none';
    }
    if (protocol !== 'redis:' && protocol !== 'rediss:') {
      throw new CoordinatorError('VALIDATION_FAILED', `redis participant ${this.name}: url must be redis://… or rediss://…`);
    }
    const client = await this.#connection.client();
    await this.#call('PING', () => client.ping());
    const problems = await durabilityProblems(client, this.name);
    if (problems.length === 0) {
      this.#warnings = [];
      return;
    }
    if (this.#options.allowVolatile !== true) {
      throw new CoordinatorError('PARTICIPANT_MISCONFIGURED', `${problems.join(' ')} Register with allowVolatile: true to accept the risk.`, {
        details: { participant: this.name, problems },
      });
    }
    this.#warnings = problems;
    for (const warning of problems) this.#log.warn(warning);
  }

  validateWork(work: unknown): void {
    parseRedisOperations(work);
  }

  async enlist(branch: BranchRef, work: unknown, signal?: AbortSignal): Promise<EnlistResult> {
    const operations = parseRedisOperations(work);
    const existing = this.#branches.get(branch.gid);
    if (existing !== undefined && existing.state !== 'open') {
      throw new CoordinatorError('OPERATION_FAILED', `branch ${branch.branchId} on ${this.name} is already prepared`);
    }
    const added = operations.filter(isStaged);
    const staged = [...(existing?.ops ?? []), ...added];
    if (staged.length > MAX_BRANCH_OPERATIONS || stagedBytes(staged) > MAX_BRANCH_BYTES) {
      throw new CoordinatorError(
        'VALIDATION_FAILED',
        `a redis branch holds at most ${MAX_BRANCH_OPERATIONS} operations and ${MAX_BRANCH_BYTES / 1024 / 1024} MiB of keys and values`,
      );
    }
    const client = await this.#connection.client();
    if (this.#connection.clusterMode) assertOneSlot(staged);
    if (signal?.aborted === true) throw new CoordinatorError('OPERATION_FAILED', `cancelled: ${errorMessage(signal.reason)}`);
    const results = await Promise.all(
      operations.map(async (op, index) => {
        if (op.op !== 'get') return null;
        try {
          return { value: await client.get(op.key) };
        } catch (err) {
          if (!isReplyError(err)) throw redisUnreachable(this.name, err);
          throw new CoordinatorError('OPERATION_FAILED', `operation ${index} failed on ${this.name}: ${errorMessage(err)}`, {
            cause: err,
            details: { participant: this.name, operation: index },
          });
        }
      }),
    );
    // Recorded only once everything succeeded: a failed enlist leaves the branch as it was.
    const current = this.#branches.get(branch.gid);
    if (current === undefined && existing === undefined) {
      this.#branches.set(branch.gid, { ops: added, state: 'open', stagedKey: undefined });
    } else if (current !== undefined && current.state === 'open' && (existing === undefined || current === existing)) {
      current.ops.push(...added);
    } else {
      throw new CoordinatorError('OPERATION_FAILED', `branch ${branch.branchId} on ${this.name} was prepared or aborted while enlisting`);
    }
    return { results };
  }

  async prepare(branch: BranchRef): Promise<PrepareResult> {
    const { gid } = branch;
    const entry = this.#branches.get(gid);
    if (entry === undefined) return { vote: 'no', reason: `no open branch ${branch.branchId} on ${this.name}` };
    if (entry.ops.length === 0) {
      this.#branches.delete(gid);
      return { vote: 'read-only' };
    }
    const coordinator = parseGid(gid)?.coordinatorId;
    if (!isSafeGid(gid) || coordinator === undefined) return { vote: 'no', reason: `malformed gid ${JSON.stringify(gid)}` };
    const writes = entry.ops.some(isWrite);
    const keys = distinctKeys(entry.ops);
    const stagedKey = stagedRecordKey(keys[0] as string, gid);
    const keysJson = JSON.stringify(keys);
    try {
      const client = await this.#connection.client();
      if (writes) {
        entry.state = 'preparing';
        entry.stagedKey = stagedKey;
        await this.#call('HSET index', () => client.hset(stagedIndexKey(coordinator), gid, stagedKey));
      }
      const args = [stagedKey, ...keyPairs(keys), gid, writes ? 'stage' : 'check', encodeStagedOperations(entry.ops), keysJson, String(Date.now())];
      const reply = parseScriptReply(await this.#call('prepare script', () => client.tcxPrepare(1 + 2 * keys.length, ...args)));
      if (reply.code === SCRIPT_CODE.STAGED || reply.code === SCRIPT_CODE.ALREADY_STAGED) {
        if (this.#branches.get(gid) !== entry) {
          // Aborted while the prepare was on its way: undo what it staged, best effort (the sweep is the backstop).
          await this.#resolve(branch, 'abort', entry.ops).catch(() => undefined);
          return { vote: 'no', reason: `branch ${branch.branchId} was aborted while preparing on ${this.name}` };
        }
        entry.state = 'prepared';
        return { vote: 'yes' };
      }
      if (reply.code === SCRIPT_CODE.GUARDS_HOLD) {
        this.#branches.delete(gid);
        return { vote: 'read-only' };
      }
      // A definite no: the script staged nothing, so the branch is open again and the index entry goes.
      if (writes) {
        entry.state = 'open';
        entry.stagedKey = undefined;
        await client.hdel(stagedIndexKey(coordinator), gid).catch((err: unknown) => {
          this.#log.warn({ gid, err: errorMessage(err) }, 'could not remove the index entry of a branch that voted no');
        });
      }
      return { vote: 'no', reason: scriptFailureReason(reply, entry.ops, this.name) };
    } catch (err) {
      // Outcome unknown: the record may exist. The abort that follows a no resolves either case.
      return { vote: 'no', reason: `prepare failed on ${this.name}: ${errorMessage(err)}` };
    }
  }

  async commit(branch: BranchRef): Promise<void> {
    const entry = this.#branches.get(branch.gid);
    if (entry?.state === 'open') {
      throw new CoordinatorError('INTERNAL', `commit of branch ${branch.branchId} on ${this.name}, which was never prepared`);
    }
    await this.#resolve(branch, 'commit', entry?.ops ?? []);
  }

  async abort(branch: BranchRef): Promise<void> {
    const entry = this.#branches.get(branch.gid);
    if (entry?.state === 'open') {
      this.#branches.delete(branch.gid); // nothing was sent to Redis
      return;
    }
    await this.#resolve(branch, 'abort', entry?.ops ?? []);
  }

  /**
   * 3PC pre-commit: marks the staged record. A branch with nothing staged cannot be
   * pre-committed (it was lost, or already resolved): that is an error the coordinator
   * retries and shows as in doubt, never a silent success.
   */
  async preCommit(branch: BranchRef): Promise<void> {
    const { gid } = branch;
    const coordinator = parseGid(gid)?.coordinatorId;
    if (!isSafeGid(gid) || coordinator === undefined) {
      throw new CoordinatorError('INTERNAL', `refusing to use malformed gid ${JSON.stringify(gid)}`);
    }
    const client = await this.#connection.client();
    const stagedKey =
      this.#branches.get(gid)?.stagedKey ?? (await this.#call('HGET index', () => client.hget(stagedIndexKey(coordinator), gid)));
    if (stagedKey === null || stagedKey === undefined) {
      throw new CoordinatorError('OPERATION_FAILED', `pre-commit of branch ${branch.branchId} on ${this.name}: nothing is staged`);
    }
    const raw = await this.#call('pre-commit script', () => client.tcxPrecommit.call(client, 1, stagedKey, gid, new Date().toISOString()));
    const reply: ScriptReply = parseScriptReply(raw);
    if (reply.code !== SCRIPT_CODE.STAGED) {
      throw new CoordinatorError('OPERATION_FAILED', `pre-commit of branch ${branch.branchId} on ${this.name} found no staged record (code ${reply.code})`);
    }
  }

  async #resolve(branch: BranchRef, decision: 'commit' | 'abort', ops: readonly RedisStagedOperation[]): Promise<void> {
    const { gid } = branch;
    const coordinator = parseGid(gid)?.coordinatorId;
    if (!isSafeGid(gid) || coordinator === undefined) {
      throw new CoordinatorError('INTERNAL', `refusing to use malformed gid ${JSON.stringify(gid)}`);
    }
    const client = await this.#connection.client();
    const indexKey = stagedIndexKey(coordinator);
    const stagedKey = this.#branches.get(gid)?.stagedKey ?? (await this.#call('HGET index', () => client.hget(indexKey, gid)));
    if (stagedKey !== null) {
      for (let attempt = 1; ; attempt++) {
        const keysJson = await this.#call('HGET staged keys', () => client.hget(stagedKey, 'keys'));
        if (keysJson === null) break; // already resolved
        const keys = parseKeyList(keysJson, stagedKey);
        const run = decision === 'commit' ? client.tcxCommit : client.tcxAbort;
        const raw = await this.#call(`${decision} script`, () => run.call(client, 1 + 2 * keys.length, stagedKey, ...keyPairs(keys), gid, keysJson));
        const reply: ScriptReply = parseScriptReply(raw);
        if (reply.code === SCRIPT_CODE.STAGED || reply.code === SCRIPT_CODE.NOTHING_STAGED) break;
        if (reply.code === SCRIPT_CODE.MALFORMED_CALL && attempt < 3) continue; // the record changed under us: re-read
        throw new CoordinatorError('OPERATION_FAILED', `${decision} of branch ${branch.branchId} failed: ${scriptFailureReason(reply, ops, this.name)}`, {
          details: { participant: this.name, gid, code: reply.code },
        });
      }
      await this.#call('HDEL index', () => client.hdel(indexKey, gid));
    }
    this.#branches.delete(gid);
  }

  async findPrepared(gidPrefix: string): Promise<string[]> {
    const coordinator = /^tcx:([A-Za-z0-9-]{1,40}):/.exec(gidPrefix)?.[1];
    if (coordinator === undefined) {
      throw new CoordinatorError('VALIDATION_FAILED', `redis participants list prepared branches per coordinator: prefix must start with tcx:<coordinatorId>:`);
    }
    const client = await this.#connection.client();
    const indexKey = stagedIndexKey(coordinator);
    const gids: string[] = [];
    let cursor = '0';
    do {
      const [next, entries] = await this.#call('HSCAN index', () => client.hscan(indexKey, cursor, 'COUNT', 1000));
      for (let i = 0; i < entries.length; i += 2) {
        const gid = entries[i] as string;
        if (gid.startsWith(gidPrefix)) gids.push(gid);
      }
      cursor = next;
    } while (cursor !== '0' && gids.length < MAX_LISTED);
    if (cursor !== '0') this.#log.warn({ listed: gids.length }, 'findPrepared stopped early; the next sweep lists the rest');
    return gids;
  }

  openBranches(): number {
    let open = 0;
    for (const entry of this.#branches.values()) if (entry.state === 'open') open++;
    return open;
  }

  async close(): Promise<void> {
    this.#branches.clear(); // unprepared work only lived here; prepared work is staged in Redis
    await this.#connection.close();
  }

  /** Runs one Redis call; connection failures and timeouts become PARTICIPANT_UNREACHABLE. */
  async #call<T>(what: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      if (err instanceof CoordinatorError) throw err;
      if (isReplyError(err)) {
        throw new CoordinatorError('OPERATION_FAILED', `${what} failed on ${this.name}: ${errorMessage(err)}`, { cause: err });
      }
      throw redisUnreachable(this.name, err, what);
    }
  }
}

/** KEYS[2..]: each data key followed by its lock key. */
function keyPairs(keys: readonly string[]): string[] {
  return keys.flatMap((key) => [key, lockKey(key)]);
}

function parseKeyList(json: string, stagedKey: string): string[] {
  const keys: unknown = JSON.parse(json);
  if (!Array.isArray(keys) || keys.length === 0 || !keys.every((k): k is string => typeof k === 'string')) {
    throw new CoordinatorError('INTERNAL', `staged record ${stagedKey} holds a malformed key list`);
  }
  return keys;
}
