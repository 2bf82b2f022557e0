import { beforeAll, describe, expect, it } from "vitest";
import * as fs from "node:fs";
import * as path from "node:path";
import { CNN, TEXT, ROOT, runCli, tmpDir } from "./helpers/fixtures.js";
import { loadProfile } from "../src/profile/merge.js";
import type { Plan } from "../src/plan/plan.js";
import { certifyFrontier, certifyLevels, DEFAULT_POINT_LEVELS, keepFasterPoints, planFromProfile, planSettings, STEPS, testSequence, type LevelPick } from "../src/plan/plan.js";
import { measurePaths, MIN_PATH_CALLS } from "../src/eval/paths.js";
import { EarlyExitSession } from "../src/runtime/early-exit.js";
import { loadModel } from "../src/onnx/model.js";
import { openCalibration } from "../src/data/calib.js";
import { additivity, passFloors, buildCosts, buildProblem, candidateThresholds, deeperShares, evaluate, exitCosts, type Costs, type Problem } from "../src/plan/problem.js";
import { autoSearch, exhaustiveSearch, greedySearch } from "../src/plan/search.js";
import { binomialCdf, binomialUpperBound, hoeffdingBentkusPValue } from "../src/plan/certify.js";
import { logisticFit, withFittedLosses } from "../src/plan/fitted.js";
import { Rng } from "../src/util/rng.js";
import { validate } from "../src/util/schema.js";
import { threadsAt, type BatchLatency, type Profile } from "../src/profile/profile.js";
import type { LatencyStats } from "../src/profile/timing.js";
import { scoreLogits } from "../src/util/logits.js";

const planSchema = JSON.parse(fs.readFileSync(path.join(ROOT, "docs/plan.schema.json"), "utf8")) as Record<string, unknown>;

const FIX = (p: string): string => path.join(ROOT, "fixtures", p);
const work = tmpDir();
const files = { cnn: { ee: path.join(work, "cnn.ee.onnx"), profile: path.join(work, "cnn.profile.json") }, text: { ee: path.join(work, "text.ee.onnx"), profile: path.join(work, "text.profile.json") } };

beforeAll(() => {
  for (const [name, model] of [["cnn", CNN], ["text", TEXT]] as const) {
    expect(runCli(["insert", model, "--calib", FIX(`${name}/calib.npz`), "-o", files[name].ee, "-q"]).code).toBe(0);
    expect(runCli(["profile", files[name].ee, "--calib", FIX(`${name}/calib.npz`), "--labels", FIX(`${name}/calib_labels.npy`), "--batch", "1", "--budget", "3000", "-o", files[name].profile, "-q"]).code).toBe(0);
  }
}, 180_000);

/** A synthetic instance: R ramps, deeper ramps more confident and more often right. */
function synthetic(seed: number, n: number, R: number, adversarial = false): Problem {
  const rng = new Rng(seed);
  const conf: Float32Array[] = [];
  const loss: Int8Array[] = [];
  for (let j = 0; j < R; j++) {
    const c = new Float32Array(n);
    const l = new Int8Array(n);
    for (let s = 0; s < n; s++) {
      const quality = (j + 1) / (R + 1);
      let x = Math.min(0.9999, Math.max(0, quality + 0.35 * rng.normal()));
      // Adversarial for greedy: the first ramp's most confident samples are often wrong, so small
      // threshold moves cost accuracy and only a large move pays off.
      if (adversarial && j === 0 && x > 0.85) l[s] = rng.next() < 0.3 ? 1 : 0;
      else l[s] = rng.next() < (1 - x) * (1 - quality) * 0.6 ? 1 : 0;
      c[s] = x;
    }
    conf.push(c);
    loss.push(l);
  }
  // Stages cost 1 each, an exit 0.2 (the first 0.1 when adversarial).
  const pass = Array.from({ length: R }, (_, j) => (adversarial && j === 0 ? 0.1 : 0.2));
  const costs: Costs = { fire: pass.map((c, j) => j + 1 + c), pass, baseline: R + 1, none: R + 1, source: "exits" };
  return { rampIds: Array.from({ length: R }, (_, j) => j), n, conf, loss, costs };
}

describe("cost model", () => {
  const stats = (p50: number): LatencyStats => ({ mean: p50, p50, p90: p50, p99: p50, std: 0, runs: 30, converged: true, ciRelative: 0 });
  // Unless a test says otherwise, each ramp alone costs no more than its call (no floor on its pass cost).
  const withLatency = (l: Partial<BatchLatency>): Profile => ({ latency: { "2": { model: stats(2), stages: [], ramps: [stats(0.1), stats(0.1)], callOverhead: stats(0.1), allExits: stats(2.6), stageSum: { mean: 0, p50: 0, ratioMean: 0, ratioP50: 0, netP50: 0, netRatioP50: 0 }, ...l } } }) as unknown as Profile;

  it("paths from each exit measured alone: fire at the exit, pass through earlier active ones (paired, clamped at 0), the no-exit runtime at the end", () => {
    // Per request at batch 2: model 1.0, the runtime without exits 0.95; ramp 7 (depth 1) fires
    // at 0.3 and adds 0.1 when it does not fire; ramp 3 (depth 2) fires at 0.6 and adds -0.05
    // (noise: nothing). The all-exits model measures 1.0, what the pieces add up to before clamping.
    const p = withLatency({
      noExit: stats(1.9), allExits: stats(2.0),
      exits: [{ ramp: 3, fire: stats(1.2), pass: stats(1.8), adds: stats(-0.1) }, { ramp: 7, fire: stats(0.6), pass: stats(2.1), adds: stats(0.2) }],
    });
    p.ramps = [{ id: 3, depth: 2 }, { id: 7, depth: 1 }] as Profile["ramps"];
    const c = buildCosts(p, 2);
    expect(c.source).toBe("exits");
    expect(c.fire.map((x) => Number(x.toFixed(9)))).toEqual([0.3, 0.6]);
    expect(c.pass.map((x) => Number(x.toFixed(9)))).toEqual([0.1, 0]);
    expect(c.baseline).toBeCloseTo(1, 12);
    const both = exitCosts(c, [0.5, 0.5]);
    expect(both.atRamp.map((x) => Number(x.toFixed(9)))).toEqual([0.3, 0.7]);
    expect(both.none).toBeCloseTo(1.05, 9);
    const deepOnly = exitCosts(c, [Infinity, 0.5]);
    expect(deepOnly.atRamp[1]).toBeCloseTo(0.6, 9);
    expect(deepOnly.none).toBeCloseTo(0.95, 9);
    // The all-exits model (2.0 at batch 2) against the pieces: 0.95 + 0.1 + 0.
    expect(additivity(p, 2)).toEqual({ measured: 1, predicted: expect.closeTo(1.05, 9) as number });
    expect(c.addsShift).toBeCloseTo(0, 12);
  });

  it("the exits' paired differences are moved by one amount to add up to the all-exits model (a reference session that ran slow)", () => {
    // Per request at batch 2: the no-exit reference measured 1.1 (0.1 slow), so both exits' paired
    // differences came out 0.1 low: -0.05 and 0.0 for true costs 0.05 and 0.1. The all-exits
    // model measures 1.15 = 1.0 + 0.05 + 0.1: the shift is (1.15 - 1.1 + 0.05) / 2 = 0.05.
    const p = withLatency({
      noExit: stats(2.2), allExits: stats(2.3),
      exits: [{ ramp: 3, fire: stats(1.2), pass: stats(2.1), adds: stats(-0.1) }, { ramp: 7, fire: stats(0.6), pass: stats(2.2), adds: stats(0) }],
    });
    p.ramps = [{ id: 3, depth: 2 }, { id: 7, depth: 1 }] as Profile["ramps"];
    const c = buildCosts(p, 2);
    expect(c.addsShift).toBeCloseTo(0.05, 9);
    // Depth order: ramp 7 (0 + 0.05), ramp 3 (-0.05 + 0.05). Unshifted, both would have been free.
    expect(c.pass.map((x) => Number(x.toFixed(9)))).toEqual([0.05, 0]);
    expect(exitCosts(c, [0.5, 0.5]).none).toBeCloseTo(1.1 + 0.05, 9);
    // The check still reports the pieces as measured: 1.1 + 0 + 0 against 1.15.
    expect(additivity(p, 2)).toEqual({ measured: 1.15, predicted: expect.closeTo(1.1, 9) as number });
  });

  it("no exit adds less than its own ramp timed alone (two whole-model sessions' difference can come out below it)", () => {
    // Per request at batch 2: ramp 7 (depth 1) alone costs 0.1 beyond its call, ramp 3 (depth 2)
    // 0.02. Their paired differences came out 0.3 (above the floor: kept) and -0.04 (a pass
    // session that ran fast: floored at its ramp's 0.02, not taken as free).
    const p = withLatency({
      noExit: stats(1.9), allExits: stats(2.42), ramps: [stats(0.3), stats(0.14)],
      exits: [{ ramp: 3, fire: stats(1.2), pass: stats(1.82), adds: stats(-0.08) }, { ramp: 7, fire: stats(0.6), pass: stats(2.5), adds: stats(0.6) }],
    });
    p.ramps = [{ id: 3, depth: 2 }, { id: 7, depth: 1 }] as Profile["ramps"];
    expect(passFloors(p.latency!["2"]!, 2).map((x) => Number(x.toFixed(9)))).toEqual([0.1, 0.02]);
    const c = buildCosts(p, 2);
    expect(c.addsShift).toBeCloseTo(0, 9);
    expect(c.pass.map((x) => Number(x.toFixed(9)))).toEqual([0.3, 0.02]);
    expect(exitCosts(c, [0.5, 0.5]).none).toBeCloseTo(0.95 + 0.3 + 0.02, 9);
  });

  it("an exit after a request that went deeper: fire and fireAfterDeeper weighed by the share of requests going past it", () => {
    // Per request at batch 2: ramp 7 (depth 1) fires at 0.3 after its own path, 0.4 after a deeper
    // call; ramp 3 (depth 2) at 0.6 and 0.7.
    const p = withLatency({
      noExit: stats(1.9), allExits: stats(2.1),
      exits: [
        { ramp: 3, fire: stats(1.2), fireAfterDeeper: stats(1.4), pass: stats(1.8), adds: stats(0) },
        { ramp: 7, fire: stats(0.6), fireAfterDeeper: stats(0.8), pass: stats(2.1), adds: stats(0.2) },
      ],
    });
    p.ramps = [{ id: 3, depth: 2 }, { id: 7, depth: 1 }] as Profile["ramps"];
    const c = buildCosts(p, 2);
    expect(c.fireAfter!.map((x) => Number(x.toFixed(9)))).toEqual([0.4, 0.7]);
    // Without shares, each exit is priced after its own path.
    expect(exitCosts(c, [0.5, 0.5]).atRamp.map((x) => Number(x.toFixed(9)))).toEqual([0.3, 0.7]);
    // 3 of 8 samples exit at depth 1, 3 at depth 2, 2 nowhere: 5/8 go past the first exit, 2/8 the second.
    const deeper = deeperShares([3, 3], 8);
    expect(Array.from(deeper)).toEqual([5 / 8, 2 / 8]);
    const mixed = exitCosts(c, [0.5, 0.5], deeper);
    expect(mixed.atRamp[0]).toBeCloseTo((3 / 8) * 0.3 + (5 / 8) * 0.4, 9);
    expect(mixed.atRamp[1]).toBeCloseTo(0.1 + (6 / 8) * 0.6 + (2 / 8) * 0.7, 9);
    expect(mixed.none).toBeCloseTo(0.95 + 0.1, 9);
    // evaluate() prices a configuration at its own shares.
    const conf = [Float32Array.from([0.9, 0.9, 0.9, 0.1, 0.1, 0.1, 0.1, 0.1]), Float32Array.from([0, 0, 0, 0.9, 0.9, 0.9, 0.1, 0.1])];
    const problem: Problem = { rampIds: [7, 3], n: 8, conf, loss: [new Int8Array(8), new Int8Array(8)], costs: c };
    expect(evaluate(problem, [0.5, 0.5]).meanLatency).toBeCloseTo((3 * mixed.atRamp[0]! + 3 * mixed.atRamp[1]! + 2 * mixed.none) / 8, 9);
  });

  it("the segments form: paths from the stages and ramps timed alone, one call fewer per merged cut", () => {
    // Per request at batch 2: call 0.05; stages alone 0.3, 0.4, 0.35; ramps alone 0.1, 0.15.
    const p = withLatency({
      stages: [stats(0.6), stats(0.8), stats(0.7)], ramps: [stats(0.2), stats(0.3)],
      forms: { oneCall: 3, segments: 2.2, faster: "segments" },
    });
    p.ramps = [{ id: 0, depth: 0 }, { id: 1, depth: 1 }] as Profile["ramps"];
    const c = buildCosts(p, 2);
    expect(c.source).toBe("segments");
    // Exit 0 alone: stage 0 and ramp 0 in one call (0.3 + 0.05). Exit 1 alone: stages 0-1 in one
    // call (0.7 - 0.05) and ramp 1 (0.1). An active exit adds a call and its ramp.
    expect(c.fire.map((x) => Number(x.toFixed(9)))).toEqual([0.35, 0.75]);
    expect(c.pass.map((x) => Number(x.toFixed(9)))).toEqual([0.1, 0.15]);
    expect(c.none).toBeCloseTo(0.95, 9);
    const both = exitCosts(c, [0.5, 0.5]);
    // Exit 1 with exit 0 active: two calls, stage 0 + ramp 0, then stage 1 + ramp 1.
    expect(both.atRamp[1]).toBeCloseTo(0.3 + 0.05 + 0.4 + 0.1, 9);
    expect(both.none).toBeCloseTo(1.2, 9);
    // Measured as the runtime runs it, the form costs 0.2 per request beyond its parts: 0.1 at each
    // of its two boundaries, added to what an active exit costs.
    const handed = withLatency({
      stages: [stats(0.6), stats(0.8), stats(0.7)], ramps: [stats(0.2), stats(0.3)],
      forms: { oneCall: 3, segments: 2.6, segmentsParts: 2.2, faster: "segments" },
    });
    handed.ramps = p.ramps;
    const h = buildCosts(handed, 2);
    expect(h.fire).toEqual(c.fire);
    expect(h.pass.map((x) => Number(x.toFixed(9)))).toEqual([0.2, 0.25]);
  });

  it("older profiles: the prefix model, stages as prefix differences made non-decreasing", () => {
    // Per request at batch 2: call 0.05, prefixes 0.4 0.35 (noise: lower) 0.9, model 1.0.
    const ramps = [stats(0.2), stats(0.4)];
    const p = withLatency({ stages: [stats(9), stats(9), stats(9)], prefixes: [stats(0.8), stats(0.7), stats(1.8)], ramps });
    p.ramps = [{ id: 0, depth: 0 }, { id: 1, depth: 1 }] as Profile["ramps"];
    const c = buildCosts(p, 2);
    expect(c.source).toBe("prefixes");
    // All exits cost 0.3 per request over the model: each its ramp's net time (0.05, 0.15) and an
    // equal share of the remaining 0.1 (confidence ops and the If); reaching either cut costs 0.4.
    expect(c.pass.map((x) => Number(x.toFixed(9)))).toEqual([0.1, 0.2]);
    expect(c.fire.map((x) => Number(x.toFixed(9)))).toEqual([0.5, 0.6]);
    // Ramps that cost less in place than alone: the all-exits cost in proportion to their net times.
    const cheap = withLatency({ stages: [stats(9), stats(9), stats(9)], prefixes: [stats(0.8), stats(0.7), stats(1.8)], allExits: stats(2.2), ramps });
    cheap.ramps = p.ramps;
    expect(buildCosts(cheap, 2).pass.map((x) => Number(x.toFixed(9)))).toEqual([0.025, 0.075]);
  });

  it("refuses a profile written before prefix and all-exits timings, in one line with a hint", () => {
    const dir = tmpDir();
    const old = JSON.parse(fs.readFileSync(files.cnn.profile, "utf8")) as Profile;
    for (const l of Object.values(old.latency!)) delete (l as Partial<BatchLatency>).prefixes;
    fs.writeFileSync(path.join(dir, "old.json"), JSON.stringify(old));
    fs.copyFileSync(files.cnn.profile.replace(/\.json$/, ".bin"), path.join(dir, old.samples.file));
    const r = runCli(["plan", path.join(dir, "old.json"), "-o", path.join(dir, "plan.json")]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/error \[PROFILE_INVALID\]: .*old\.json was written by an earlier ee-tool/);
    expect(r.stderr).toMatch(/Profile the model again/);
    expect(fs.existsSync(path.join(dir, "plan.json"))).toBe(false);
  });
});

describe("plan search", () => {
  it("the default search is within 1% of the exhaustive optimum and never worse than greedy, also where greedy gets stuck", () => {
    let greedyStuck = 0;
    for (let seed = 1; seed <= 12; seed++) {
      const p = synthetic(seed, 600, 3, seed % 3 === 0);
      const cands = candidateThresholds(p, 8);
      for (const maxDrop of [0.005, 0.02, 0.05]) {
        const ex = exhaustiveSearch(p, cands, maxDrop);
        const auto = autoSearch(p, cands, maxDrop);
        const greedy = greedySearch(p, cands, maxDrop);
        expect(auto.best.drop).toBeLessThanOrEqual(maxDrop + 1e-12);
        expect(auto.best.meanLatency).toBeLessThanOrEqual(ex.best.meanLatency * 1.01);
        expect(auto.best.meanLatency).toBeLessThanOrEqual(greedy.best.meanLatency + 1e-9);
        if (greedy.best.meanLatency > ex.best.meanLatency * 1.01) greedyStuck++;
      }
    }
    // The instances include ones where Apparate's tuner ends more than 1% above the optimum.
    expect(greedyStuck).toBeGreaterThan(0);
  });

  it("fitted drops: a logistic fit recovers a known curve, keeps the event count, and is zero without events", () => {
    const rng = new Rng(11);
    const n = 4000;
    const x = Float64Array.from({ length: n }, () => 4 * rng.normal());
    const truth = (v: number): number => 1 / (1 + Math.exp(-(-3 - 1.5 * v)));
    const y = Uint8Array.from(x, (v) => (rng.next() < truth(v) ? 1 : 0));
    const p = logisticFit(x, y)!;
    for (const s of [0, 1, 2, 100, 2000]) expect(Math.abs(p[s]! - truth(x[s]!))).toBeLessThan(0.05);
    // Maximum likelihood with an intercept matches the number of events (up to the small ridge).
    const events = y.reduce((a, b) => a + b, 0);
    expect(Math.abs(p.reduce((a, b) => a + b, 0) - events)).toBeLessThan(0.01 * events);
    expect(Array.from(logisticFit(x, new Uint8Array(n))!)).toEqual(Array.from(new Float64Array(n)));
    // Against labels a loss is +1 or -1: the expected loss is the difference of two fits, and the
    // more confident a sample the smaller its expected loss on this instance.
    const conf = [Float32Array.from({ length: n }, () => Math.min(0.999, Math.max(0.05, 0.6 + 0.2 * rng.normal())))];
    const loss = [Int8Array.from(conf[0]!, (c) => (rng.next() < 0.3 * (1 - c) ? 1 : rng.next() < 0.05 ? -1 : 0))];
    const costs: Costs = { fire: [1.1], pass: [0.1], baseline: 2, none: 2, source: "exits" };
    const fitted = withFittedLosses({ rampIds: [0], n, conf, loss, costs }, "maxprob");
    // Each fit keeps its event count, so the expected losses add up to the observed net loss (a
    // fit of +1 losses alone would overshoot by the 154 samples whose loss is -1).
    const sum = (a: ArrayLike<number>): number => Array.from(a).reduce((u, v) => u + v, 0);
    expect(Math.abs(sum(fitted.loss[0]!) - sum(loss[0]!))).toBeLessThan(1);
    const order = Array.from(conf[0]!.keys()).sort((a, b) => conf[0]![a]! - conf[0]![b]!);
    expect(fitted.loss[0]![order[0]!]!).toBeGreaterThan(fitted.loss[0]![order[n - 1]!]!);
    expect(() => evaluate(fitted, [0.5], true)).toThrow(/observed losses/);
  });

  it("p-values: binomial tail, Clopper-Pearson bound, Hoeffding-Bentkus", () => {
    expect(binomialCdf(0, 300, 0.01)).toBeCloseTo(0.99 ** 300, 10);
    expect(binomialCdf(3, 10, 0.5)).toBeCloseTo(176 / 1024, 10);
    const ub = binomialUpperBound(2, 1000, 0.05);
    expect(binomialCdf(2, 1000, ub)).toBeCloseTo(0.05, 4);
    expect(hoeffdingBentkusPValue(0.5, 1000, 0.505)).toBeGreaterThan(0.05);
    expect(hoeffdingBentkusPValue(0.45, 4000, 0.505)).toBeLessThan(1e-6);
  });

  it("the test sequence steps into each frontier point from the tuning set alone", () => {
    const p = synthetic(3, 800, 3);
    const found = autoSearch(p, candidateThresholds(p, 16), 0.02);
    const plain = testSequence(found.frontier, 0.02);
    const stepped = testSequence(found.frontier, 0.02, p);
    const k1 = STEPS.length + 1;
    expect(stepped.length).toBe(k1 * plain.length);
    let fewer = 0;
    const exitsOf = (c: number[]): number[] => evaluate(p, c).exitRates.map((r) => r * p.n);
    plain.forEach((point, i) => {
      expect(stepped[k1 * i + STEPS.length]).toBe(point);
      const full = exitsOf(point.config);
      const first = point.config.findIndex((t) => t !== Infinity);
      let before = 0;
      STEPS.forEach((q, k) => {
        const step = stepped[k1 * i + k]!;
        // Thresholds only rise; the first active ramp takes about q of its exits (more where confidences tie), more as q grows.
        step.config.forEach((t, j) => expect(t).toBeGreaterThanOrEqual(point.config[j]!));
        if (first < 0) return;
        const taken = exitsOf(step.config)[first]!;
        expect(taken).toBeGreaterThanOrEqual(Math.floor(q * full[first]!) - 1);
        expect(taken).toBeLessThanOrEqual(full[first]! + 1e-9);
        expect(taken).toBeGreaterThanOrEqual(before);
        if (q === 0.2 && taken < 0.5 * full[first]!) fewer++;
        before = taken;
      });
    });
    // The steps are real steps: at two tenths, the first exit takes well under its full share.
    expect(fewer).toBeGreaterThan(plain.length / 2);
  });

  it("certification keeps its promise on resampled data with known truth", () => {
    // The CNN profile's scored samples are the population: each configuration's true drop is known.
    const { profile, samples } = loadProfile(files.cnn.profile);
    const costs = buildCosts(profile, 1);
    const all = Array.from({ length: samples.count }, (_, i) => i);
    const population = buildProblem(profile, samples, all, "maxprob", "model", costs);
    const maxDrop = 0.01;
    const confidence = 0.9;
    const trials = 60;
    const rng = new Rng(7);
    let violations = 0;
    let uncertifiedViolations = 0;
    let certified = 0;
    let certifiedStepped = 0;
    let violationsStepped = 0;
    let certifiedFitted = 0;
    let violationsFitted = 0;
    // Operating points: five drop levels certified together; a trial violates when any point's true drop exceeds its level.
    let pointsCertified = 0;
    let familyViolations = 0;
    for (let t = 0; t < trials; t++) {
      const draw = (): number[] => Array.from({ length: 1000 }, () => Math.floor(rng.next() * samples.count));
      const tune = buildProblem(profile, samples, draw(), "maxprob", "model", costs);
      const cert = buildProblem(profile, samples, draw(), "maxprob", "model", costs);
      const found = autoSearch(tune, candidateThresholds(tune, 32), maxDrop);
      if (evaluate(population, found.best.config).drop > maxDrop) uncertifiedViolations++;
      const c = certifyFrontier(found.frontier, cert, maxDrop, confidence);
      if (c) {
        certified++;
        if (evaluate(population, c.point.config).drop > maxDrop) violations++;
      }
      // The sequence with intermediate steps before each frontier point (what plan uses).
      const stepped = certifyFrontier(found.frontier, cert, maxDrop, confidence, false, tune);
      if (stepped) {
        certifiedStepped++;
        if (evaluate(population, stepped.point.config).drop > maxDrop) violationsStepped++;
      }
      // What plan does by default: the search and the sequence see fitted drops; certification counts.
      const seen = withFittedLosses(tune, "maxprob");
      const fitted = certifyFrontier(autoSearch(seen, candidateThresholds(tune, 32), maxDrop).frontier, cert, maxDrop, confidence, false, seen);
      if (fitted) {
        certifiedFitted++;
        if (evaluate(population, fitted.point.config).drop > maxDrop) violationsFitted++;
      }
      if (t % 3 === 0) {
        const picks = certifyLevels(tune, cert, candidateThresholds(tune, 32), DEFAULT_POINT_LEVELS, confidence, "auto", false);
        pointsCertified += picks.filter((p) => p.certificate).length;
        if (picks.some((p) => p.certificate && evaluate(population, p.chosen.config).drop > p.level)) familyViolations++;
      }
    }
    const pointTrials = Math.ceil(trials / 3);
    console.log(`operating points (5 levels, Bonferroni): ${pointsCertified}/${5 * pointTrials} certified over ${pointTrials} trials, ${familyViolations} trials with any violation (allowed rate ${1 - confidence})`);
    expect(pointsCertified).toBeGreaterThan(2 * pointTrials);
    // 20 trials: a binomial 95% margin of about 0.13 above the allowed rate.
    expect(familyViolations / pointTrials).toBeLessThanOrEqual(1 - confidence + 0.13);
    console.log(`simulation: ${certified}/${trials} certified, ${violations} violations; with steps ${certifiedStepped}/${trials}, ${violationsStepped} violations; fitted drops ${certifiedFitted}/${trials}, ${violationsFitted} violations (allowed rate ${1 - confidence}); uncertified search: ${uncertifiedViolations} violations`);
    expect(certified).toBeGreaterThan(trials / 2);
    expect(certifiedStepped).toBeGreaterThanOrEqual(certified);
    // At most 1 - confidence, with room for Monte Carlo error (binomial 95% margin over 60 trials).
    expect(violations / trials).toBeLessThanOrEqual(1 - confidence + 0.08);
    expect(violationsStepped / trials).toBeLessThanOrEqual(1 - confidence + 0.08);
    expect(certifiedFitted).toBeGreaterThan(trials / 2);
    expect(violationsFitted / trials).toBeLessThanOrEqual(1 - confidence + 0.08);
    expect(uncertifiedViolations).toBeGreaterThan(violations);
  }, 400_000); // 120 searches: 80 s alone, twice that beside another test file
});

describe("ee-tool plan", () => {
  it("--points: operating points at several drops, each certified at its share of the error, in one model with every point's exits", () => {
    const out = path.join(work, "cnn.points.plan.json");
    const r = runCli(["plan", files.cnn.profile, "--points", "0.005,0.02", "--no-measure", "-o", out]);
    expect(r.code).toBe(0);
    const plan = JSON.parse(fs.readFileSync(out, "utf8")) as Plan;
    expect(validate(plan, planSchema)).toEqual([]);
    const op = plan.points!;
    expect(op.points.map((p) => p.maxDrop)).toEqual([0.005, 0.01, 0.02]);
    expect(op.default).toBe(1);
    expect(op.correction).toBe("bonferroni");
    expect(r.stderr).toMatch(/operating points: 3 in one model .*\(each at 0\.9833, bonferroni\)/);
    for (const [i, p] of op.points.entries()) {
      expect(p.thresholds.length).toBe(op.exits.length);
      expect(Object.keys(p.latency)).toEqual(["1"]);
      if (i !== op.default && p.thresholds.every((t) => t === null)) {
        // A point left as the model: nothing certified, and it would not have saved.
        expect(p.certificate).toBeNull();
        continue;
      }
      expect(p.certificate!.confidence).toBeCloseTo(1 - 0.05 / 3, 10);
      expect(p.certificate!.maxDrop).toBe(p.maxDrop);
      expect(p.certificate!.bound!).toBeLessThanOrEqual(p.maxDrop);
      // Every point kept saves in the points' model at the plan's batch.
      if (i !== op.default) expect(p.latency["1"]!.saving).toBeGreaterThan(0);
    }
    // The model holds every exit some point uses; the plan is its own point.
    const used = new Set(op.points.flatMap((p) => p.thresholds.flatMap((t, i) => (t === null ? [] : [op.exits[i]!.ramp]))));
    expect([...used].sort()).toEqual(op.exits.map((e) => e.ramp).sort());
    const own = op.points[op.default]!;
    for (const e of plan.exits) expect(own.thresholds[op.exits.findIndex((x) => x.ramp === e.ramp)]).toBe(e.threshold);
    expect(plan.certificate).toEqual(own.certificate);
    expect(plan.expected.saving).toBeCloseTo(own.latency["1"]!.saving, 10);
    // A looser point is at least as fast.
    expect(op.points[2]!.latency["1"]!.meanLatencyMs).toBeLessThanOrEqual(op.points[0]!.latency["1"]!.meanLatencyMs);
    expect(runCli(["plan", files.cnn.profile, "--points", "0.5,x", "-o", out]).stderr).toMatch(/--points must be a number, got 'x'/);
  });

  it("--points leaves out the slowest point with no saving, and its exits, until every point left saves", () => {
    // Exits 0-2; a point's latency: 10 (the model) + 1 per exit present - 4 per exit it uses.
    const at = (...js: number[]): number[] => [0, 1, 2].map((j) => (js.includes(j) ? 0.9 : Infinity));
    const pick = (config: number[]): LevelPick => {
      const best = { config, meanLatency: 0, drop: 0 };
      return { level: 0, found: { best, frontier: [best], evaluations: 1 }, chosen: best, certificate: null };
    };
    const saving = (c: number[], present: ReadonlySet<number>): number => {
      const used = c.filter((t) => t !== Infinity).length;
      return 1 - (10 + present.size - 4 * used) / 10;
    };
    // Every point saves with all three exits in the model (the one-exit point: 10 + 3 - 4 = 9).
    let picks = [pick(at(2)), pick(at(0, 1)), pick(at(0, 1, 2))];
    expect([...keepFasterPoints(picks, 1, 10, saving)].sort()).toEqual([0, 1, 2]);
    expect(picks.map((p) => p.chosen.config.filter((t) => t !== Infinity).length)).toEqual([1, 2, 3]);
    // A fourth exit that only the strict point uses: it costs 10 + 4 - 4 = 10, no saving. It becomes
    // the model (no exits, the model's latency) and its exit 3 leaves the model.
    const at4 = (...js: number[]): number[] => [0, 1, 2, 3].map((j) => (js.includes(j) ? 0.9 : Infinity));
    picks = [pick(at4(3)), pick(at4(0, 1)), pick(at4(0, 1, 2))];
    expect([...keepFasterPoints(picks, 1, 10, saving)].sort()).toEqual([0, 1, 2]);
    expect(picks[0]!.chosen.config.every((t) => t === Infinity)).toBe(true);
    expect(picks[0]!.chosen.meanLatency).toBe(10);
    expect(picks[2]!.chosen.config).toEqual(at4(0, 1, 2));
    // The plan's own point is kept whatever it saves; the others go.
    picks = [pick(at(0)), pick(at(1, 2))];
    expect([...keepFasterPoints(picks, 0, 10, () => -0.5)]).toEqual([0]);
    expect(picks[0]!.chosen.config).toEqual(at(0));
    expect(picks[1]!.chosen.config.every((t) => t === Infinity)).toBe(true);
  });

  it.each(["cnn", "text"] as const)("%s: certified plan within the constraint on held-back data; greedy baseline beside it", (name) => {
    const out = path.join(work, `${name}.plan.json`);
    const r = runCli(["plan", files[name].profile, "--max-drop", "0.01", "--frontier", "--no-measure", "-o", out]);
    expect(r.code).toBe(0);
    const plan = JSON.parse(fs.readFileSync(out, "utf8")) as Plan;
    console.log(`${name} plan:\n${r.stderr}`);
    expect(validate(plan, planSchema)).toEqual([]);
    expect(plan.exits.length).toBeGreaterThan(0);
    expect(plan.expected.saving).toBeGreaterThan(0);
    // A fifth of the scored samples tune (by content hash), the rest certify.
    expect(plan.settings.tuneFraction).toBe(0.2);
    expect(plan.data.tune / (plan.data.tune + plan.data.certify)).toBeGreaterThan(0.15);
    expect(plan.data.tune / (plan.data.tune + plan.data.certify)).toBeLessThan(0.25);
    expect(plan.certificate!.pValue).toBeLessThanOrEqual(0.05);
    expect(plan.certificate!.bound!).toBeLessThanOrEqual(0.01);
    // The frontier is Pareto in the drop the search saw (fitted); observed drops are reported beside it.
    plan.frontier!.slice(1).forEach((f, i) => {
      expect(f.dropSearched).toBeGreaterThanOrEqual(plan.frontier![i]!.dropSearched);
      expect(f.meanLatencyMs).toBeLessThan(plan.frontier![i]!.meanLatencyMs);
    });
    expect(plan.expected.dropCertify).toBeLessThanOrEqual(plan.certificate!.bound!);
    // By default the search sees fitted drops; seeing the same observed counts as Apparate's greedy
    // tuner, it does at least as well on the tuning data.
    expect(plan.settings.tuningDrop).toBe("fitted");
    const observedOut = path.join(work, `${name}.observed.plan.json`);
    expect(runCli(["plan", files[name].profile, "--max-drop", "0.01", "--tuning-drop", "observed", "--no-measure", "-o", observedOut, "-q"]).code).toBe(0);
    const observed = JSON.parse(fs.readFileSync(observedOut, "utf8")) as Plan;
    expect(observed.settings.tuningDrop).toBe("observed");
    expect(observed.searchBest.meanLatencyMs).toBeLessThanOrEqual(observed.greedy.meanLatencyMs + 1e-9);
    expect(observed.expected.dropTune).toBeLessThanOrEqual(0.01);
    expect(plan.frontier!.length).toBeGreaterThan(3);
    expect(plan.truncation.length).toBe(JSON.parse(fs.readFileSync(files[name].profile, "utf8")).ramps.length);
    expect(plan.truncation.at(-1)!.bytesNotLoaded).toBeGreaterThan(0);
    // Paths predicted from each exit timed in the runtime: one per exit and the no-exit path, each
    // exit's its firing cost plus what the earlier exits add; a truncated exit costs its firing cost.
    const prof = loadProfile(files[name].profile).profile;
    const costs = buildCosts(prof, 1);
    expect(plan.costModel.source).toBe("exits");
    const byDepth = [...prof.ramps].sort((a, b) => a.depth - b.depth).map((x) => x.id);
    const config = byDepth.map((id) => plan.exits.find((e) => e.ramp === id)?.threshold ?? Infinity);
    // Each exit priced at the plan's share of samples (tuning and held back) going past it.
    const n = plan.data.tune + plan.data.certify;
    const counts = byDepth.map((id) => {
      const e = plan.exits.find((x) => x.ramp === id);
      return e ? e.exitRateTune * plan.data.tune + e.exitRateCertify * plan.data.certify : 0;
    });
    const deeper = deeperShares(counts, n);
    const { atRamp, none } = exitCosts(costs, config, deeper);
    expect(plan.costModel.paths.map((x) => x.ramp)).toEqual([...plan.exits.map((e) => e.ramp), -1]);
    plan.exits.forEach((e, k) => expect(plan.costModel.paths[k]!.ms).toBeCloseTo(atRamp[byDepth.indexOf(e.ramp)]!, 9));
    expect(plan.costModel.paths.at(-1)!.ms).toBeCloseTo(none, 9);
    const first = byDepth.indexOf(plan.exits[0]!.ramp);
    expect(plan.costModel.paths[0]!.ms).toBeCloseTo((1 - deeper[first]!) * costs.fire[first]! + deeper[first]! * costs.fireAfter![first]!, 9);
    expect(plan.truncation.map((t) => t.latencyMs)).toEqual(byDepth.map((_, j) => costs.fire[j]));
    expect(plan.costModel.allExits!.measuredMs).toBe(prof.latency!["1"]!.allExits.p50);
    expect(plan.model.sha256).toMatch(/^[0-9a-f]{64}$/);
    expect(path.resolve(work, plan.model.file)).toBe(files[name].ee);
    // Reproducible: the same profile and options give the same bytes.
    const again = path.join(work, `${name}.again.plan.json`);
    expect(runCli(["plan", files[name].profile, "--max-drop", "0.01", "--frontier", "--no-measure", "-o", again]).code).toBe(0);
    expect(fs.readFileSync(again).equals(fs.readFileSync(out))).toBe(true);
  });

  it("against labels, other metrics", () => {
    const out = path.join(work, "labels.plan.json");
    for (const metric of ["margin", "entropy"]) {
      const r = runCli(["plan", files.text.profile, "--against", "labels", "--metric", metric, "--max-drop", "0.03", "--no-measure", "-o", out]);
      expect(r.code).toBe(0);
      const plan = JSON.parse(fs.readFileSync(out, "utf8")) as Plan;
      expect(plan.settings.against).toBe("labels");
      expect(plan.certificate!.method).toBe("bonferroni(binomial, hoeffding-bentkus)");
    }
  });

  it("keeps the model unchanged when no exit can pay for itself", async () => {
    const { planFromProfile } = await import("../src/plan/plan.js");
    const result = loadProfile(files.cnn.profile);
    // Every exit that does not fire costs ten times the model on top of it (and all of them
    // together, as the all-exits model measures them, what they add up to).
    for (const l of Object.values(result.profile.latency!)) {
      for (const e of l.exits!) e.adds = { ...l.model, p50: 10 * l.model.p50 };
      l.allExits = { ...l.allExits, p50: l.noExit!.p50 + l.exits!.length * 10 * l.model.p50 };
    }
    const plan = planFromProfile(result, { maxDrop: 0.01 });
    expect(plan.exits).toEqual([]);
    expect(plan.expected.saving).toBeCloseTo(0, 12);
    expect(plan.certificate).toBeNull();
  });

  it("measures the plan's paths in its runtime on the profile's calibration data: the expected latency from them at the plan's exit shares, the cost model's kept", () => {
    const modelledOut = path.join(work, "cnn.modelled.plan.json");
    const measuredOut = path.join(work, "cnn.measured.plan.json");
    // The profile names its data relative to itself; --no-measure keeps the cost model alone.
    const profJson = JSON.parse(fs.readFileSync(files.cnn.profile, "utf8")) as Profile;
    expect(profJson.settings.calibrationData).toBe(path.relative(path.dirname(files.cnn.profile), FIX("cnn/calib.npz")));
    expect(runCli(["plan", files.cnn.profile, "--max-drop", "0.01", "--no-measure", "-o", modelledOut, "-q"]).code).toBe(0);
    expect((JSON.parse(fs.readFileSync(modelledOut, "utf8")) as Plan).costModel.measured).toBeUndefined();
    const r = runCli(["plan", files.cnn.profile, "--max-drop", "0.01", "--measure-budget", "500", "-o", measuredOut]);
    expect(r.code).toBe(0);
    expect(r.stderr).toMatch(/paths measured in the plan's runtime \(x model, \d+ samples/);
    const modelled = JSON.parse(fs.readFileSync(modelledOut, "utf8")) as Plan;
    const plan = JSON.parse(fs.readFileSync(measuredOut, "utf8")) as Plan;
    expect(validate(plan, planSchema)).toEqual([]);
    // The plan records the threads its profile measured with (and measured its paths with them).
    expect(plan.profile.threads).toBe(threadsAt(profJson, plan.settings.batch));
    const m = plan.costModel.measured!;
    // The same exits; what the cost model alone predicted is kept beside the measurement.
    expect(plan.exits).toEqual(modelled.exits);
    expect(m.modelled.paths).toEqual(modelled.costModel.paths);
    expect(m.modelled.saving).toBeCloseTo(modelled.expected.saving, 12);
    // Only samples that did not fit the ramps, every path of the plan timed at least MIN_PATH_CALLS times.
    expect(m.samples).toBeGreaterThan(100);
    expect(m.paths.map((x) => x.ramp).sort()).toEqual(plan.costModel.paths.map((x) => x.ramp).sort());
    for (const x of m.paths) {
      expect(x.calls).toBeGreaterThanOrEqual(MIN_PATH_CALLS);
      // Timed in each of the three runtime sessions; the path's figure is the middle one.
      expect(x.sessions.length).toBe(3);
      expect(x.ratio).toBe([...x.sessions].sort((a, b) => a - b)[1]);
      expect(plan.costModel.paths.find((y) => y.ramp === x.ramp)!.ms).toBeCloseTo(x.ratio * plan.baselineMs, 12);
    }
    // An exit's path costs less than the model, the no-exit path more (it runs the ramps too).
    const none = m.paths.find((x) => x.ramp === -1)!.ratio;
    for (const x of m.paths) if (x.ramp >= 0) expect(x.ratio).toBeLessThan(none);
    expect(none).toBeGreaterThan(0.9);
    // The mean: each path's measured cost at its share of the tuning and certification samples.
    const n = plan.data.tune + plan.data.certify;
    const share = (ramp: number): number => {
      const e = plan.exits.find((x) => x.ramp === ramp);
      return e ? (e.exitRateTune * plan.data.tune + e.exitRateCertify * plan.data.certify) / n : 1 - plan.exits.reduce((a, x) => a + (x.exitRateTune * plan.data.tune + x.exitRateCertify * plan.data.certify) / n, 0);
    };
    // The mean: each path's plain mean against the model's plain mean (slow calls included on both
    // sides, as eval's saving has them) at its share of the tuning and certification samples.
    expect(m.modelTail!).toBeGreaterThanOrEqual(0.9);
    for (const x of m.paths) expect(x.meanRatio!).toBeGreaterThan(0);
    const mean = m.paths.reduce((a, x) => a + share(x.ramp) * x.meanRatio! * plan.baselineMs, 0);
    expect(plan.expected.meanLatencyMs).toBeCloseTo(mean, 9);
    expect(plan.expected.saving).toBeCloseTo(1 - mean / plan.baselineMs, 9);
    // Measured on another machine than the profile's: refused, in one line with a hint.
    const copy = tmpDir();
    const prof = JSON.parse(fs.readFileSync(files.cnn.profile, "utf8")) as Profile;
    prof.environment.cpu = "another processor";
    prof.model.file = path.relative(copy, path.resolve(path.dirname(files.cnn.profile), prof.model.file));
    prof.settings.calibrationData = path.relative(copy, FIX("cnn/calib.npz"));
    fs.writeFileSync(path.join(copy, "p.json"), JSON.stringify(prof));
    fs.copyFileSync(files.cnn.profile.replace(".json", ".bin"), path.join(copy, path.basename(files.cnn.profile.replace(".json", ".bin"))));
    const bad = runCli(["plan", path.join(copy, "p.json"), "--calib", FIX("cnn/calib.npz"), "-o", path.join(copy, "plan.json")]);
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toMatch(/PROFILE_MISMATCH\]: the profile was measured on another processor/);
    expect(bad.stderr).toMatch(/hint: Run plan where the profile ran/);
    expect(fs.existsSync(path.join(copy, "plan.json"))).toBe(false);
    // Not told where: on another machine, or where the profile's data has moved, the cost model
    // predicts alone and a note says why.
    const other = runCli(["plan", path.join(copy, "p.json"), "-o", path.join(copy, "plan.json")]);
    expect(other.code).toBe(0);
    expect(other.stderr).toMatch(/note: paths predicted by the cost model alone: the profile was measured on another processor/);
    prof.environment.cpu = profJson.environment.cpu;
    prof.settings.calibrationData = "elsewhere/calib.npz";
    fs.writeFileSync(path.join(copy, "p.json"), JSON.stringify(prof));
    const moved = runCli(["plan", path.join(copy, "p.json"), "-o", path.join(copy, "plan.json")]);
    expect(moved.code).toBe(0);
    expect(moved.stderr).toMatch(/note: paths predicted by the cost model alone: the profile's calibration data is not where it was \(.*calib\.npz\)/);
    expect((JSON.parse(fs.readFileSync(path.join(copy, "plan.json"), "utf8")) as Plan).costModel.measured).toBeUndefined();
    const both = runCli(["plan", files.cnn.profile, "--calib", FIX("cnn/calib.npz"), "--no-measure", "-o", path.join(copy, "x.json")]);
    expect(both.stderr).toMatch(/USAGE\]: --calib measures the plan's paths; --no-measure skips that/);
  }, 120_000);

  it("measures paths at batch > 1 in whole batches of samples that share an exit, every path in every session", async () => {
    const plan = planFromProfile(loadProfile(files.cnn.profile), { maxDrop: 0.01 });
    expect(plan.exits.length).toBeGreaterThan(0);
    const model = loadModel(files.cnn.ee);
    const data = openCalibration(FIX("cnn/calib.npz"), model.proto);
    const samples = Array.from({ length: 300 }, (_, i) => i);
    // Each sample's exit, in passes as the measurement finds them.
    const ee = await EarlyExitSession.fromPlan(plan, files.cnn.ee);
    const count = new Map<number, number>();
    try {
      for (let i = 0; i < samples.length; i += 64) {
        const r = await ee.run(data.passFeeds(samples.slice(i, i + 64)));
        for (const e of r.exits.slice(0, Math.min(64, samples.length - i))) count.set(e, (count.get(e) ?? 0) + 1);
      }
    } finally {
      await ee.release();
    }
    const batch = 4;
    const m = await measurePaths(plan, files.cnn.ee, data, samples, { batch, budgetMs: 200 });
    expect(m.batch).toBe(batch);
    expect(m.samples).toBe(samples.length);
    // Whole batches only: a path's distinct calls are its samples in fours, a path with fewer is not timed.
    const timed = [...count].filter(([, c]) => c >= batch).map(([e, c]) => [e, Math.floor(c / batch)]).sort((a, b) => a[0]! - b[0]!);
    expect(m.paths.map((x) => [x.ramp, x.distinct]).sort((a, b) => a[0]! - b[0]!)).toEqual(timed);
    expect(timed.length).toBeGreaterThan(1);
    for (const x of m.paths) {
      expect(x.calls).toBeGreaterThanOrEqual(MIN_PATH_CALLS);
      expect(x.sessions.length).toBe(3);
      expect(x.ratio).toBe([...x.sessions].sort((a, b) => a - b)[1]);
    }
    // Multiples of the model at the same batch: an exit's path below the path through all of it.
    const none = m.paths.find((x) => x.ramp === -1);
    if (none) for (const x of m.paths) if (x.ramp >= 0) expect(x.ratio).toBeLessThan(none.ratio);
    expect(m.modelMs).toBeGreaterThan(0);
  }, 60_000);

  it("a plan runs with the threads its profile measured with, unless the caller sets them or runs on another provider", () => {
    const one = { profile: { created: "", samples: 0, calibrationHash: "", ep: "cpu", threads: 1 } };
    const base = { optimization: "all", spinning: false };
    expect(planSettings(one)).toEqual({ ...base, threads: 1 });
    expect(planSettings(one, { optimization: "basic" })).toEqual({ ...base, optimization: "basic", threads: 1 });
    expect(planSettings(one, { threads: 2 })).toEqual({ ...base, threads: 2 });
    expect(planSettings(one, { ep: "webgpu" })).toEqual({ ...base, ep: "webgpu" });
    expect(planSettings({ profile: { ...one.profile, threads: null } })).toEqual(base);
    // Plans from before the field: onnxruntime's default.
    expect(planSettings({ profile: { created: "", samples: 0, calibrationHash: "", ep: "cpu" } })).toEqual(base);
  });

  it("explains infeasible constraints in one line with exit code 3, and refuses a changed model", () => {
    let r = runCli(["plan", files.cnn.profile, "--max-drop", "-0.1", "-o", path.join(work, "x.json")]);
    expect(r.code).toBe(3);
    expect(r.stderr).toMatch(/^ee-tool: error \[CONSTRAINT_INFEASIBLE\]: --max-drop -0.1 cannot be met/);
    r = runCli(["plan", files.cnn.profile, "--max-drop", "0.001", "--confidence", "0.999", "-o", path.join(work, "x.json")]);
    expect(r.code).toBe(3);
    expect(r.stderr).toMatch(/too few samples to certify .* at least 6905 are needed/);
    expect(r.stderr.trim().split("\n").length).toBe(2);
    r = runCli(["plan", files.cnn.profile, "--tune-fraction", "1", "-o", path.join(work, "x.json")]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/--tune-fraction must be between 0 and 1, got 1/);
    r = runCli(["plan", files.cnn.profile, "--tuning-drop", "smoothed", "-o", path.join(work, "x.json")]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/error \[USAGE\]: --tuning-drop must be fitted or observed, got 'smoothed'/);
    r = runCli(["plan", files.cnn.profile, "--tune-fraction", "0.999", "-o", path.join(work, "x.json")]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/error \[TOO_FEW_SAMPLES\]: --tune-fraction 0.999 leaves no samples on one side \(\d+ to tune, 0 to certify\)/);
    expect(r.stderr).toMatch(/hint: Choose a --tune-fraction that leaves samples on both sides/);
    expect(fs.existsSync(path.join(work, "x.json"))).toBe(false);
    const copy = tmpDir();
    fs.copyFileSync(files.cnn.profile, path.join(copy, "p.json"));
    fs.copyFileSync(files.cnn.profile.replace(".json", ".bin"), path.join(copy, path.basename(files.cnn.profile.replace(".json", ".bin"))));
    const modelRel = JSON.parse(fs.readFileSync(files.cnn.profile, "utf8")).model.file as string;
    fs.mkdirSync(path.dirname(path.join(copy, modelRel)), { recursive: true });
    const changed = fs.readFileSync(files.cnn.ee);
    changed[changed.length - 1] = changed[changed.length - 1]! ^ 1;
    fs.writeFileSync(path.join(copy, modelRel), changed);
    r = runCli(["plan", path.join(copy, "p.json"), "-o", path.join(copy, "plan.json")]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/MODEL_CHANGED.*has changed since it was profiled/);
  });
});

describe("ee-tool plan --emit", () => {
  it.each(["cnn", "text"] as const)("%s: stage, single and truncated models run in onnxruntime-node and onnxruntime-web with the plan's exit decisions", async (name) => {
    const { loadModel, serializeModel } = await import("../src/onnx/model.js");
    const { openCalibration } = await import("../src/data/calib.js");
    const { createSession, runSession } = await import("../src/ort/ort.js");
    const ortWeb = await import("onnxruntime-web");
    ortWeb.env.wasm.numThreads = 1;
    const dir = tmpDir();
    const planFile = path.join(dir, "plan.json");
    const r = runCli(["plan", files[name].profile, "--emit", "stages,single,truncated", "--out-dir", path.join(dir, "artifacts"), "--no-measure", "-o", planFile]);
    expect(r.code, r.stderr).toBe(0);
    const plan = JSON.parse(fs.readFileSync(planFile, "utf8")) as Plan;
    expect(validate(plan, planSchema)).toEqual([]);
    const art = plan.artifacts as {
      stages: { segments: Array<{ file: string; inputs: string[]; outputs: string[]; exit: { ramp: number; output: string; threshold: number } | null }> };
      single: { file: string };
      truncated: { file: string; ramp: number };
    };
    const model = loadModel(files[name].ee);
    const data = openCalibration(FIX(`${name}/eval.npz`), model.proto);
    const n = 60;
    const exits = [...plan.exits].sort((a, b) => a.stage - b.stage);
    // The plan's own simulation, from the augmented model's ramp outputs.
    const full = await createSession(serializeModel(model.proto));
    const expected: number[] = [];
    for (let i = 0; i < n; i++) {
      const out = await runSession(full, data.feeds(i, i + 1));
      const hit = exits.find((e) => scoreLogits(out[e.output]!.data as Float32Array, plan.model.classes, 0).maxprob >= e.threshold);
      expected.push(hit ? hit.ramp : -1);
    }
    await full.release();
    expect(new Set(expected).size).toBeGreaterThan(1);
    const webSession = async (file: string): Promise<{ run: (f: Record<string, unknown>) => Promise<Record<string, { data: ArrayLike<number | bigint> }>>; release: () => Promise<void> }> => {
      const s = await ortWeb.InferenceSession.create(new Uint8Array(fs.readFileSync(path.resolve(dir, file))), { executionProviders: ["wasm"] });
      return { run: (f) => s.run(f as never) as never, release: () => s.release() };
    };
    const nodeSession = async (file: string): Promise<{ run: (f: Record<string, unknown>) => Promise<Record<string, { data: ArrayLike<number | bigint> }>>; release: () => Promise<void> }> => {
      const s = await createSession(new Uint8Array(fs.readFileSync(path.resolve(dir, file))));
      return { run: (f) => s.run(f as never) as never, release: () => s.release() };
    };
    const toWeb = (f: Record<string, { type: string; data: unknown; dims: readonly number[] }>): Record<string, unknown> =>
      Object.fromEntries(Object.entries(f).map(([k, t]) => [k, new ortWeb.Tensor(t.type as "float32", t.data as Float32Array, t.dims)]));
    for (const [runtime, open, convert] of [["node", nodeSession, (f: Record<string, unknown>) => f], ["web", webSession, toWeb]] as const) {
      // single: one model, exits inside.
      const single = await open(art.single.file);
      const got: number[] = [];
      for (let i = 0; i < n; i++) got.push(Number((await single.run(convert(data.feeds(i, i + 1) as never)))["ee_exit"]!.data[0]));
      // A whole batch at once: each row takes its own first confident exit.
      const batch = (await single.run(convert(data.feeds(0, n) as never)))["ee_exit"]!.data;
      await single.release();
      expect(got, `${runtime} single`).toEqual(expected);
      expect(Array.from(batch, Number), `${runtime} single, batch of ${n}`).toEqual(expected);
      // stages: run segments in order, stop at the first confident ramp.
      const segs = [];
      for (const s of art.stages.segments) segs.push({ s, session: await open(s.file) });
      const byStages: number[] = [];
      for (let i = 0; i < n; i++) {
        const pool: Record<string, unknown> = { ...(convert(data.feeds(i, i + 1) as never)) };
        let taken = -1;
        for (const { s, session } of segs) {
          const out = await session.run(Object.fromEntries(s.inputs.map((k) => [k, pool[k]])));
          Object.assign(pool, out);
          if (s.exit && scoreLogits(Float32Array.from(out[s.exit.output]!.data as ArrayLike<number>), plan.model.classes, 0).maxprob >= s.exit.threshold) {
            taken = s.exit.ramp;
            break;
          }
        }
        byStages.push(taken);
      }
      for (const { session } of segs) await session.release();
      expect(byStages, `${runtime} stages`).toEqual(expected);
      // truncated: the deepest active ramp's logits.
      const trunc = await open(art.truncated.file);
      const t = await trunc.run(convert(data.feeds(0, 4) as never));
      await trunc.release();
      expect(Object.keys(t)).toEqual([exits.at(-1)!.output]);
    }
  }, 120_000);
});
