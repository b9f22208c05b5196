/**
 * A Prometheus histogram for the hot path: a labelled child is found once by its label values
 * and each observe() is a bucket search and three additions. prom-client's Histogram validates
 * and hashes the label object on every observe (about 6 µs here, ten times per transaction:
 * it showed in the single-client profile). Registered in a prom-client Registry like any
 * metric (it answers `get()` in prom-client's shape), so the exposition format is prom-client's.
 */

import type { Registry } from 'prom-client';

interface Series {
  readonly labels: Readonly<Record<string, string>>;
  /** Per bucket (not cumulative), plus one for +Inf. */
  readonly counts: number[];
  sum: number;
  count: number;
  child?: HistogramChild;
}

export interface HistogramChild {
  observe(value: number): void;
}

export class FastHistogram {
  readonly type = 'histogram';
  readonly aggregator = 'sum';
  readonly #bounds: readonly number[];
  readonly #labelNames: readonly string[];
  readonly #series = new Map<string, Series>();

  constructor(
    readonly name: string,
    readonly help: string,
    labelNames: readonly string[],
    buckets: readonly number[],
    registers: readonly Registry[],
  ) {
    this.#labelNames = labelNames;
    this.#bounds = [...buckets].sort((a, b) => a - b);
    for (const r of registers) r.registerMetric(this as unknown as Parameters<Registry['registerMetric']>[0]);
  }

  /** The series of these label values (in labelNames order), made on first use. Values must be bounded. */
  labels(...values: string[]): HistogramChild {
    const key = values.join('\u0000');
    let series = this.#series.get(key);
    if (series === undefined) {
      const labels = Object.fromEntries(this.#labelNames.map((n, i) => [n, values[i] ?? '']));
      series = { labels, counts: new Array<number>(this.#bounds.length + 1).fill(0), sum: 0, count: 0 };
      this.#series.set(key, series);
    }
    if (series.child !== undefined) return series.child;
    const s = series;
    const bounds = this.#bounds;
    s.child = {
      observe(value: number): void {
        if (!Number.isFinite(value)) return;
        let i = 0;
        while (i < bounds.length && value > (bounds[i] as number)) i++;
        s.counts[i] = (s.counts[i] ?? 0) + 1;
        s.sum += value;
        s.count++;
      },
    };
    return s.child;
  }

  /** What prom-client's registry formats: cumulative buckets with `le`, then _sum and _count, per series. */
  get(): { name: string; help: string; type: string; aggregator: string; values: { labels: Record<string, string | number>; value: number; metricName: string }[] } {
    const values: { labels: Record<string, string | number>; value: number; metricName: string }[] = [];
    for (const s of this.#series.values()) {
      let cumulative = 0;
      this.#bounds.forEach((bound, i) => {
        cumulative += s.counts[i] ?? 0;
        values.push({ labels: { le: bound, ...s.labels }, value: cumulative, metricName: `${this.name}_bucket` });
      });
      values.push({ labels: { le: '+Inf', ...s.labels }, value: s.count, metricName: `${this.name}_bucket` });
      values.push({ labels: { ...s.labels }, value: s.sum, metricName: `${this.name}_sum` });
      values.push({ labels: { ...s.labels }, value: s.count, metricName: `${this.name}_count` });
    }
    return { name: this.name, help: this.help, type: this.type, aggregator: this.aggregator, values };
  }
}
