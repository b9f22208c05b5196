import { describe, it, expect } from 'vitest';
import { randomBytes } from 'node:crypto';
import { crc32c } from '../../src/log/crc32c.js';

/** Bit-at-a-time reference implementation. */
function reference(buf: Uint8Array): number {
  let crc = 0xffffffff;
  for (const byte of buf) {
    crc ^= byte;
    for (let k = 0; k < 8; k++) crc = crc & 1 ? (crc >>> 1) ^ 0x82f63b78 : crc >>> 1;
  }
  return ~crc >>> 0;
}

describe('crc32c', () => {
  it('matches the published vectors (RFC 3720 B.4)', () => {
    expect(crc32c(Buffer.from('123456789'))).toBe(0xe3069283);
    expect(crc32c(new Uint8Array(32))).toBe(0x8a9136aa);
    expect(crc32c(new Uint8Array(32).fill(0xff))).toBe(0x62a8ab43);
    expect(crc32c(Uint8Array.from({ length: 32 }, (_, i) => i))).toBe(0x46dd794e);
    expect(crc32c(Uint8Array.from({ length: 32 }, (_, i) => 31 - i))).toBe(0x113fdb5c);
    expect(crc32c(new Uint8Array(0))).toBe(0);
  });

  it('agrees with the bitwise reference for every length and alignment', () => {
    const data = randomBytes(300);
    for (let start = 0; start < 9; start++) {
      for (let len = 0; start + len <= 140; len++) {
        const slice = data.subarray(start, start + len);
        expect(crc32c(slice)).toBe(reference(slice));
      }
    }
  });

  it('chains through the seed', () => {
    const data = randomBytes(1000);
    for (const cut of [0, 1, 7, 8, 9, 500, 999, 1000]) {
      expect(crc32c(data.subarray(cut), crc32c(data.subarray(0, cut)))).toBe(crc32c(data));
    }
  });

  it('always returns an unsigned 32-bit integer', () => {
    for (let i = 0; i < 50; i++) {
      const c = crc32c(randomBytes(i * 3));
      expect(Number.isInteger(c) && c >= 0 && c <= 0xffffffff).toBe(true);
    }
  });
});
