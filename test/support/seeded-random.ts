/** mulberry32: a small, seedable PRNG — the same seed always gives the same sequence. */
export type Rng = () => number;

export function rng(seed: number): Rng {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4_294_967_296;
  };
}

/** An integer in [0, n). */
export const pick = (r: Rng, n: number): number => Math.floor(r() * n);

/** An integer in [lo, hi]. */
export const between = (r: Rng, lo: number, hi: number): number => lo + pick(r, hi - lo + 1);

export function choose<T>(r: Rng, items: readonly T[]): T {
  return items[pick(r, items.length)] as T;
}

/** Picks a key of `weights` with probability proportional to its weight. */
export function weighted<K extends string>(r: Rng, weights: Readonly<Record<K, number>>): K {
  const entries = Object.entries(weights) as [K, number][];
  const total = entries.reduce((s, [, w]) => s + w, 0);
  let x = r() * total;
  for (const [k, w] of entries) {
    if (x < w) return k;
    x -= w;
  }
  return (entries[entries.length - 1] as [K, number])[0];
}
