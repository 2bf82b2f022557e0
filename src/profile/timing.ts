/**
 * Latency measurement: items are timed round-robin (in a shuffled order each round) so drift in
 * machine load hits all alike; all stop together, when the 95% confidence interval of every
 * item's median is within a relative tolerance of the median, or when the time budget runs out.
 *
 * In a round each item runs `repeat` times in a row and the last run is the one timed: the time
 * of a session that just ran, its weights in cache, as a server that runs one model sees it (a run
 * right after another session's pays that session's cache misses: 8% on the ViT fixture). An item
 * with `before` is timed right after that call instead.
 *
 * Paired differences: the cost of a small change (an exit that does not fire adds 20-40 µs to a
 * 2 ms model) is smaller than the spread of either timing; the median over rounds of the
 * difference between an item and a reference timed in the same round cancels what the round
 * shares. `differences` names such pairs; they converge when the CI of that median is within
 * `differenceTolerance` of the reference's median.
 *
 * Sessions of one model differ: one session runs 3-6% slow or fast against others of the same
 * graph timed in the same rounds, all along (seen on this machine in about one profile in five).
 * `medians` names items timed in several sessions of one graph: the session whose median is the
 * middle one is returned under the median's name, and may be a difference's reference, so one
 * session that runs off moves neither. Sessions may take turns (`turn`): each runs in every n-th
 * round only, so three sessions of an item cost a round what one does, and `pools` returns all
 * their runs as one item; a difference pairs each of its item's runs with the reference's run of
 * the same round.
 */
import { Rng } from "../util/rng.js";

/** Warm-up time per item beyond its first run (measure). */
const WARMUP_MS = 100;

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
  /** Called before each run, untimed; its result is handed to `run` (fresh inputs, say). */
  prepare?: () => unknown;
  run: (prepared?: unknown) => Promise<unknown>;
  /** Untimed, right before the timed run, instead of the repeats: the call the timed one follows in use (another session's). */
  before?: () => Promise<unknown>;
  /** Runs only in rounds whose number modulo `of` is `at` (sessions of one graph taking turns); default every round. */
  turn?: { of: number; at: number };
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
  /** Runs of an item in a row per round, the last one timed (default 2). */
  repeat?: number;
  /** Paired differences to estimate: item less reference, round by round. */
  differences?: Array<{ item: string; reference: string }>;
  /** Items of one graph in several sessions: the one with the middle median, returned as `name` (a difference may use it as its item or reference). */
  medians?: Array<{ name: string; of: string[] }>;
  /**
   * Items of one graph in sessions that take turns (`turn`): every run of any of them, returned as
   * one item `name` (a difference may use it). It has the runs of an item that runs every round,
   * where a median of sessions taking turns would have a third of them, and a session that runs
   * off holds only its share of the runs.
   */
  pools?: Array<{ name: string; of: string[] }>;
  /** Target half-width of a difference's median CI, relative to the reference's median (default 0.005). */
  differenceTolerance?: number;
  onRound?: (done: number, total: number) => void;
  /** Milliseconds now (default performance.now; tests pass a clock their items advance). */
  clock?: () => number;
}

/** Name under which measure() returns a paired difference. */
export function differenceName(item: string, reference: string): string {
  return `${item} - ${reference}`;
}

/** Half-width of the median's 95% CI (absolute). */
function ciHalfWidth(list: number[]): number {
  const sorted = Float64Array.from(list).sort();
  const [lo, hi] = medianCi(sorted);
  const m = quantile(sorted, 0.5);
  return Math.max(m - lo, hi - m);
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
  const repeat = Math.max(1, options.repeat ?? 2);
  const pairs = options.differences ?? [];
  const diffTolerance = options.differenceTolerance ?? 0.005;
  const rng = new Rng(options.seed ?? 1);
  const now = options.clock ?? (() => performance.now());
  // Warm-up: `warmup` runs of each item, or fewer when they take long (at least one, at most about
  // WARMUP_MS of an item's time): a slow call is its own warm-up, and a software GPU's calls take 0.2 s.
  for (const it of items) {
    const t0 = now();
    for (let i = 0; i < warmup && (i === 0 || now() - t0 < WARMUP_MS); i++) await it.run(it.prepare?.());
  }
  const samples = new Map(items.map((it) => [it.name, [] as number[]]));
  // The round of each sample, for pairing items that take turns with their references.
  const rounds = new Map(items.map((it) => [it.name, [] as number[]]));
  for (const it of items) {
    if (it.turn && !(Number.isInteger(it.turn.of) && it.turn.of >= 1 && Number.isInteger(it.turn.at) && it.turn.at >= 0 && it.turn.at < it.turn.of)) throw new Error(`item ${it.name}: bad turn ${JSON.stringify(it.turn)}`);
  }
  const medians = options.medians ?? [];
  const pools = options.pools ?? [];
  for (const m of [...medians, ...pools]) {
    const missing = m.of.find((x) => !samples.has(x));
    if (missing !== undefined || samples.has(m.name)) throw new Error(`${medians.includes(m) ? "median" : "pool"} ${m.name}: ${missing !== undefined ? `no item ${missing}` : "its name is an item's"}`);
  }
  // An item's times (with their rounds); a median's: those of its session whose median is the
  // middle one (the round-by-round median of the sessions would be biased: with one session off,
  // it is the larger of the other two in each round); a pool's: all its sessions' runs, by round.
  const seriesOf = (name: string): { values: number[]; rounds: number[] } => {
    if (samples.has(name)) return { values: samples.get(name)!, rounds: rounds.get(name)! };
    const m = medians.find((x) => x.name === name);
    if (m) {
      const ranked = m.of.map((x) => ({ x, p50: summarize(samples.get(x)!, false).p50 })).sort((a, b) => a.p50 - b.p50);
      return seriesOf(ranked[(ranked.length - 1) >> 1]!.x);
    }
    const pool = pools.find((x) => x.name === name);
    if (!pool) throw new Error(`no item, median or pool named ${name}`);
    const runs = pool.of.flatMap((x) => samples.get(x)!.map((v, i) => ({ v, r: rounds.get(x)![i]! }))).sort((a, b) => a.r - b.r);
    return { values: runs.map((x) => x.v), rounds: runs.map((x) => x.r) };
  };
  const series = (name: string): number[] => seriesOf(name).values;
  // Each run of the item less the reference's run in the same round (rounds where both ran).
  const diffs = (p: { item: string; reference: string }): number[] => {
    const a = seriesOf(p.item);
    const b = seriesOf(p.reference);
    const ref = new Map(b.rounds.map((r, i) => [r, b.values[i]!]));
    const out: number[] = [];
    a.rounds.forEach((r, i) => {
      const y = ref.get(r);
      if (y !== undefined) out.push(a.values[i]! - y);
    });
    return out;
  };
  const pairConverged = (p: { item: string; reference: string }): boolean => ciHalfWidth(diffs(p)) <= diffTolerance * summarize(series(p.reference), false).p50;
  // What must converge: each item not in a pool, each pool as a whole, each difference.
  const pooled = new Set(pools.flatMap((x) => x.of));
  const targets = [...items.map((it) => it.name).filter((x) => !pooled.has(x)), ...pools.map((x) => x.name)];
  const start = now();
  let converged = 0;
  const goal = targets.length + pairs.length;
  // Every item runs once per round, until all have converged: an item that stopped early would be
  // measured over a shorter stretch of the machine's drift than the others it is compared with.
  for (let round = 1; round <= maxRuns && now() - start < budget; round++) {
    for (const idx of rng.permutation(items.length)) {
      const it = items[idx]!;
      if (it.turn && round % it.turn.of !== it.turn.at) continue;
      if (it.before) await it.before();
      else for (let r = 1; r < repeat; r++) await it.run(it.prepare?.());
      const arg = it.prepare?.();
      const t0 = now();
      await it.run(arg);
      samples.get(it.name)!.push(now() - t0);
      rounds.get(it.name)!.push(round);
    }
    if (round >= minRuns && round % 10 === 0) {
      converged = targets.filter((x) => summarize(series(x), false).ciRelative <= tolerance).length + pairs.filter(pairConverged).length;
    }
    options.onRound?.(converged, goal);
    if (converged === goal) break;
  }
  const out = new Map<string, LatencyStats>();
  for (const it of items) {
    const list = samples.get(it.name)!;
    const s = summarize(list, false);
    out.set(it.name, { ...s, converged: s.ciRelative <= tolerance });
  }
  for (const m of [...medians, ...pools]) {
    const s = summarize(series(m.name), false);
    out.set(m.name, { ...s, converged: s.ciRelative <= tolerance });
  }
  // A difference's median may be 0 or negative: its CI is given relative to the reference's median.
  for (const p of pairs) {
    const d = diffs(p);
    out.set(differenceName(p.item, p.reference), { ...summarize(d, false), ciRelative: ciHalfWidth(d) / summarize(series(p.reference), false).p50, converged: pairConverged(p) });
  }
  return out;
}
