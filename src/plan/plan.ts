/**
 * `ee-tool plan`: choose exits and thresholds under a maximum accuracy drop, tuned on one part of
 * the profile's samples (the tuning set) and certified on the rest (the certification set).
 */
import type { ProfileResult } from "../profile/profile.js";
import { EeToolError } from "../errors.js";
import { TOOL_VERSION } from "../ramps/insert.js";
import { buildCosts, buildProblem, candidateThresholds, evaluate, type Against, type Config, type Metric, type Problem } from "./problem.js";
import { autoSearch, exhaustiveSearch, greedySearch, type Point, type SearchResult } from "./search.js";
import { minimumCertifiable, pValueOf, binomialUpperBound, type Certificate } from "./certify.js";
import { withFittedLosses } from "./fitted.js";

export const PLAN_FORMAT = "ee-tool.plan/1";

/** Default share of the scored samples that tune thresholds (docs/plan.md, "Honest data"). */
export const DEFAULT_TUNE_FRACTION = 0.2;

export type SearchMethod = "auto" | "exhaustive" | "greedy";
/** What the search sees of a configuration's drop on the tuning set (docs/plan.md, "Fitted drops"). */
export type TuningDrop = "fitted" | "observed";

export interface PlanOptions {
  maxDrop?: number;
  against?: Against;
  metric?: Metric;
  batch?: number;
  confidence?: number;
  search?: SearchMethod;
  /** Candidate thresholds per ramp (quantiles of its confidence on the tuning set). */
  levels?: number;
  /** Share of the scored samples that tune the thresholds (the rest certifies them); default 0.2. */
  tuneFraction?: number;
  /** "fitted" (default): each ramp's loss as a smooth function of its confidence; "observed": raw counts. */
  tuningDrop?: TuningDrop;
  frontier?: boolean;
}

export interface PlannedExit {
  ramp: number;
  output: string;
  tensor: string;
  stage: number;
  threshold: number;
  exitRateTune: number;
  exitRateCertify: number;
}

export interface Outcome {
  meanLatencyMs: number;
  medianLatencyMs: number;
  saving: number;
  savingMedian: number;
  dropTune: number;
  dropCertify: number;
}

export interface Plan {
  format: typeof PLAN_FORMAT;
  tool: string;
  model: { file: string; sha256: string; output: string; classes: number };
  profile: { created: string; samples: number; calibrationHash: string };
  settings: { maxDrop: number; against: Against; metric: Metric; batch: number; confidence: number; search: SearchMethod; levels: number; tuneFraction: number; tuningDrop: TuningDrop };
  data: { tune: number; certify: number; split: string };
  baselineMs: number;
  exits: PlannedExit[];
  expected: Outcome;
  certificate: Certificate | null;
  /** The search's best configuration on the tuning set, before certification. */
  searchBest: Outcome;
  greedy: Outcome & { exits: Array<{ ramp: number; threshold: number }> };
  /** dropTune: observed on the tuning set; dropSearched: as the search saw it (fitted or observed). */
  frontier: Array<{ thresholds: Array<number | null>; meanLatencyMs: number; dropTune: number; dropSearched: number; dropCertify: number }> | null;
  truncation: Array<{ ramp: number; dropCertify: number; latencyMs: number; saving: number; bytesNotLoaded: number }>;
  /** Artifacts written with --emit (paths relative to the plan). */
  artifacts?: Record<string, unknown>;
}

/**
 * Tuning/certification split by content hash: a sample always falls on the same side. The tuning
 * set only shapes the sequence of configurations to test; the certification set decides how far
 * along it the plan may go, and a larger one certifies more (docs/plan.md).
 */
export function splitByHash(hash: Uint8Array, count: number, tuneFraction = DEFAULT_TUNE_FRACTION): { tune: number[]; certify: number[] } {
  const tune: number[] = [];
  const certify: number[] = [];
  const cut = Math.round(256 * tuneFraction);
  for (let i = 0; i < count; i++) (hash[i * 8 + 7]! < cut ? tune : certify).push(i);
  return { tune, certify };
}

function outcome(tune: Problem, cert: Problem, config: Config): Outcome {
  const a = evaluate(tune, config);
  const b = evaluate(cert, config);
  const base = tune.costs.baseline;
  // Expected latency over all samples (tuning and certification halves together).
  const n = tune.n + cert.n;
  const mean = (a.meanLatency * tune.n + b.meanLatency * cert.n) / n;
  const median = (a.medianLatency * tune.n + b.medianLatency * cert.n) / n;
  return { meanLatencyMs: mean, medianLatencyMs: median, saving: 1 - mean / base, savingMedian: 1 - median / base, dropTune: a.drop, dropCertify: b.drop };
}

export function runSearch(p: Problem, cands: number[][], maxDrop: number, method: SearchMethod): SearchResult {
  if (method === "greedy") return greedySearch(p, cands, maxDrop);
  if (method === "exhaustive") {
    try {
      return exhaustiveSearch(p, cands, maxDrop);
    } catch (e) {
      throw new EeToolError("USAGE", `${(e as Error).message}; use --search auto or fewer --levels`);
    }
  }
  return autoSearch(p, cands, maxDrop);
}

/**
 * A configuration with the same active exits whose thresholds are raised so that each ramp takes
 * only a fraction q of the tuning samples it took: a point between the model and `point`.
 */
export function shrink(tune: Problem, point: Point, q: number): Point {
  const config = point.config.map((t, j) => {
    if (t === Infinity) return t;
    const above = Array.from(tune.conf[j]!).filter((c) => c >= t).sort((a, b) => b - a);
    const keep = Math.floor(above.length * q);
    return keep === 0 ? Infinity : above[keep - 1]!;
  });
  const e = evaluate(tune, config);
  return { config, meanLatency: e.meanLatency, drop: e.drop };
}

/** The fractions of a frontier point's tuning exits taken by the steps tested before it: 1/40 ... 39/40. */
export const STEPS: readonly number[] = Array.from({ length: 39 }, (_, i) => (i + 1) / 40);

/**
 * The fixed sequence of configurations to test, safest first, from the tuning set only: the
 * frontier's points by tuning drop (then slowest first), each preceded by versions of itself whose
 * exits take 1/40, 2/40, ... 39/40 of its tuning exits. Thresholds tuned to zero
 * drop on a few hundred samples are often too low on new data; without the intermediate steps the
 * first test fails and nothing can be certified, although a slightly more careful plan would be.
 * Testing stops at the first failure, so finer steps stop closer to what the data can certify.
 */
export function testSequence(frontier: Point[], maxDrop: number, tune?: Problem): Point[] {
  const ordered = [...frontier].filter((f) => f.drop <= maxDrop + 1e-12).sort((a, b) => a.drop - b.drop || b.meanLatency - a.meanLatency);
  if (!tune) return ordered;
  return ordered.flatMap((f) => [...STEPS.map((q) => shrink(tune, f, q)), f]);
}

/** Fixed-sequence testing along the sequence above; returns the last certified point. */
export function certifyFrontier(frontier: Point[], cert: Problem, maxDrop: number, confidence: number, signed = false, tune?: Problem): { point: Point; certificate: Certificate } | undefined {
  const delta = 1 - confidence;
  const ordered = testSequence(frontier, maxDrop, tune);
  let last: { point: Point; certificate: Certificate } | undefined;
  let tested = 0;
  for (const point of ordered) {
    if (point.config.every((t) => t === Infinity)) continue; // no exits: drop exactly 0, nothing to test
    tested++;
    const e = evaluate(cert, point.config, true);
    const pv = pValueOf(e.losses, maxDrop, signed);
    if (pv.p > delta) break;
    let k = 0;
    for (const l of e.losses) k += l;
    last = {
      point,
      certificate: {
        method: pv.method, n: cert.n, observedDrop: pv.observed, pValue: pv.p,
        bound: pv.method === "binomial" ? binomialUpperBound(k, cert.n, delta) : null,
        confidence, maxDrop, tested,
      },
    };
  }
  if (last) last.certificate.tested = tested;
  return last;
}

export function planFromProfile(result: ProfileResult, options: PlanOptions = {}): Plan {
  const { profile, samples } = result;
  const maxDrop = options.maxDrop ?? 0.01;
  const confidence = options.confidence ?? 0.95;
  const against = options.against ?? "model";
  const metric = options.metric ?? "maxprob";
  const batch = options.batch ?? 1;
  const method = options.search ?? "auto";
  const levels = options.levels ?? 64;
  const tuneFraction = options.tuneFraction ?? DEFAULT_TUNE_FRACTION;
  const tuningDrop = options.tuningDrop ?? "fitted";
  if (!(tuneFraction > 0 && tuneFraction < 1)) throw new EeToolError("USAGE", `--tune-fraction must be between 0 and 1, got ${tuneFraction}`);
  if (!(maxDrop >= 0 && maxDrop < 1)) throw new EeToolError("CONSTRAINT_INFEASIBLE", `--max-drop ${maxDrop} cannot be met: even a model without exits has a drop of 0`, { hint: "Give a maximum drop between 0 and 1, e.g. 0.01 for one percentage point." });
  if (!(confidence >= 0 && confidence < 1)) throw new EeToolError("USAGE", `--confidence must be in [0, 1), got ${confidence}`);
  const costs = buildCosts(profile, batch);
  const split = splitByHash(samples.hash, samples.count, tuneFraction);
  if (split.tune.length === 0 || split.certify.length === 0) throw new EeToolError("TOO_FEW_SAMPLES", `--tune-fraction ${tuneFraction} leaves no samples on one side (${split.tune.length} to tune, ${split.certify.length} to certify)`, {
      hint: "Choose a --tune-fraction that leaves samples on both sides (the split is by content hash, in steps of 1/256), or profile more calibration samples.",
    });
  const tune = buildProblem(profile, samples, split.tune, metric, against, costs);
  const cert = buildProblem(profile, samples, split.certify, metric, against, costs);
  if (confidence > 0) {
    const need = minimumCertifiable(maxDrop, 1 - confidence);
    if (cert.n < need) {
      throw new EeToolError("CONSTRAINT_INFEASIBLE", `too few samples to certify a drop of at most ${maxDrop} at confidence ${confidence}: the certification set has ${cert.n} samples, at least ${need} are needed even with no errors`, {
        hint: `Profile more calibration samples (about ${2 * need} unfitted ones), raise --max-drop, lower --confidence, or turn certification off with --confidence 0.`,
      });
    }
  }
  // The search and the sequence it hands to certification see fitted drops by default; reports
  // and Apparate's greedy baseline keep the observed ones.
  const seen = tuningDrop === "fitted" ? withFittedLosses(tune, metric) : tune;
  const cands = candidateThresholds(tune, levels);
  const found = runSearch(seen, cands, maxDrop, method);
  let chosen: Point = found.best;
  let certificate: Certificate | null = null;
  // Nothing to certify when no configuration with exits is faster than the model itself: the plan
  // is then the model unchanged (no exits), which is an answer, not an error.
  const worthIt = found.frontier.some((f) => f.config.some((t) => t !== Infinity) && f.meanLatency < costs.baseline && f.drop <= maxDrop + 1e-12);
  if (confidence > 0 && worthIt) {
    const c = certifyFrontier(found.frontier, cert, maxDrop, confidence, against === "labels", seen);
    if (!c) {
      throw new EeToolError("CONSTRAINT_INFEASIBLE", `no exit configuration could be certified to lose at most ${maxDrop} at confidence ${confidence} on ${cert.n} held-back samples`, {
        hint: "Raise --max-drop, lower --confidence, or profile more samples; without exits the model is unchanged.",
      });
    }
    chosen = c.point;
    certificate = c.certificate;
  } else if (!worthIt) {
    chosen = found.frontier.find((f) => f.config.every((t) => t === Infinity)) ?? { config: found.best.config.map(() => Infinity), meanLatency: costs.baseline, drop: 0 };
  }
  const greedy = greedySearch(tune, cands, maxDrop).best;
  const order = profile.ramps.map((r) => r).sort((a, b) => a.depth - b.depth);
  const evTune = evaluate(tune, chosen.config);
  const evCert = evaluate(cert, chosen.config);
  const exits: PlannedExit[] = [];
  chosen.config.forEach((t, j) => {
    if (t === Infinity) return;
    const r = order[j]!;
    exits.push({ ramp: r.id, output: r.output, tensor: r.tensor, stage: r.stage, threshold: t, exitRateTune: evTune.exitRates[j]!, exitRateCertify: evCert.exitRates[j]! });
  });
  const truncation = order.map((r, j) => {
    let loss = 0;
    for (let s = 0; s < cert.n; s++) loss += cert.loss[j]![s]!;
    let latency = costs.fixed + costs.ramp[j]!;
    for (let k = 0; k <= j; k++) latency += costs.stage[k]!;
    const bytes = profile.stages.slice(j + 1).reduce((a, s) => a + s.weightBytes, 0);
    return { ramp: r.id, dropCertify: loss / Math.max(1, cert.n), latencyMs: latency, saving: 1 - latency / costs.baseline, bytesNotLoaded: bytes };
  });
  const thresholdsOf = (c: Config): Array<number | null> => c.map((t) => (t === Infinity ? null : t));
  return {
    format: PLAN_FORMAT,
    tool: TOOL_VERSION,
    model: { file: profile.model.file, sha256: profile.model.sha256, output: profile.model.output, classes: profile.model.classes },
    profile: { created: profile.created, samples: samples.count, calibrationHash: profile.settings.calibrationHash },
    settings: { maxDrop, against, metric, batch, confidence, search: method, levels, tuneFraction, tuningDrop },
    data: { tune: tune.n, certify: cert.n, split: `by content hash: ${Math.round(tuneFraction * 100)}% tune thresholds, the rest certify them` },
    baselineMs: costs.baseline,
    exits,
    expected: outcome(tune, cert, chosen.config),
    certificate,
    searchBest: outcome(tune, cert, found.best.config),
    greedy: { ...outcome(tune, cert, greedy.config), exits: greedy.config.flatMap((t, j) => (t === Infinity ? [] : [{ ramp: order[j]!.id, threshold: t }])) },
    frontier: options.frontier
      ? found.frontier.map((f) => ({ thresholds: thresholdsOf(f.config), meanLatencyMs: f.meanLatency, dropTune: evaluate(tune, f.config).drop, dropSearched: f.drop, dropCertify: evaluate(cert, f.config).drop }))
      : null,
    truncation,
  };
}

