/**
 * The format of a sealed bucket of finished transactions: read in place by finished-bucket.ts,
 * written by bucket-encoder.ts. Buckets are files that outlive the code that wrote them: a
 * change here is a new version, not an edit.
 *
 * Layout (all integers little-endian):
 *
 *   "TCXF" | u8 version (1) | u32 count | u32 stringsBytes | u32 dataBytes
 *   keys      count × 16 bytes: the transaction ids (UUIDs) as bytes, sorted
 *   offsets   (count + 1) × u32: where each entry starts in data
 *   strings   u16 n, then n × (u16 length, UTF-8): participant names, kinds,
 *             coordinator ids — every repeated string once
 *   data      the entries (below)
 *   u32 crc32 of everything before it
 *
 * An entry: u8 flags (bit 0: 3pc; bits 1-2: outcome 0 none / 1 commit / 2 abort;
 * bits 3-5: decision 0 none / 1 commit / 2 abort / 3 precommit; bit 6: protocol unknown; bit 7:
 * one-phase commit), f64 createdAt,
 * f64 decidedAt, f64 endedAt (epoch ms, NaN when absent), u32 timeoutMs,
 * u16 reason length + UTF-8 reason, u8 branch count, and per branch: u8 flags
 * (bits 0-1: vote 0 none / 1 yes / 2 no / 3 read-only; bit 2: the gid is not
 * the canonical tcx:<coordinator>:<transaction>:<branch>), u32 branch number,
 * u16 participant string, u16 kind string, u16 coordinator-id string, and for a
 * non-canonical gid u16 length + UTF-8 gid.
 */

export const MAGIC = 0x46584354; // "TCXF" read as u32le
export const VERSION = 1;
export const HEADER_BYTES = 4 + 1 + 4 + 4 + 4;
export const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** The 16 bytes of a lowercase UUID (checked by the caller), without a string or buffer in between. */
export function uuidBytes(id: string, into: Buffer, at: number): void {
  let j = at;
  let high = -1;
  for (let i = 0; i < id.length; i++) {
    const c = id.charCodeAt(i);
    if (c === 0x2d) continue; // '-'
    const nibble = c <= 0x39 ? c - 0x30 : c - 0x57; // '0'-'9', 'a'-'f'
    if (high < 0) {
      high = nibble;
    } else {
      into[j++] = (high << 4) | nibble;
      high = -1;
    }
  }
}

export function uuidString(buf: Buffer, at: number): string {
  const h = buf.toString('hex', at, at + 16);
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

export const OUTCOMES = [undefined, 'commit', 'abort'] as const;
export const DECISIONS = [undefined, 'commit', 'abort', 'precommit'] as const;
export const VOTES = [undefined, 'yes', 'no', 'read-only'] as const;

export const time = (iso: string | undefined): number => (iso === undefined ? Number.NaN : Date.parse(iso));
export const iso = (ms: number): string | undefined => (Number.isNaN(ms) ? undefined : new Date(ms).toISOString());

