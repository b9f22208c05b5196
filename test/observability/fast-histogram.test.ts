/**
 * The hot-path histogram exposes exactly what prom-client's Histogram exposes for the same
 * observations: same buckets (cumulative, `le`, +Inf), sums, counts, label sets.
 */
import { Histogram, Registry } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { FastHistogram } from '../../src/observability/histogram.js';

describe('FastHistogram', () => {
  it("writes the same exposition text as prom-client's Histogram", async () => {
    const buckets = [0.001, 0.01, 0.1, 1, 10];
    const theirs = new Registry();
    const ours = new Registry();
    const reference = new Histogram({ name: 'h_seconds', help: 'a histogram', labelNames: ['participant', 'call'], buckets, registers: [theirs] });
    const fast = new FastHistogram('h_seconds', 'a histogram', ['participant', 'call'], buckets, [ours]);
    const observations: [string, string, number][] = [
      ['bank', 'prepare', 0.0004],
      ['bank', 'prepare', 0.001], // on a bound: counted in it (le)
      ['bank', 'commit', 0.05],
      ['cache', 'prepare', 3],
      ['cache', 'prepare', 42], // past every bound: only +Inf
      ['bank', 'prepare', 0.2],
    ];
    for (const [participant, call, value] of observations) {
      reference.observe({ participant, call }, value);
      fast.labels(participant, call).observe(value);
    }
    expect(await ours.metrics()).toBe(await theirs.metrics());
  });

  it('keeps one series per label values, and ignores values that are not finite', async () => {
    const r = new Registry();
    const h = new FastHistogram('x', 'x', ['a'], [1], [r]);
    expect(h.labels('v')).toBe(h.labels('v'));
    h.labels('v').observe(Number.NaN);
    h.labels('v').observe(0.5);
    expect(await r.metrics()).toContain('x_count{a="v"} 1');
  });
});
