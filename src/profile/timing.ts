/**
 * Latency measurement: items are timed round-robin (in a shuffled order each round) so drift in
 * machine load hits all alike; each stops when the 95% confidence interval of its median is
 * within a relative tolerance of the median, or when the time budget runs out.
 */
import { Rng } from "../util/rng.js";

export interface LatencyStats {
  /** Milliseconds. */
  mean: number;
  p50: number;
  p90: number;
  p99: number;
  std: number;
  runs: number;
  converged: boolean;
  /** Half-width of the median's 95% confidence interval, relative to the median. */
  ciRelative: number;
}

export interface TimedItem {
  name: string;
  run: () => Promise<unknown>;
}

export interface MeasureOptions {
  warmup?: number;
  minRuns?: number;
  maxRuns?: number;
  /** Total budget for all items, in milliseconds. */
  budgetMs?: number;
  /** Target relative half-width of the median's 95% CI. */
  tolerance?: number;
  seed?: number;
  onRound?: (done: number, total: number) => void;
}

function quantile(sorted: Float64Array, q: number): number {
  if (sorted.length === 0) return NaN;
  const pos = (sorted.length - 1) * q;
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  return sorted[lo]! + (sorted[hi]! - sorted[lo]!) * (pos - lo);
}

/** Distribution-free 95% CI of the median from order statistics (normal approximation to the binomial). */
export function medianCi(sorted: Float64Array): [number, number] {
  const n = sorted.length;
  const half = 0.98 * Math.sqrt(n);
  const lo = Math.max(0, Math.floor(n / 2 - half));
  const hi = Math.min(n - 1, Math.ceil(n / 2 + half));
  return [sorted[lo]!, sorted[hi]!];
}

export function summarize(samples: number[], converged: boolean): LatencyStats {
  const sorted = Float64Array.from(samples).sort();
  const n = sorted.length;
  const mean = samples.reduce((a, b) => a + b, 0) / Math.max(1, n);
  const variance = samples.reduce((a, b) => a + (b - mean) ** 2, 0) / Math.max(1, n - 1);
  const p50 = quantile(sorted, 0.5);
  const [lo, hi] = n ? medianCi(sorted) : [NaN, NaN];
  return {
    mean, p50, p90: quantile(sorted, 0.9), p99: quantile(sorted, 0.99), std: Math.sqrt(variance), runs: n, converged,
    ciRelative: p50 > 0 ? Math.max(p50 - lo, hi - p50) / p50 : Infinity,
  };
}

export async function measure(items: TimedItem[], options: MeasureOptions = {}): Promise<Map<string, LatencyStats>> {
  const warmup = options.warmup ?? 5;
  const minRuns = options.minRuns ?? 30;
  const maxRuns = options.maxRuns ?? 5000;
  const tolerance = options.tolerance ?? 0.02;
  const budget = options.budgetMs ?? 10_000;
  const rng = new Rng(options.seed ?? 1);
  for (const it of items) for (let i = 0; i < warmup; i++) await it.run();
  const samples = new Map(items.map((it) => [it.name, [] as number[]]));
  const done = new Set<string>();
  const start = performance.now();
  while (done.size < items.length && performance.now() - start < budget) {
    const order = rng.permutation(items.length);
    for (const idx of order) {
      const it = items[idx]!;
      if (done.has(it.name)) continue;
      const t0 = performance.now();
      await it.run();
      const list = samples.get(it.name)!;
      list.push(performance.now() - t0);
      if (list.length >= maxRuns) done.add(it.name);
      else if (list.length >= minRuns && list.length % 10 === 0) {
        const s = summarize(list, false);
        if (s.ciRelative <= tolerance) done.add(it.name);
      }
    }
    options.onRound?.(Math.min(done.size, items.length), items.length);
  }
  const out = new Map<string, LatencyStats>();
  for (const it of items) {
    const list = samples.get(it.name)!;
    const s = summarize(list, false);
    out.set(it.name, { ...s, converged: s.ciRelative <= tolerance });
  }
  return out;
}
