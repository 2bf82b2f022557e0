/**
 * Searching exit configurations (which ramps are active, and each one's threshold) that minimise
 * expected latency under a maximum accuracy drop, on the tuning samples.
 *
 * - auto: coordinate descent on the Lagrangian latency + lambda * drop over a sweep of lambda
 *   (each ramp's best threshold for fixed others is found exactly in one pass over the samples),
 *   then a constrained polish from the best feasible point. Every visited configuration feeds the
 *   Pareto frontier used for certification.
 * - greedy: Apparate's tuner (thresholds start at 0, i.e. no exits; one ramp at a time moves by
 *   the best latency gain per accuracy cost, steps doubling after a success and halving after a
 *   violation).
 * - exhaustive: every combination of candidate thresholds (small instances only).
 */
import { type Config, type Problem, deeperShares, evaluate, exitCosts, exitsOf } from "./problem.js";
import { Rng } from "../util/rng.js";

export interface Point {
  config: Config;
  meanLatency: number;
  drop: number;
}

export interface SearchResult {
  best: Point;
  /** Pareto frontier of visited configurations: latency decreasing as drop increases. */
  frontier: Point[];
  evaluations: number;
}

const OFF = Infinity;

function pareto(points: Point[]): Point[] {
  const sorted = [...points].sort((a, b) => a.drop - b.drop || a.meanLatency - b.meanLatency);
  const out: Point[] = [];
  for (const p of sorted) if (!out.length || p.meanLatency < out[out.length - 1]!.meanLatency - 1e-12) out.push(p);
  return out;
}

/** Samples in decreasing order of each ramp's confidence (computed once). */
export function confidenceOrders(p: Problem): Int32Array[] {
  return p.conf.map((c) => Int32Array.from({ length: p.n }, (_, i) => i).sort((a, b) => c[b]! - c[a]!));
}

/**
 * The best threshold for ramp j with the others fixed, under `score(meanLatency, drop)`.
 * Exact over the candidate thresholds (and "off") in one pass, with each exit priced at the
 * current configuration's shares of requests going past it (a path's cost depends on them only
 * slightly; `descend` checks the move it makes exactly).
 */
function bestForRamp(p: Problem, config: Config, j: number, cands: number[], order: Int32Array, score: (lat: number, drop: number) => number): { t: number; lat: number; drop: number } {
  const R = config.length;
  const deeper = p.costs.fireAfter ? deeperShares(exitsOf(p, config).exits, p.n) : undefined;
  const off = config.slice();
  off[j] = OFF;
  const costOff = exitCosts(p.costs, off, deeper);
  const on = config.slice();
  on[j] = -Infinity;
  const costOn = exitCosts(p.costs, on, deeper);
  const reach = new Uint8Array(p.n);
  const passCost = new Float64Array(p.n);
  const passLoss = new Float64Array(p.n);
  let baseCost = 0;
  let baseLoss = 0;
  let offCost = 0;
  let offLoss = 0;
  for (let s = 0; s < p.n; s++) {
    let k = -1;
    for (let r = 0; r < R; r++) {
      if (r !== j && off[r] !== OFF && p.conf[r]![s]! >= off[r]!) {
        k = r;
        break;
      }
    }
    const cOff = k < 0 ? costOff.none : costOff.atRamp[k]!;
    const lOff = k < 0 ? 0 : p.loss[k]![s]!;
    offCost += cOff;
    offLoss += lOff;
    if (k >= 0 && k < j) {
      baseCost += cOff;
      baseLoss += lOff;
    } else {
      reach[s] = 1;
      passCost[s] = k < 0 ? costOn.none : costOn.atRamp[k]!;
      passLoss[s] = lOff;
      baseCost += passCost[s]!;
      baseLoss += lOff;
    }
  }
  const n = Math.max(1, p.n);
  let best = { t: OFF, lat: offCost / n, drop: offLoss / n };
  let bestScore = score(best.lat, best.drop);
  const exitCost = costOn.atRamp[j]!;
  let cost = baseCost;
  let loss = baseLoss;
  let idx = 0;
  const conf = p.conf[j]!;
  for (const t of cands) {
    while (idx < order.length && conf[order[idx]!]! >= t) {
      const s = order[idx]!;
      if (reach[s]) {
        cost += exitCost - passCost[s]!;
        loss += p.loss[j]![s]! - passLoss[s]!;
      }
      idx++;
    }
    const sc = score(cost / n, loss / n);
    if (sc < bestScore - 1e-15) {
      bestScore = sc;
      best = { t, lat: cost / n, drop: loss / n };
    }
  }
  return best;
}

function descend(p: Problem, start: Config, cands: number[][], orders: Int32Array[], score: (lat: number, drop: number) => number, visit: (pt: Point) => void): Point {
  const config = start.slice();
  let current = evaluate(p, config);
  let cur: Point = { config: config.slice(), meanLatency: current.meanLatency, drop: current.drop };
  for (let pass = 0; pass < 20; pass++) {
    let improved = false;
    for (let j = 0; j < config.length; j++) {
      const b = bestForRamp(p, config, j, cands[j]!, orders[j]!, score);
      if (b.t === config[j]) continue;
      const trial = config.slice();
      trial[j] = b.t;
      // The move's latency at its own shares of requests going deeper, where the costs depend on them.
      const lat = p.costs.fireAfter ? evaluate(p, trial).meanLatency : b.lat;
      if (score(lat, b.drop) < score(cur.meanLatency, cur.drop) - 1e-12) {
        config[j] = b.t;
        cur = { config: config.slice(), meanLatency: lat, drop: b.drop };
        visit(cur);
        improved = true;
      }
    }
    if (!improved) break;
  }
  current = evaluate(p, config);
  return { config: config.slice(), meanLatency: current.meanLatency, drop: current.drop };
}

export function autoSearch(p: Problem, cands: number[][], maxDrop: number): SearchResult {
  const orders = confidenceOrders(p);
  const R = p.conf.length;
  const visited: Point[] = [];
  const visit = (pt: Point): void => {
    visited.push(pt);
  };
  const none: Config = new Array<number>(R).fill(OFF);
  const base = evaluate(p, none);
  visit({ config: none, meanLatency: base.meanLatency, drop: 0 });
  // Lambda sweep: latency units per unit of drop, from "accuracy is cheap" to "accuracy is everything".
  const scale = p.costs.baseline || 1;
  let start = none;
  for (let i = 0; i <= 24; i++) {
    const lambda = scale * 10 ** (-1 + (i * 5) / 24);
    const pt = descend(p, start, cands, orders, (lat, drop) => lat + lambda * drop, visit);
    visit(pt);
    start = pt.config;
  }
  // Apparate's greedy result is one more starting point, so auto is never worse than greedy.
  const greedy = greedySearch(p, cands, maxDrop);
  for (const g of greedy.frontier) visit(g);
  // Constrained polish from the best feasible points found.
  const constrained = (lat: number, drop: number): number => (drop <= maxDrop + 1e-12 ? lat : 1e12 + drop);
  const feasible = visited.filter((v) => v.drop <= maxDrop + 1e-12).sort((a, b) => a.meanLatency - b.meanLatency);
  for (const seed of feasible.slice(0, 3)) visit(descend(p, seed.config, cands, orders, constrained, visit));
  // Seeded random restarts of the constrained descent escape the local optima of the non-convex frontier.
  const rng = new Rng(12345);
  for (let k = 0; k < 8; k++) {
    const startConfig = cands.map((c) => (rng.next() < 0.5 ? OFF : c[Math.floor(rng.next() * c.length)]!));
    visit(descend(p, startConfig, cands, orders, constrained, visit));
  }
  const frontier = pareto(visited);
  const best = frontier.filter((f) => f.drop <= maxDrop + 1e-12).sort((a, b) => a.meanLatency - b.meanLatency)[0]!;
  return { best, frontier, evaluations: visited.length };
}

/** Apparate's greedy hill-climbing, in units of candidate-threshold steps. */
export function greedySearch(p: Problem, cands: number[][], maxDrop: number): SearchResult {
  const R = p.conf.length;
  const level = new Array<number>(R).fill(0);
  const step = cands.map((c) => Math.max(1, Math.round(c.length / 10)));
  const toConfig = (lv: number[]): Config => lv.map((q, j) => (q === 0 ? OFF : cands[j]![Math.min(q, cands[j]!.length) - 1]!));
  let cur = evaluate(p, toConfig(level));
  const visited: Point[] = [{ config: toConfig(level), meanLatency: cur.meanLatency, drop: cur.drop }];
  for (let iter = 0; iter < 10_000; iter++) {
    let bestJ = -1;
    let bestUtility = -Infinity;
    let bestEval = cur;
    for (let j = 0; j < R; j++) {
      if (level[j]! >= cands[j]!.length) continue;
      const trial = level.slice();
      trial[j] = Math.min(cands[j]!.length, trial[j]! + step[j]!);
      const e = evaluate(p, toConfig(trial));
      if (e.drop > maxDrop + 1e-12) {
        step[j] = Math.max(1, Math.floor(step[j]! / 2));
        continue;
      }
      const gain = cur.meanLatency - e.meanLatency;
      const cost = Math.max(e.drop - cur.drop, 1e-9);
      const utility = gain / cost;
      if (gain > 0 && utility > bestUtility) {
        bestUtility = utility;
        bestJ = j;
        bestEval = e;
      }
    }
    if (bestJ < 0) {
      // No improving move: refine every step; stop once all are at their minimum.
      if (step.every((s) => s <= 1)) break;
      for (let j = 0; j < R; j++) step[j] = Math.max(1, Math.floor(step[j]! / 2));
      continue;
    }
    level[bestJ] = Math.min(cands[bestJ]!.length, level[bestJ]! + step[bestJ]!);
    step[bestJ] = step[bestJ]! * 2;
    cur = bestEval;
    visited.push({ config: toConfig(level), meanLatency: cur.meanLatency, drop: cur.drop });
  }
  const best = { config: toConfig(level), meanLatency: cur.meanLatency, drop: cur.drop };
  return { best, frontier: pareto(visited), evaluations: visited.length };
}

export function exhaustiveSearch(p: Problem, cands: number[][], maxDrop: number, limit = 2_000_000): SearchResult {
  const R = p.conf.length;
  const sizes = cands.map((c) => c.length + 1);
  const total = sizes.reduce((a, b) => a * b, 1);
  if (total > limit) throw new Error(`exhaustive search would evaluate ${total} configurations (limit ${limit})`);
  const visited: Point[] = [];
  const idx = new Array<number>(R).fill(0);
  for (let k = 0; k < total; k++) {
    const config = idx.map((q, j) => (q === 0 ? OFF : cands[j]![q - 1]!));
    const e = evaluate(p, config);
    visited.push({ config, meanLatency: e.meanLatency, drop: e.drop });
    for (let j = 0; j < R; j++) {
      idx[j]!++;
      if (idx[j]! < sizes[j]!) break;
      idx[j] = 0;
    }
  }
  const frontier = pareto(visited);
  const best = frontier.filter((f) => f.drop <= maxDrop + 1e-12).sort((a, b) => a.meanLatency - b.meanLatency)[0]!;
  return { best, frontier, evaluations: total };
}
