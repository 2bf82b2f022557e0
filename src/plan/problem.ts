/**
 * The planning problem built from a profile: per-sample confidences and losses for every ramp,
 * and the latency cost model.
 *
 * Cost model (per request, from the profile's measured medians at the chosen batch size, divided
 * by the batch size; medians resist the outliers of a busy machine). The runtime makes one call per
 * request (stages/exit-graph.ts) on the model optimised with the plan's ramps only, and the
 * profile times each ramp as that runtime runs it when it is the only exit (Profile latency
 * `exits`): `fire[j]`, the whole call when every row exits at j, and `pass[j]`, what an exit at j
 * that does not fire adds to the runtime without exits (its ramp, confidence test and If, and
 * whatever fusion its cut stops onnxruntime making; a paired difference, timing.ts). A path is
 * then built from measured pieces:
 * - a sample that exits at ramp j pays fire[j] plus pass[i] of every active exit i before j;
 * - a sample that never exits pays the runtime without exits (`noExit`) plus pass[i] of every
 *   active exit.
 * What fire[j] costs depends on the request before: right after a call that went deeper (whose
 * later layers took the cache) it is `fireAfter[j]`, measured so. Requests arrive in no order, so
 * the one before a request that exits at j went deeper with the probability that a request does:
 * the share of the configuration's requests that go past exit j. The exit's cost is the two
 * weighed by that share (`exitCosts`' `deeper`; `evaluate` computes it for each configuration).
 * Assumed, not measured per configuration: that the pieces add up when several exits are active
 * (the profile's all-exits model checks it, see `additivity`), and that in a batch a row costs
 * its share of a batch whose rows all take its path.
 *
 * Profiles made before the per-exit measurements fall back to the prefix model: reaching cut k
 * costs the measured prefix k (stages 0..k in one call), an exit costs its ramp alone plus a
 * share of what the all-exits model adds beyond the ramps.
 */
import type { Profile } from "../profile/profile.js";
import type { SampleData } from "../profile/samples.js";
import { EeToolError } from "../errors.js";

import type { Metric } from "../stages/exit-graph.js";
export type { Metric };
export type Against = "model" | "labels";

export interface Costs {
  /** Exiting at ramp j (depth order) with no active exit before it: the whole call, after a call that took the same path. */
  fire: number[];
  /** The same, right after a call that went through the whole model (absent for older profiles and the segments form: then fire). */
  fireAfter?: number[];
  /** What ramp j, active and not firing, adds to every path through it. */
  pass: number[];
  /** The original model, measured end to end. */
  baseline: number;
  /** The runtime with no exit firing and none active (the base of the no-exit path). */
  none: number;
  /** How far every exit's pass cost was moved so that they add up to the all-exits model (`shiftedAdds`); source "exits" only. */
  addsShift?: number;
  /**
   * Where fire and pass come from: each exit measured in the one-call runtime; the stages and
   * ramps timed alone, for the segments form (when the profile found it faster on its provider);
   * or the older prefix model.
   */
  source: "exits" | "segments" | "prefixes";
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
  const byDepth = profile.ramps.map((r, i) => ({ r, i })).sort((a, b) => a.r.depth - b.r.depth);
  const call = per(l.callOverhead.p50);
  if (l.forms?.faster === "segments") {
    // One call per segment: reaching exit j merges stages 0..j into one call (j calls fewer than
    // the stages alone); an active exit splits a segment (one call more) and adds its ramp, fused
    // into its segment (its time alone less the call it does not make).
    // An active exit also hands its segment's tensors to the next call: what the form measured as
    // the runtime runs it costs beyond its parts, shared by its boundaries.
    const rampNet = l.ramps.map((r) => Math.max(0, per(r.p50) - call)); // in cut (= depth) order
    const handoff = l.forms.segmentsParts !== undefined && rampNet.length ? Math.max(0, per(l.forms.segments - l.forms.segmentsParts) / rampNet.length) : 0;
    let reach = 0;
    const fire = rampNet.map((rn, j) => (reach += per(l.stages[j]!.p50)) - j * call + rn);
    const all = l.stages.reduce((a, x) => a + per(x.p50), 0) - rampNet.length * call;
    return { fire, pass: rampNet.map((rn) => call + handoff + rn), baseline, none: all, source: "segments" };
  }
  if (l.exits?.length === profile.ramps.length && l.noExit) {
    const exits = byDepth.map(({ r }) => l.exits!.find((e) => e.ramp === r.id)!);
    const after = exits.every((e) => e.fireAfterDeeper) ? { fireAfter: exits.map((e) => per(e.fireAfterDeeper!.p50)) } : {};
    const { adds, shift } = shiftedAdds(l, batch);
    // Passing an exit runs its ramp: its pass cost is at least the ramp's own time (passFloors).
    const floors = passFloors(l, batch);
    const pass = exits.map((e, k) => Math.max(floors[k] ?? 0, adds[l.exits!.indexOf(e)]!));
    return { fire: exits.map((e) => per(e.fire.p50)), ...after, pass, baseline, none: per(l.noExit.p50), source: "exits", addsShift: shift };
  }
  // The prefix model (profiles without per-exit measurements): l.prefixes and l.ramps are in cut order.
  const net = (x: number): number => Math.max(0, per(x) - call);
  const fixed = Math.min(call, baseline);
  let reached = fixed;
  const reach = l.prefixes.map((p, k) => (reached = k === l.prefixes.length - 1 ? Math.max(baseline, reached) : Math.max(per(p.p50), reached)));
  const ramps = l.ramps.map((r) => net(r.p50));
  const rampSum = ramps.reduce((a, b) => a + b, 0);
  const allExits = Math.max(0, per(l.allExits.p50) - baseline);
  // Each exit costs its ramp plus an equal share of the rest (confidence ops and the If, the same
  // few ops at every exit); when the ramps in place cost less than alone, a share in proportion.
  const extra = allExits - rampSum;
  const pass = ramps.map((r) => (extra >= 0 ? r + extra / ramps.length : (allExits * r) / rampSum));
  return { fire: pass.map((p, j) => reach[j]! + p), pass, baseline, none: baseline, source: "prefixes" };
}

/**
 * Each exit's pass cost per request (in the order of the profile's exits), moved by one amount so
 * that they add up to what the all-exits model measured beyond the no-exit runtime. Every exit's
 * paired difference has the same reference, the no-exit runtime's session; when that one session
 * runs slow or fast (on this machine by up to 6% against sessions of the same computation in the
 * same rounds), every difference moves alike: all of them came out 0.1 ms below zero on a ViT
 * profile, and its plan, believing every exit free, took all eight. The all-exits model, another
 * session, measures their sum directly; the shift trades a reference that is off for what the
 * all-exits session is off, shared by all exits.
 */
export function shiftedAdds(l: NonNullable<Profile["latency"]>[string], batch: number): { adds: number[]; shift: number } {
  const raw = (l.exits ?? []).map((e) => e.adds.p50 / batch);
  if (!l.noExit || raw.length === 0) return { adds: raw, shift: 0 };
  const shift = (l.allExits.p50 / batch - l.noExit.p50 / batch - raw.reduce((a, b) => a + b, 0)) / raw.length;
  return { adds: raw.map((a) => a + shift), shift };
}

/**
 * The least each exit (in depth order) can add to a request that passes it: its ramp's own time,
 * net of the call it was timed in (`ramps`, a session whose work is the ramp alone). An exit's
 * paired difference comes from two sessions of the whole model, and each session's own speed
 * (1-3% of the model, either way) can be more than the exit costs: on one text profile four of
 * seven exits came out below their own ramp's time, two below zero, and the plan took those as
 * free. The If and the confidence test come on top, so the floor is on the low side.
 */
export function passFloors(l: NonNullable<Profile["latency"]>[string], batch: number): number[] {
  return l.ramps.map((r) => Math.max(0, (r.p50 - l.callOverhead.p50) / batch));
}

/**
 * How well the pieces add up: the all-exits model (every ramp active, none firing) measured, and
 * as the exits' paired differences add it up (the runtime without exits plus every exit's pass
 * cost, each at least 0, before the shift above), per request.
 */
export function additivity(profile: Profile, batch: number): { measured: number; predicted: number } | null {
  const l = profile.latency?.[String(batch)];
  if (!l?.exits || !l.noExit) return null;
  return { measured: l.allExits.p50 / batch, predicted: (l.noExit.p50 + l.exits.reduce((a, e) => a + Math.max(0, e.adds.p50), 0)) / batch };
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

/**
 * Cost of exiting at each ramp under the active set, and of not exiting. `deeper[j]`: the share of
 * requests that go past ramp j (see `deeperShares`); without it every exit is priced as after a
 * call that took its own path.
 */
export function exitCosts(costs: Costs, config: Config, deeper?: ArrayLike<number>): { atRamp: number[]; none: number } {
  const R = config.length;
  const atRamp = new Array<number>(R).fill(Infinity);
  let passed = 0;
  for (let j = 0; j < R; j++) {
    if (config[j] === Infinity) continue;
    const d = costs.fireAfter && deeper ? deeper[j]! : 0;
    atRamp[j] = (1 - d) * costs.fire[j]! + d * (costs.fireAfter?.[j] ?? 0) + passed;
    passed += costs.pass[j]!;
  }
  // With no exit active the runtime is the model itself.
  return { atRamp, none: config.every((t) => t === Infinity) ? costs.baseline : costs.none + passed };
}

/** deeper[j]: the share of requests that go past ramp j, from the counts exiting at each ramp (the rest exit nowhere). */
export function deeperShares(exits: ArrayLike<number>, n: number): Float64Array {
  const out = new Float64Array(exits.length);
  let past = n;
  for (let j = 0; j < exits.length; j++) {
    past -= exits[j]!;
    out[j] = past / Math.max(1, n);
  }
  return out;
}

/** The exit each sample takes under a configuration (-1: none), and the count at each ramp. */
export function exitsOf(p: Problem, config: Config): { at: Int16Array; exits: number[] } {
  const R = config.length;
  const at = new Int16Array(p.n).fill(-1);
  const exits = new Array<number>(R).fill(0);
  for (let s = 0; s < p.n; s++) {
    for (let j = 0; j < R; j++) {
      if (config[j] !== Infinity && p.conf[j]![s]! >= config[j]!) {
        at[s] = j;
        exits[j]!++;
        break;
      }
    }
  }
  return { at, exits };
}

export function evaluate(p: Problem, config: Config, withLosses = false): Evaluation {
  if (withLosses && p.loss.some((l) => !(l instanceof Int8Array))) throw new Error("per-sample losses need observed losses, not fitted ones");
  const { at, exits } = exitsOf(p, config);
  const { atRamp, none: noneCost } = exitCosts(p.costs, config, deeperShares(exits, p.n));
  const losses = new Int8Array(withLosses ? p.n : 0);
  let lossSum = 0;
  for (let s = 0; s < p.n; s++) {
    const j = at[s]!;
    if (j >= 0) {
      lossSum += p.loss[j]![s]!;
      if (withLosses) losses[s] = p.loss[j]![s]!;
    }
  }
  // Every sample's latency is one of R + 1 path costs: the mean and median from the counts.
  const noneCount = exits.reduce((a, e) => a - e, p.n);
  const paths = [...exits.map((count, j) => ({ cost: atRamp[j]!, count })), { cost: noneCost, count: noneCount }].filter((x) => x.count > 0).sort((a, b) => a.cost - b.cost);
  const total = paths.reduce((a, x) => a + x.cost * x.count, 0);
  const nth = (i: number): number => {
    let seen = 0;
    for (const x of paths) {
      seen += x.count;
      if (i < seen) return x.cost;
    }
    return 0;
  };
  const median = p.n ? (p.n % 2 ? nth((p.n - 1) / 2) : (nth(p.n / 2 - 1) + nth(p.n / 2)) / 2) : 0;
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
