import { describe, expect, it } from 'vitest';
import type { CoordinatorError } from '../../src/errors.js';
import { TokenQuotas } from '../../src/coordinator/token-quotas.js';

function refusal(f: () => void): CoordinatorError | undefined {
  try {
    f();
    return undefined;
  } catch (err) {
    return err as CoordinatorError;
  }
}

describe('TokenQuotas', () => {
  it('refills the begin rate over time, holding at most one second of begins', () => {
    let now = 0;
    const quotas = new TokenQuotas({ maxActive: 1_000, beginsPerSecond: 4 }, () => now);
    for (let i = 0; i < 4; i++) quotas.admit('t');
    const refused = refusal(() => quotas.admit('t'));
    expect(refused?.code).toBe('QUOTA_EXCEEDED');
    expect(refused?.retryAfterSeconds).toBe(1);
    now += 250; // a quarter second: one begin's worth
    expect(refusal(() => quotas.admit('t'))).toBeUndefined();
    expect(refusal(() => quotas.admit('t'))?.code).toBe('QUOTA_EXCEEDED');
    now += 60_000; // a long pause refills only up to the burst
    for (let i = 0; i < 4; i++) quotas.admit('t');
    expect(refusal(() => quotas.admit('t'))?.code).toBe('QUOTA_EXCEEDED');
  });

  it('counts open transactions per owner and frees a slot on release; a refused begin takes nothing', () => {
    const quotas = new TokenQuotas({ maxActive: 2, beginsPerSecond: 0 });
    quotas.admit('a');
    quotas.admit('a');
    expect(refusal(() => quotas.admit('a'))?.code).toBe('QUOTA_EXCEEDED');
    expect(quotas.activeOf('a')).toBe(2);
    quotas.admit('b');
    quotas.release('a');
    expect(quotas.activeOf('a')).toBe(1);
    quotas.admit('a');
    expect(quotas.activeOf('a')).toBe(2);
  });
});
