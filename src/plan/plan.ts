/**
 * `ee-tool plan`: choose exits and thresholds under a maximum accuracy drop, tuned on one part of
 * the profile's samples (the tuning set) and certified on the rest (the certification set).
 */
import { threadsAt, type ProfileResult } from "../profile/profile.js";
import { EeToolError } from "../errors.js";
import { TOOL_VERSION } from "../ramps/insert.js";
import type { RuntimeForm } from "../stages/exit-graph.js";
import type { SessionSettings } from "../ort/ort.js";
import { additivity, buildCosts, buildProblem, candidateThresholds, deeperShares, evaluate, exitCosts, exitsOf, type Against, type Config, type Costs, type Metric, type Problem } from "./problem.js";
import { autoSearch, exhaustiveSearch, greedySearch, type Point, type SearchResult } from "./search.js";
import { minimumCertifiable, pValueOf, binomialUpperBound, type Certificate } from "./certify.js";
import { withFittedLosses } from "./fitted.js";
import type { LiveRecord } from "./feedback.js";

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
  /**
   * Also certify a set of operating points at these drop levels (the plan's own maxDrop among
   * them), all switchable in one model; see OperatingPoints.
   */
  points?: number[];
}

/** Drop levels of `plan --points` without a list: a quarter point to four points. */
export const DEFAULT_POINT_LEVELS: readonly number[] = [0.0025, 0.005, 0.01, 0.02, 0.04];

export interface OperatingPoint {
  maxDrop: number;
  /** Threshold per exit of OperatingPoints.exits; null: off (+Inf in the model's thresholds input). */
  thresholds: Array<number | null>;
  /** Share of the certification samples leaving at each exit. */
  exitRateCertify: number[];
  dropTune: number;
  dropCertify: number;
  /** Expected latency per profiled batch size, in the model that holds every exit of OperatingPoints.exits. */
  latency: Record<string, { meanLatencyMs: number; medianLatencyMs: number; saving: number; savingMedian: number }>;
  /** At confidence 1 - (1 - plan confidence) / points (Bonferroni); null when not certified. */
  certificate: Certificate | null;
}

/**
 * Operating points along the frontier, switched per request in one model: the model holds the
 * union of the points' exits, and a point sets their thresholds (an exit a point does not use is
 * off, but still present: its ramp and branch cost every request, which each point's latency
 * includes). Each point is certified at its own drop level with error (1 - confidence) / m for m
 * points, so that all m certificates hold together with probability at least `confidence`.
 */
export interface OperatingPoints {
  exits: Array<{ ramp: number; output: string; tensor: string; stage: number }>;
  confidence: number;
  correction: "bonferroni";
  points: OperatingPoint[];
  /** The point the plan itself is (its maxDrop): the model's default thresholds. */
  default: number;
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

export type { RuntimeForm };

export interface Plan {
  format: typeof PLAN_FORMAT;
  tool: string;
  model: { file: string; sha256: string; output: string; classes: number };
  /**
   * ep: the execution provider the profile measured on; the plan's latencies are predictions for it.
   * threads: the intra-op threads they were measured with (null or absent: onnxruntime's default);
   * eval and EarlyExitSession run with them unless told otherwise (planSettings).
   */
  profile: { created: string; samples: number; calibrationHash: string; ep: string; threads?: number | null };
  settings: { maxDrop: number; against: Against; metric: Metric; batch: number; confidence: number; search: SearchMethod; levels: number; tuneFraction: number; tuningDrop: TuningDrop };
  data: { tune: number; certify: number; split: string };
  baselineMs: number;
  /**
   * How latency was predicted (plan/problem.ts): `source` "exits" (each exit measured in the
   * runtime) or "prefixes" (an older profile); the predicted latency of each path of the plan's
   * configuration (ramp -1: no exit), per request; and the additivity check, the all-exits model
   * measured against the exits' costs added up (null for older profiles).
   */
  /**
   * The runtime form the plan runs in (EarlyExitSession follows it): the faster of the one-call If
   * model and one call per segment on the profile's provider, each with every exit active and
   * none firing, per request at settings.batch. Null for older profiles (one-call).
   */
  runtime: { form: RuntimeForm; oneCallMs: number; segmentsMs: number } | null;
  costModel: {
    source: Costs["source"];
    paths: Array<{ ramp: number; ms: number }>;
    /** The all-exits model measured and the exits' paired differences added up, per request; shiftMs: how far each exit's cost was moved to add up to it (problem.ts, shiftedAdds). */
    allExits: { measuredMs: number; predictedMs: number; shiftMs?: number } | null;
    /**
     * Present when the plan's paths were measured as its runtime runs them (`plan --calib`,
     * eval/paths.ts): `paths` and `expected` then hold the measured figures, and `modelled` what
     * the cost model alone predicted.
     */
    measured?: MeasuredPaths & { modelled: { paths: Array<{ ramp: number; ms: number }>; meanLatencyMs: number; medianLatencyMs: number; saving: number; savingMedian: number } };
  };
  exits: PlannedExit[];
  expected: Outcome;
  certificate: Certificate | null;
  /** The search's best configuration on the tuning set, before certification. */
  searchBest: Outcome;
  greedy: Outcome & { exits: Array<{ ramp: number; threshold: number }> };
  /** dropTune: observed on the tuning set; dropSearched: as the search saw it (fitted or observed). */
  frontier: Array<{ thresholds: Array<number | null>; meanLatencyMs: number; dropTune: number; dropSearched: number; dropCertify: number }> | null;
  truncation: Array<{ ramp: number; dropCertify: number; latencyMs: number; saving: number; bytesNotLoaded: number }>;
  /** Present with `plan --points`: the plan is then the point at settings.maxDrop. */
  points?: OperatingPoints;
  /** Present after `ee-tool replan`: the test on live feedback that chose the default point. */
  live?: LiveRecord;
  /** Artifacts written with --emit (paths relative to the plan). */
  artifacts?: Record<string, unknown>;
}

/**
 * A plan's paths timed in its runtime (eval/paths.ts): each path's calls as multiples of the
 * model's median in their block, on `samples` inputs at `batch`.
 */
export interface MeasuredPaths {
  batch: number;
  samples: number;
  /** The model's median in the run, ms per row (the paths' ms are ratio x the profiled model). */
  modelMs: number;
  /**
   * The plain mean of the model's calls over their block's median (1.03: slow calls add 3% to the
   * model's mean). Absent in plans measured before it was kept.
   */
  modelTail?: number;
  /**
   * ratio: the middle of `sessions`, the path's figure (mean of the middle 80% of its calls) in each
   * runtime session: the path's typical latency. meanRatio: the same with plain means, over the
   * model's plain mean (modelTail): what the path's calls add to a mean latency, slow calls
   * included, against the model's.
   */
  paths: Array<{ ramp: number; ratio: number; meanRatio?: number; calls: number; distinct: number; sessions: number[] }>;
  budgetMs: number;
  elapsedMs: number;
}

/**
 * The plan with its paths' latency measured: each path the measured multiple of the model times
 * the profiled model (a path not timed, one no measured sample took or too rare for a whole
 * batch, keeps the cost model's figure), and the expected mean and median latency from them at
 * the plan's shares of tuning and certification samples on each path.
 */
export function withMeasuredPaths(plan: Plan, m: MeasuredPaths): Plan {
  if (m.batch !== plan.settings.batch) throw new Error(`paths measured at batch ${m.batch}, the plan is at batch ${plan.settings.batch}`);
  const base = plan.baselineMs;
  const prior = plan.costModel.measured?.modelled ?? { paths: plan.costModel.paths, meanLatencyMs: plan.expected.meanLatencyMs, medianLatencyMs: plan.expected.medianLatencyMs, saving: plan.expected.saving, savingMedian: plan.expected.savingMedian };
  const paths = prior.paths.map((p) => {
    const got = m.paths.find((x) => x.ramp === p.ramp);
    return { ramp: p.ramp, ms: got ? got.ratio * base : p.ms };
  });
  // Samples on each path, tuning and certification together (as `expected` weighs them).
  const n = plan.data.tune + plan.data.certify;
  const counts = plan.exits.map((e) => ({ ramp: e.ramp, count: e.exitRateTune * plan.data.tune + e.exitRateCertify * plan.data.certify }));
  counts.push({ ramp: -1, count: Math.max(0, n - counts.reduce((a, c) => a + c.count, 0)) });
  const cost = (ramp: number): number => paths.find((p) => p.ramp === ramp)?.ms ?? base;
  // The mean from the paths' plain means against the model's (slow calls included on both sides,
  // as a served mean and eval's saving have them); the median from their typical figures.
  const meanCost = (ramp: number): number => {
    const got = m.paths.find((x) => x.ramp === ramp);
    return got?.meanRatio !== undefined ? got.meanRatio * base : cost(ramp);
  };
  const mean = counts.reduce((a, c) => a + c.count * meanCost(c.ramp), 0) / Math.max(1, n);
  const sorted = counts.map((c) => ({ ms: cost(c.ramp), count: c.count })).sort((a, b) => a.ms - b.ms);
  let seen = 0;
  const medianMs = sorted.find((x) => (seen += x.count) >= n / 2)?.ms ?? base;
  return {
    ...plan,
    costModel: { ...plan.costModel, paths, measured: { ...m, modelled: prior } },
    expected: { ...plan.expected, meanLatencyMs: mean, medianLatencyMs: medianMs, saving: 1 - mean / base, savingMedian: 1 - medianMs / base },
  };
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
  const sorted = descendingConfidences(tune);
  const config = point.config.map((t, j) => {
    if (t === Infinity) return t;
    // The confidences at or above t: a prefix of the ramp's confidences, highest first.
    const c = sorted[j]!;
    let lo = 0;
    let hi = c.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (c[mid]! >= t) lo = mid + 1;
      else hi = mid;
    }
    const keep = Math.floor(lo * q);
    return keep === 0 ? Infinity : c[keep - 1]!;
  });
  const e = evaluate(tune, config);
  return { config, meanLatency: e.meanLatency, drop: e.drop };
}

const sortedConfidences = new WeakMap<Problem, Float32Array[]>();

/** Each ramp's confidences on a problem's samples, highest first (computed once per problem). */
function descendingConfidences(p: Problem): Float32Array[] {
  let out = sortedConfidences.get(p);
  if (!out) {
    out = p.conf.map((c) => Float32Array.from(c).filter((x) => !Number.isNaN(x)).sort().reverse());
    sortedConfidences.set(p, out);
  }
  return out;
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
  return [...sequence(frontier, maxDrop, tune)];
}

/** The sequence above, one point at a time (testing stops at its first failure: no need to build the rest). */
function* sequence(frontier: Point[], maxDrop: number, tune?: Problem): Generator<Point> {
  const ordered = [...frontier].filter((f) => f.drop <= maxDrop + 1e-12).sort((a, b) => a.drop - b.drop || b.meanLatency - a.meanLatency);
  for (const f of ordered) {
    if (tune) for (const q of STEPS) yield shrink(tune, f, q);
    yield f;
  }
}

/** Fixed-sequence testing along the sequence above; returns the last certified point. */
export function certifyFrontier(frontier: Point[], cert: Problem, maxDrop: number, confidence: number, signed = false, tune?: Problem): { point: Point; certificate: Certificate } | undefined {
  const delta = 1 - confidence;
  const ordered = sequence(frontier, maxDrop, tune);
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
  const signed = against === "labels";
  const pointLevels = options.points ? [...new Set([...options.points, maxDrop])].sort((a, b) => a - b) : [maxDrop];
  for (const l of pointLevels) if (!(l >= 0 && l < 1)) throw new EeToolError("USAGE", `--points takes drops between 0 and 1, got ${l}`);
  const picks = certifyLevels(seen, cert, cands, pointLevels, confidence, method, signed, maxDrop);
  const mainAt = pointLevels.indexOf(maxDrop);
  // The points' model holds every exit any point uses; an exit a point does not use is present but
  // off (a threshold no confidence reaches), and costs what an exit that never fires costs.
  const present = options.points ? keepFasterPoints(picks, mainAt, tune.costs.baseline, (c, on) => outcome(tune, cert, offIn(c, on)).saving) : new Set<number>();
  const inModel = (c: Config): Config => offIn(c, present);
  const { found, chosen, certificate } = picks[mainAt]!;
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
    const latency = costs.fire[j]!;
    const bytes = profile.stages.slice(j + 1).reduce((a, s) => a + s.weightBytes, 0);
    return { ramp: r.id, dropCertify: loss / Math.max(1, cert.n), latencyMs: latency, saving: 1 - latency / costs.baseline, bytesNotLoaded: bytes };
  });
  const thresholdsOf = (c: Config): Array<number | null> => c.map((t) => (t === Infinity ? null : t));
  return {
    format: PLAN_FORMAT,
    tool: TOOL_VERSION,
    model: { file: profile.model.file, sha256: profile.model.sha256, output: profile.model.output, classes: profile.model.classes },
    profile: { created: profile.created, samples: samples.count, calibrationHash: profile.settings.calibrationHash, ep: profile.environment.executionProvider, threads: threadsAt(profile, batch) },
    settings: { maxDrop, against, metric, batch, confidence, search: method, levels, tuneFraction, tuningDrop },
    data: { tune: tune.n, certify: cert.n, split: `by content hash: ${Math.round(tuneFraction * 100)}% tune thresholds, the rest certify them` },
    baselineMs: costs.baseline,
    runtime: runtimeOf(profile, batch),
    costModel: costModel(profile, batch, costs, order.map((r) => r.id), inModel(chosen.config), [tune, cert]),
    exits,
    expected: outcome(tune, cert, inModel(chosen.config)),
    certificate,
    searchBest: outcome(tune, cert, found.best.config),
    greedy: { ...outcome(tune, cert, greedy.config), exits: greedy.config.flatMap((t, j) => (t === Infinity ? [] : [{ ramp: order[j]!.id, threshold: t }])) },
    frontier: options.frontier
      ? found.frontier.map((f) => ({ thresholds: thresholdsOf(f.config), meanLatencyMs: f.meanLatency, dropTune: evaluate(tune, f.config).drop, dropSearched: f.drop, dropCertify: evaluate(cert, f.config).drop }))
      : null,
    truncation,
    ...(options.points ? { points: operatingPoints(result, tune, cert, order, picks.map((p) => p.chosen.config), pointLevels, inModel, picks.map((p) => p.certificate), confidence, present, pointLevels.indexOf(maxDrop)) } : {}),
  };
}

/**
 * Session settings for running a plan (its runtime, or the model beside it): optimisation "all" and
 * no spinning unless the caller says otherwise, and the intra-op threads the plan's latencies were
 * measured with where the caller set none (on the provider it was profiled on).
 */
export function planSettings(plan: Pick<Plan, "profile">, settings: SessionSettings = {}): SessionSettings {
  const s: SessionSettings = { optimization: "all", spinning: false, ...settings };
  const threads = plan.profile.threads;
  const sameEp = (settings.ep ?? "cpu") === (plan.profile.ep ?? "cpu");
  return settings.threads === undefined && threads && sameEp ? { ...s, threads } : s;
}

function runtimeOf(profile: ProfileResult["profile"], batch: number): Plan["runtime"] {
  const f = profile.latency?.[String(batch)]?.forms;
  return f ? { form: f.faster, oneCallMs: f.oneCall / batch, segmentsMs: f.segments / batch } : null;
}

/** The cost model's latency of each path of a configuration, at its shares of requests going deeper over the problems' samples. */
function costModel(profile: ProfileResult["profile"], batch: number, costs: Costs, rampIds: number[], config: Config, problems: Problem[]): Plan["costModel"] {
  const counts = new Array<number>(config.length).fill(0);
  for (const p of problems) exitsOf(p, config).exits.forEach((c, j) => (counts[j]! += c));
  const { atRamp, none } = exitCosts(costs, config, deeperShares(counts, problems.reduce((a, p) => a + p.n, 0)));
  const check = additivity(profile, batch);
  return {
    source: costs.source,
    paths: [...rampIds.flatMap((ramp, j) => (config[j] === Infinity || config[j] === PRESENT_OFF ? [] : [{ ramp, ms: atRamp[j]! }])), { ramp: -1, ms: none }],
    allExits: check ? { measuredMs: check.measured, predictedMs: check.predicted, ...(costs.addsShift !== undefined ? { shiftMs: costs.addsShift } : {}) } : null,
  };
}

export interface LevelPick {
  level: number;
  found: SearchResult;
  chosen: Point;
  certificate: Certificate | null;
}

/**
 * The search and its certified point at each drop level. With several levels each is certified at
 * error (1 - confidence) / levels (Bonferroni), so that all certificates hold together with
 * probability >= confidence. A level nothing can be certified at gets the model unchanged (no
 * exits), except `strict` (the plan's own maxDrop), which is an error.
 */
export function certifyLevels(seen: Problem, cert: Problem, cands: number[][], levels: readonly number[], confidence: number, method: SearchMethod, signed: boolean, strict?: number): LevelPick[] {
  const conf = confidence > 0 ? 1 - (1 - confidence) / levels.length : 0;
  return levels.map((level) => {
    const found = runSearch(seen, cands, level, method);
    const none = (): Point => noExitPoint(found, seen.costs.baseline);
    // Nothing to certify when no configuration with exits is faster than the model itself: the plan
    // is then the model unchanged (no exits), which is an answer, not an error.
    const worthIt = found.frontier.some((f) => f.config.some((t) => t !== Infinity) && f.meanLatency < seen.costs.baseline && f.drop <= level + 1e-12);
    if (!worthIt) return { level, found, chosen: none(), certificate: null };
    if (conf <= 0) return { level, found, chosen: found.best, certificate: null };
    const c = certifyFrontier(found.frontier, cert, level, conf, signed, seen);
    if (c) return { level, found, chosen: c.point, certificate: c.certificate };
    if (level === strict) {
      throw new EeToolError("CONSTRAINT_INFEASIBLE", `no exit configuration could be certified to lose at most ${level} at confidence ${conf} on ${cert.n} held-back samples`, {
        hint: "Raise --max-drop, lower --confidence, or profile more samples; without exits the model is unchanged.",
      });
    }
    return { level, found, chosen: none(), certificate: null };
  });
}

/** An operating point's certified bound as a table shows it (`pct` formats a fraction). */
export function pointBoundText(p: OperatingPoint, pct: (x: number) => string): string {
  if (p.certificate?.bound != null) return pct(p.certificate.bound);
  if (p.certificate) return "-";
  return p.thresholds.every((t) => t === null) ? "no exits" : "not certified";
}

/** A search's point with no exits: the model unchanged. */
function noExitPoint(found: SearchResult, baseline: number): Point {
  return found.frontier.find((f) => f.config.every((t) => t === Infinity)) ?? { config: found.best.config.map(() => Infinity), meanLatency: baseline, drop: 0 };
}

/** A threshold no confidence reaches: the exit is in the model but never fires. */
const PRESENT_OFF = Number.MAX_VALUE;

/** A configuration in a model holding the exits `present`: those it does not use are there but off. */
function offIn(c: Config, present: ReadonlySet<number>): Config {
  return c.map((t, j) => (t === Infinity && present.has(j) ? PRESENT_OFF : t));
}

function exitsOfPicks(picks: readonly LevelPick[]): Set<number> {
  const s = new Set<number>();
  for (const p of picks) p.chosen.config.forEach((t, j) => t !== Infinity && s.add(j));
  return s;
}

/**
 * The exits of the points' model, after leaving out the points that would not be faster than the
 * model in it: each exit a point brings costs every other point its ramp, so a strict point that
 * rarely exits can be slower than the model itself (a point with no saving). The slowest such point
 * (other than the plan's own, `mainAt`) becomes the model unchanged (no exits, no certificate) and
 * its exits leave the model unless another point uses them, until every point left saves.
 * `saving(config, present)`: a configuration's expected saving at the plan's batch in a model
 * holding `present`; `baseline`: the model's latency. Changes `picks` in place.
 */
export function keepFasterPoints(picks: LevelPick[], mainAt: number, baseline: number, saving: (c: Config, present: ReadonlySet<number>) => number): Set<number> {
  for (;;) {
    const present = exitsOfPicks(picks);
    let worst = -1;
    let worstSaving = 0;
    picks.forEach((p, i) => {
      if (i === mainAt || p.chosen.config.every((t) => t === Infinity)) return;
      const s = saving(p.chosen.config, present);
      if (s <= worstSaving) [worst, worstSaving] = [i, s];
    });
    if (worst < 0) return present;
    const p = picks[worst]!;
    picks[worst] = { ...p, chosen: noExitPoint(p.found, baseline), certificate: null };
  }
}

function operatingPoints(
  result: ProfileResult, tune: Problem, cert: Problem, order: ProfileResult["profile"]["ramps"], configs: Config[], levels: number[],
  inModel: (c: Config) => Config, certificates: Array<Certificate | null>, confidence: number, present: Set<number>, main: number,
): OperatingPoints {
  const js = [...present].sort((a, b) => a - b);
  const batches = Object.keys(result.profile.latency ?? {});
  return {
    exits: js.map((j) => ({ ramp: order[j]!.id, output: order[j]!.output, tensor: order[j]!.tensor, stage: order[j]!.stage })),
    confidence,
    correction: "bonferroni",
    default: main,
    points: configs.map((c, i) => {
      const ev = evaluate(cert, c);
      const latency = Object.fromEntries(batches.map((b) => {
        const costs = buildCosts(result.profile, Number(b));
        const o = outcome({ ...tune, costs }, { ...cert, costs }, inModel(c));
        return [b, { meanLatencyMs: o.meanLatencyMs, medianLatencyMs: o.medianLatencyMs, saving: o.saving, savingMedian: o.savingMedian }];
      }));
      return {
        maxDrop: levels[i]!, thresholds: js.map((j) => (c[j] === Infinity ? null : c[j]!)), exitRateCertify: js.map((j) => ev.exitRates[j]!),
        dropTune: evaluate(tune, c).drop, dropCertify: ev.drop, latency, certificate: certificates[i]!,
      };
    }),
  };
}

