/**
 * Global transaction ids on participants' side. A gid names the coordinator,
 * the transaction and the branch, so that recovery can find every branch this
 * coordinator ever prepared and tie it back to the log:
 *
 *   tcx:<coordinatorId>:<transactionId>:<branchNo>
 *
 * Postgres limits a gid to 200 bytes; the parts are limited so the whole stays
 * well under that, and restricted to characters that need no quoting.
 *
 * The format is part of the contract between the coordinator and its adapters (next to
 * participant.ts): the coordinator makes gids, adapters check and carry them, and neither
 * imports the other's code for it.
 */

const COORDINATOR_ID = /^[A-Za-z0-9-]{1,40}$/;
const TRANSACTION_ID = /^[A-Za-z0-9-]{1,64}$/;
const GID = /^tcx:([A-Za-z0-9-]{1,40}):([A-Za-z0-9-]{1,64}):(\d{1,6})$/;

export const GID_MAX_BYTES = 200;

export function isValidCoordinatorId(id: string): boolean {
  return COORDINATOR_ID.test(id);
}

export function isValidTransactionId(id: string): boolean {
  return TRANSACTION_ID.test(id);
}

export function gidPrefix(coordinatorId: string): string {
  return `tcx:${coordinatorId}:`;
}

export function makeGid(coordinatorId: string, transactionId: string, branchNo: number): string {
  if (!isValidCoordinatorId(coordinatorId)) throw new Error(`invalid coordinator id ${coordinatorId}`);
  if (!isValidTransactionId(transactionId)) throw new Error(`invalid transaction id ${transactionId}`);
  if (!Number.isInteger(branchNo) || branchNo < 0 || branchNo > 999_999) throw new Error(`invalid branch number ${branchNo}`);
  return `tcx:${coordinatorId}:${transactionId}:${branchNo}`;
}

export interface ParsedGid {
  readonly coordinatorId: string;
  readonly transactionId: string;
  readonly branchNo: number;
}

export function parseGid(gid: string): ParsedGid | undefined {
  const m = GID.exec(gid);
  if (m === null) return undefined;
  return { coordinatorId: m[1] as string, transactionId: m[2] as string, branchNo: Number(m[3]) };
}

/** True when the text can be embedded in SQL as a literal without escaping. */
export function isSafeGid(gid: string): boolean {
  return GID.test(gid) && Buffer.byteLength(gid) <= GID_MAX_BYTES;
}
