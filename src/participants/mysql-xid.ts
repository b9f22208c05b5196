/**
 * The XA identity of a mysql branch. The coordinator hands every branch a gid
 * `tcx:<coordinatorId>:<transactionId>:<branchNo>` (gid.ts); XA limits both parts of an xid
 * to 64 bytes, so the gid is split over them:
 *
 *   formatID  TCX_XA_FORMAT_ID, 0x54435831 ("TCX1"): ours; XA transactions of other
 *             transaction managers carry other format ids and are never touched
 *   gtrid     <transactionId>                     (1–64 bytes)
 *   bqual     tcx:<coordinatorId>:<branchNo>       (6–51 bytes)
 *
 * Both parts are sent as hex literals (`XA START X'…',X'…',1413699633`), never as quoted
 * text, and are rebuilt from XA RECOVER's rows (formatID, gtrid_length, bqual_length, data).
 * A row decodes to a gid only when its format id is ours and both parts have exactly this
 * shape; recovery then filters the gids by the coordinator's prefix.
 */
import { parseGid } from './gid.js';

export const TCX_XA_FORMAT_ID = 0x54435831;

/** XA's limit for each of gtrid and bqual. */
export const XID_PART_MAX_BYTES = 64;

const BQUAL = /^tcx:([A-Za-z0-9-]{1,40}):(\d{1,6})$/;

export interface Xid {
  readonly formatId: number;
  readonly gtrid: Buffer;
  readonly bqual: Buffer;
}

/** The xid of a gid, or undefined when the gid is not one of ours. */
export function xidOf(gid: string): Xid | undefined {
  const parsed = parseGid(gid);
  // Only the canonical spelling (a branch number without leading zeros) round-trips.
  if (parsed === undefined || canonical(parsed.coordinatorId, parsed.transactionId, parsed.branchNo) !== gid) return undefined;
  const gtrid = Buffer.from(parsed.transactionId, 'ascii');
  const bqual = Buffer.from(`tcx:${parsed.coordinatorId}:${parsed.branchNo}`, 'ascii');
  if (gtrid.length > XID_PART_MAX_BYTES || bqual.length > XID_PART_MAX_BYTES) return undefined;
  return { formatId: TCX_XA_FORMAT_ID, gtrid, bqual };
}

/** The xid as XA statements take it: `X'<gtrid hex>',X'<bqual hex>',<formatID>`. */
export function xidSql(xid: Xid): string {
  return `X'${xid.gtrid.toString('hex')}',X'${xid.bqual.toString('hex')}',${xid.formatId}`;
}

/** One row of `XA RECOVER`. */
export interface XaRecoverRow {
  readonly formatID: unknown;
  readonly gtrid_length: unknown;
  readonly bqual_length: unknown;
  readonly data: unknown;
}

/** The gid an XA RECOVER row stands for, or undefined when it is not one of ours. */
export function gidOfRecoverRow(row: XaRecoverRow): string | undefined {
  if (Number(row.formatID) !== TCX_XA_FORMAT_ID) return undefined;
  const gtridLength = Number(row.gtrid_length);
  const bqualLength = Number(row.bqual_length);
  const data = Buffer.isBuffer(row.data) ? row.data : typeof row.data === 'string' ? Buffer.from(row.data, 'latin1') : undefined;
  if (data === undefined || !Number.isInteger(gtridLength) || !Number.isInteger(bqualLength)) return undefined;
  if (gtridLength < 1 || bqualLength < 1 || gtridLength + bqualLength !== data.length) return undefined;
  const transactionId = data.subarray(0, gtridLength).toString('latin1');
  const bqual = BQUAL.exec(data.subarray(gtridLength).toString('latin1'));
  if (bqual === null) return undefined;
  const gid = `tcx:${bqual[1] as string}:${transactionId}:${bqual[2] as string}`;
  const parsed = parseGid(gid);
  if (parsed === undefined || canonical(parsed.coordinatorId, parsed.transactionId, parsed.branchNo) !== gid) return undefined;
  return gid;
}

function canonical(coordinatorId: string, transactionId: string, branchNo: number): string {
  return `tcx:${coordinatorId}:${transactionId}:${branchNo}`;
}
