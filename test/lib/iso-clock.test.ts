import { afterEach, describe, expect, it, vi } from 'vitest';
import { isoNow, pinoIsoTime } from '../../src/lib/iso-clock.js';

describe('isoNow', () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  it('formats the current millisecond exactly as Date#toISOString does, and moves with the clock', () => {
    vi.useFakeTimers({ toFake: ['Date'] });
    vi.setSystemTime(new Date('2026-12-04T10:00:00.123Z'));
    expect(isoNow()).toBe('2026-12-04T10:00:00.123Z');
    expect(isoNow()).toBe('2026-12-04T10:00:00.123Z');
    vi.setSystemTime(new Date('2026-12-04T10:00:00.124Z'));
    expect(isoNow()).toBe('2026-12-04T10:00:00.124Z');
    // A clock stepped back (NTP) is followed too: the cache holds one millisecond, not a maximum.
    vi.setSystemTime(new Date('2026-12-04T09:59:59.999Z'));
    expect(isoNow()).toBe('2026-12-04T09:59:59.999Z');
  });

  it("gives pino its time field in pino's isoTime shape", () => {
    vi.useFakeTimers({ toFake: ['Date'] });
    vi.setSystemTime(new Date('2026-12-04T10:00:00.000Z'));
    expect(pinoIsoTime()).toBe(',"time":"2026-12-04T10:00:00.000Z"');
  });
});
