/**
 * The planning problem built from a profile: per-sample confidences and losses for every ramp,
 * and the latency cost model.
 *
 * Cost model (per request, from the profile's measured medians at the chosen batch size, divided
 * by the batch size; medians resist the outliers of a busy machine). The runtime makes one call per
 * request (runtime/exit-graph.ts), so:
 * - a sample that exits at ramp j pays the stages up to j and the cost of every active exit up to j;
 * - a sample that never exits pays the whole model and every active exit.
 * Every request pays one call's fixed cost (`callOverhead`, a bare call) whatever exit it takes.
 * Stage costs: reaching cut k costs the measured prefix k (stages 0..k in one call); stage k is
 * prefix k less prefix k-1 (prefixes are made non-decreasing first, noise can invert two close
 * ones), the first less the call, the last the whole model less the deepest prefix before it.
 * Exit costs: the all-exits model (every ramp active, none firing) less the model is what all
 * exits together cost; each exit gets its ramp's time alone less one bare call, plus an equal
 * share of the rest (the confidence ops and the If). When the ramps cost less in place than alone
 * (nothing left to share), the all-exits cost is split in proportion to the ramps' times.
 */
import type { Profile } from "../profile/profile.js";
import type { SampleData } from "../profile/samples.js";
import { EeToolError } from "../errors.js";

export type Metric = "maxprob" | "margin" | "entropy";
export type Against = "model" | "labels";

export interface Costs {
  /** Net cost of each stage (stage k ends at ramp k; the last stage ends at the output). */
  stage: number[];
  /** Cost of each ramp as an active exit (the ramp, its confidence test and the branch). */
  ramp: number[];
  /** What every request pays once: the fixed cost of a call. */
  fixed: number;
  /** The original model, measured end to end. */
  baseline: number;
}

export interface Problem {
  /** Ramps in depth order; ramp j sits after stage j. */
  rampIds: number[];
  n: number;
  /** conf[j][s]: higher is more confident (entropy is negated). */
  conf: Float32Array[];
  /**
   * loss[j][s] if sample s exits at ramp j: 1 if wrong where the model is right, -1 if right where
   * it is wrong (labels), else 0. A tuning problem may hold fitted expected losses instead
   * (Float32Array, fitted.ts); certification always counts observed ones.
   */
  loss: Array<Int8Array | Float32Array>;
  costs: Costs;
}

export function buildCosts(profile: Profile, batch: number): Costs {
  const l = profile.latency?.[String(batch)];
  if (!l) {
    const have = Object.keys(profile.latency ?? {});
    throw new EeToolError("PROFILE_MISMATCH", `the profile has no latency at batch ${batch} (it has: ${have.length ? have.join(", ") : "none, it was made with --no-latency"})`, {
      hint: `Profile again with --batch ${batch}, or plan with --batch ${have[0] ?? 1}.`,
    });
  }
  const per = (x: number): number => x / batch;
  const baseline = per(l.model.p50);
  const call = per(l.callOverhead.p50);
  const net = (x: number): number => Math.max(0, per(x) - call);
  const fixed = Math.min(call, baseline);
  let reached = fixed;
  const stages = l.prefixes.map((p, k) => {
    const cum = k === l.prefixes.length - 1 ? Math.max(baseline, reached) : Math.max(per(p.p50), reached);
    const cost = cum - reached;
    reached = cum;
    return cost;
  });
  const ramps = l.ramps.map((r) => net(r.p50));
  const rampSum = ramps.reduce((a, b) => a + b, 0);
  const allExits = Math.max(0, per(l.allExits.p50) - baseline);
  // Each exit costs its ramp plus an equal share of the rest (confidence ops and the If, the same
  // few ops at every exit); when the ramps in place cost less than alone, a share in proportion.
  const extra = allExits - rampSum;
  const share = (r: number): number => (extra >= 0 ? r + extra / ramps.length : (allExits * r) / rampSum);
  return { stage: stages, ramp: ramps.map(share), fixed, baseline };
}

/** Build the problem over a subset of the profile's samples. */
export function buildProblem(profile: Profile, samples: SampleData, subset: ArrayLike<number>, metric: Metric, against: Against, costs: Costs): Problem {
  if (against === "labels" && !profile.settings.labels) {
    throw new EeToolError("USAGE", "--against labels needs a profile made with --labels");
  }
  const n = subset.length;
  const order = profile.ramps.map((r, i) => ({ r, i })).sort((a, b) => a.r.depth - b.r.depth);
  const conf: Float32Array[] = [];
  const loss: Int8Array[] = [];
  for (const { i } of order) {
    const d = samples.ramps[i]!;
    const c = new Float32Array(n);
    const e = new Int8Array(n);
    for (let k = 0; k < n; k++) {
      const s = subset[k]!;
      c[k] = metric === "maxprob" ? d.maxprob[s]! : metric === "margin" ? d.margin[s]! : -d.entropy[s]!;
      if (against === "model") e[k] = d.pred[s] === samples.final[s] ? 0 : 1;
      else e[k] = (d.pred[s] === samples.label[s] ? 0 : 1) - (samples.final[s] === samples.label[s] ? 0 : 1);
    }
    conf.push(c);
    loss.push(e);
  }
  return { rampIds: order.map((o) => profile.ramps[o.i]!.id), n, conf, loss, costs };
}

/** Thresholds per ramp (in depth order); Infinity = inactive. */
export type Config = number[];

export interface Evaluation {
  meanLatency: number;
  medianLatency: number;
  /** Accuracy drop: mean loss over samples. */
  drop: number;
  /** Fraction of samples exiting at each ramp (depth order). */
  exitRates: number[];
  /** Per-sample loss (for certification). */
  losses: Int8Array;
}

/** Cost of exiting at each ramp under the active set, and of not exiting. */
export function exitCosts(costs: Costs, config: Config): { atRamp: number[]; none: number } {
  const R = config.length;
  const atRamp = new Array<number>(R).fill(Infinity);
  let acc = 0;
  let rampSum = 0;
  for (let j = 0; j < R; j++) {
    acc += costs.stage[j]!;
    if (config[j] !== Infinity) {
      rampSum += costs.ramp[j]!;
      atRamp[j] = costs.fixed + acc + rampSum;
    }
  }
  return { atRamp, none: costs.fixed + acc + costs.stage[R]! + rampSum };
}

export function evaluate(p: Problem, config: Config, withLosses = false): Evaluation {
  if (withLosses && p.loss.some((l) => !(l instanceof Int8Array))) throw new Error("per-sample losses need observed losses, not fitted ones");
  const { atRamp, none } = exitCosts(p.costs, config);
  const R = config.length;
  const exits = new Array<number>(R).fill(0);
  const lat = new Float64Array(p.n);
  const losses = new Int8Array(withLosses ? p.n : 0);
  let total = 0;
  let lossSum = 0;
  for (let s = 0; s < p.n; s++) {
    let cost = none;
    for (let j = 0; j < R; j++) {
      if (config[j] !== Infinity && p.conf[j]![s]! >= config[j]!) {
        cost = atRamp[j]!;
        lossSum += p.loss[j]![s]!;
        if (withLosses) losses[s] = p.loss[j]![s]!;
        exits[j]!++;
        break;
      }
    }
    lat[s] = cost;
    total += cost;
  }
  lat.sort();
  const median = p.n ? (p.n % 2 ? lat[(p.n - 1) / 2]! : (lat[p.n / 2 - 1]! + lat[p.n / 2]!) / 2) : 0;
  return { meanLatency: total / Math.max(1, p.n), medianLatency: median, drop: lossSum / Math.max(1, p.n), exitRates: exits.map((e) => e / Math.max(1, p.n)), losses };
}

/** Candidate thresholds per ramp: confidence values at G evenly spaced quantiles (highest first). */
export function candidateThresholds(p: Problem, levels: number): number[][] {
  return p.conf.map((c) => {
    const sorted = Float32Array.from(c).sort();
    const out = new Set<number>();
    for (let q = 1; q <= levels; q++) {
      const idx = Math.min(sorted.length - 1, Math.max(0, Math.round(sorted.length * (1 - q / levels))));
      out.add(sorted[idx]!);
    }
    return [...out].sort((a, b) => b - a);
  });
}
