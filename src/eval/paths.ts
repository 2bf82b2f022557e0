/**
 * A plan's exit paths measured as its runtime runs them (`plan --calib`): the plan's
 * EarlyExitSession and the original model on the same inputs, interleaved in blocks of calls as
 * eval times them, each path's calls taken as multiples of the model's median in their own block.
 *
 * Why: the cost model adds up pieces timed one call at a time (each exit alone, after a call of
 * its own path or of the whole model). In a stream whose calls mix paths, onnxruntime's sessions
 * run slower than those pieces say (the ViT fixture's no-exit path 4-21% above its prediction in
 * every run; docs/profile.md), and a search that picks the cheapest exits from noisy costs picks
 * those that came out cheap by chance. Timing the chosen plan itself in such a stream, on
 * samples apart from those eval will use, measures what its paths cost.
 *
 * At batch B > 1 every timed call holds B samples that take the same exit (found by a first
 * pass), so each path is timed as a whole batch; a path with fewer than B samples is not timed.
 * Calls of all paths are shuffled together (a seeded shuffle), so a path's call follows one of
 * another path about as often as in a mixed stream.
 */
import * as os from "node:os";
import * as path from "node:path";
import { createHash } from "node:crypto";
import { planSettings, withMeasuredPaths, type MeasuredPaths, type Plan } from "../plan/plan.js";
import type { Profile } from "../profile/profile.js";
import { checkModelHash } from "../plan/write.js";
import { missingDataFiles, openCalibration, relocateDataArg } from "../data/calib.js";
import { readRampMetadata, unpackHashes } from "../ramps/metadata.js";
import { EeToolError } from "../errors.js";
import { EarlyExitSession } from "../runtime/early-exit.js";
import { loadModel } from "../onnx/model.js";
import type { CalibrationSet } from "../data/calib.js";
import { declaredTypes, splitModel } from "../stages/split.js";
import { runtimeBytes, sessionsThatFit, type SessionSettings } from "../ort/ort.js";
import { createRunnable, type RunnableSession } from "../ort/sync.js";
import { Rng } from "../util/rng.js";
import { mean, median } from "../util/stats.js";

/** Calls per block (as eval's). */
const BLOCK = 16;
/** Sessions of the model and of the runtime the blocks take turns in (as eval's). */
const SESSIONS = 3;
/**
 * Each path is timed in at least this many calls (its batches repeated where it has fewer), about
 * 160 in each session, whatever the budget. With 96 (32 per session) the 8 s budget gave a
 * ResNet-18's paths 120-260 calls at batch 8, and their figures came out up to 8% off a long
 * check; with 430-900 calls, within 3% (docs/profile.md, Measured paths on models that are not
 * fixtures). At batch 1 the budget gives the common paths more.
 */
export const MIN_PATH_CALLS = 480;

export interface MeasurePathsOptions {
  batch?: number;
  settings?: SessionSettings;
  /** Time for the timed blocks after a warm-up pass, ms (default 8000); every path gets MIN_PATH_CALLS calls first. */
  budgetMs?: number;
  seed?: number;
  onProgress?: (phase: string, done: number, total: number) => void;
}

/** Time for plan's timed calls after a warm-up (ms): paths within 1-6% of eval's on the fixtures (docs/plan.md). */
export const DEFAULT_MEASURE_BUDGET_MS = 8000;


/** The mean of the middle 80%: a path's expected time without a busy machine's outliers. */
export function centralMean(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return mean(s.slice(Math.floor(s.length * 0.1), Math.ceil(s.length * 0.9)));
}

/** Measure the plan's paths on `samples` (indices into `data`). */
export async function measurePaths(plan: Plan, modelPath: string, data: CalibrationSet, samples: readonly number[], options: MeasurePathsOptions = {}): Promise<MeasuredPaths> {
  const batch = options.batch ?? plan.settings.batch;
  const budgetMs = options.budgetMs ?? DEFAULT_MEASURE_BUDGET_MS;
  const settings: SessionSettings = planSettings(plan, options.settings);
  const model = loadModel(modelPath);
  const originalBytes = runtimeBytes(splitModel(model.proto, declaredTypes(model.proto)).original, model.readExternal);
  const n = sessionsThatFit(SESSIONS, 4 * originalBytes.byteLength);
  const bases: RunnableSession[] = [];
  const ees: EarlyExitSession[] = [];
  const t0 = performance.now();
  try {
    for (let k = 0; k < n; k++) {
      bases.push(await createRunnable(originalBytes, settings, [plan.model.output]));
      ees.push(await EarlyExitSession.fromPlan(plan, modelPath, settings));
    }
    // The exit of every sample, then batches of samples that share one.
    const groups = new Map<number, number[]>();
    // In passes of the data's batch (a model that fixes its batch size gets padded rows, not read).
    const pass = data.passBatch(64);
    for (let i = 0; i < samples.length; i += pass) {
      const idx = samples.slice(i, i + pass);
      const r = await ees[0]!.run(data.passFeeds(idx));
      idx.forEach((s, k) => {
        const e = r.exits[k]!;
        if (!groups.has(e)) groups.set(e, []);
        groups.get(e)!.push(s);
      });
    }
    const calls: Array<{ exit: number; idx: number[] }> = [];
    const distinct = new Map<number, number>();
    for (const [exit, ss] of groups) {
      const own: Array<{ exit: number; idx: number[] }> = [];
      for (let i = 0; i + batch <= ss.length; i += batch) own.push({ exit, idx: ss.slice(i, i + batch) });
      distinct.set(exit, own.length);
      for (let k = 0; own.length && k < Math.max(own.length, MIN_PATH_CALLS); k++) calls.push(own[k % own.length]!);
    }
    const rng = new Rng(options.seed ?? 1);
    const order = Array.from(rng.permutation(calls.length), (i) => calls[i]!);
    const blocks: Array<typeof order> = [];
    for (let i = 0; i < order.length; i += BLOCK) blocks.push(order.slice(i, i + BLOCK));
    // Each path's calls per runtime session: one session of a graph can run well off the others
    // all along, so a path's figure is the middle of its sessions' figures (as bench/exit-paths.mjs
    // checks it) rather than a pool that one slow session pulls up.
    const byExit = new Map<number, number[][]>();
    const modelMs: number[] = [];
    /** Each timed model call over its block's median: their plain mean is the model's slow-call share. */
    const modelRel: number[] = [];
    const start = performance.now();
    // A warm-up pass over the first blocks, then blocks in turn until every call was timed once and
    // the budget is spent; each round of the blocks moves them to the next sessions, so that every
    // block (and the rare paths in it) is timed in every session.
    const warm = Math.min(blocks.length, 2 * n);
    for (let b = 0; b < warm + blocks.length || performance.now() - start < budgetMs; b++) {
      const block = blocks[b % blocks.length]!;
      const round = Math.floor(b / blocks.length);
      const base = bases[(b + round) % n]!;
      const session = (b + 2 * round) % n;
      const ee = ees[session]!;
      const tModel: number[] = [];
      const tEe: Array<{ exit: number; ms: number }> = [];
      const runModel = async (): Promise<void> => {
        await base.run(data.feedsFor(block[0]!.idx), [plan.model.output]);
        for (const c of block) {
          const feeds = data.feedsFor(c.idx);
          const s = performance.now();
          await base.run(feeds, [plan.model.output]);
          tModel.push(performance.now() - s);
        }
      };
      const runEe = async (): Promise<void> => {
        await ee.run(data.feedsFor(block[0]!.idx));
        for (const c of block) {
          const r = await ee.run(data.feedsFor(c.idx));
          tEe.push({ exit: c.exit, ms: r.timings.totalMs });
        }
      };
      if (b % 2 === 0) {
        await runModel();
        await runEe();
      } else {
        await runEe();
        await runModel();
      }
      options.onProgress?.("paths", Math.min(b + 1, warm + blocks.length), warm + blocks.length);
      if (b < warm) continue;
      const ref = median(tModel);
      modelMs.push(...tModel);
      for (const t of tModel) modelRel.push(t / ref);
      for (const x of tEe) {
        if (!byExit.has(x.exit)) byExit.set(x.exit, Array.from({ length: n }, () => []));
        byExit.get(x.exit)![session]!.push(x.ms / ref);
      }
    }
    const modelTail = mean(modelRel);
    const paths = [...byExit].map(([ramp, per]) => {
      const timed = per.filter((xs) => xs.length);
      const sessions = timed.map(centralMean);
      return { ramp, calls: per.reduce((a, xs) => a + xs.length, 0), distinct: distinct.get(ramp)!, ratio: median(sessions), meanRatio: median(timed.map(mean)) / modelTail, sessions };
    })
      .sort((a, b) => (a.ramp < 0 ? 1e9 : a.ramp) - (b.ramp < 0 ? 1e9 : b.ramp));
    return {
      batch, samples: samples.length, modelMs: median(modelMs) / batch, modelTail, paths,
      budgetMs, elapsedMs: performance.now() - t0,
    };
  } finally {
    for (const s of [...ees, ...bases]) await s.release();
  }
}

/** Samples of the data measured at most (evenly spread over the file). */
const MAX_SAMPLES = 4096;

/** Why this machine cannot measure paths for the profile's figures (another processor or platform), or null. */
export function machineMismatch(profile: Profile): string | null {
  const cpu = os.cpus()[0]?.model ?? "unknown";
  const env = profile.environment;
  if (env.cpu === cpu && env.platform === `${process.platform}-${process.arch}`) return null;
  return `the profile was measured on ${env.cpu} (${env.platform}); this machine is ${cpu} (${process.platform}-${process.arch})`;
}

/**
 * Where plan measures the chosen plan's paths when not told (`--calib`): the profile's own
 * calibration data, where the profile names it, its files are there and this is the profile's
 * machine; otherwise why not (plan then predicts from the cost model alone, and says so).
 */
export function profileData(profile: Profile, profileFile: string): { data: string } | { why: string } {
  const arg = profile.settings.calibrationData;
  if (arg === undefined) return { why: "the profile does not name its calibration data (an older profile)" };
  const data = relocateDataArg(arg, (f) => path.resolve(path.dirname(profileFile), f));
  const missing = missingDataFiles(data);
  if (missing.length) return { why: `the profile's calibration data is not where it was (${missing.join(", ")})` };
  const other = machineMismatch(profile);
  return other ? { why: other } : { data };
}

export interface MeasurePlanOptions {
  /** Time for the timed calls after a warm-up (ms). */
  budgetMs: number;
  /** The data must be the one the profile scored (its settings.calibrationHash): refused with CALIB_MISMATCH otherwise. */
  calibrationHash?: string;
  onProgress?: MeasurePathsOptions["onProgress"];
}

/**
 * `plan --calib`: the plan with its paths measured on this machine (withMeasuredPaths), on the
 * samples of `dataPath` that did not fit the ramps, at most MAX_SAMPLES of them. Refused where
 * the profile measured another processor or provider: the plan's figures are for that one.
 */
export async function measurePlanPaths(plan: Plan, profile: Profile, modelPath: string, dataPath: string, options: MeasurePlanOptions): Promise<Plan> {
  const { budgetMs } = options;
  if (!(budgetMs >= 0)) throw new EeToolError("USAGE", `--measure-budget must be a number of milliseconds, got ${budgetMs}`);
  checkModelHash(modelPath, plan.model.sha256);
  const other = machineMismatch(profile);
  if (other) throw new EeToolError("PROFILE_MISMATCH", other, { hint: "Run plan where the profile ran (its paths are measured on this machine), or plan with --no-measure." });
  const model = loadModel(modelPath);
  const data = openCalibration(dataPath, model.proto);
  const fitted = unpackHashes(readRampMetadata(model.proto)?.calibration.fitHashes ?? "");
  const hashes = data.sampleHashes();
  if (options.calibrationHash !== undefined && createHash("sha256").update(hashes.join("")).digest("hex") !== options.calibrationHash) {
    throw new EeToolError("CALIB_MISMATCH", `${dataPath} has changed since the profile scored it`);
  }
  const free = Array.from({ length: data.size }, (_, i) => i).filter((i) => !fitted.has(hashes[i]!));
  const step = Math.max(1, free.length / MAX_SAMPLES);
  const samples = Array.from({ length: Math.min(free.length, MAX_SAMPLES) }, (_, k) => free[Math.floor(k * step)]!);
  if (samples.length < plan.settings.batch) throw new EeToolError("TOO_FEW_SAMPLES", `${dataPath} has ${samples.length} samples that did not fit the ramps; measuring the paths at batch ${plan.settings.batch} needs at least that many`);
  const env = profile.environment;
  // On the profile's provider; the threads are the plan's (measurePaths: planSettings).
  const settings: SessionSettings = env.executionProvider !== "cpu" ? { ep: env.executionProvider } : {};
  const m = await measurePaths(plan, modelPath, data, samples, { budgetMs, settings, ...(options.onProgress ? { onProgress: options.onProgress } : {}) });
  return withMeasuredPaths(plan, m);
}

/** What stops plan measuring on the profile's own data without failing the plan: the cost model predicts instead. */
const UNMEASURABLE: ReadonlySet<string> = new Set(["CALIB_MISMATCH", "CALIB_INVALID", "TOO_FEW_SAMPLES", "FILE_NOT_FOUND"]);

/**
 * plan's measurement (docs/plan.md): the chosen plan's paths measured on `data` where given (its
 * failures are errors), else on the profile's own calibration data where that can be done here
 * (profileData); where it cannot, the plan as the cost model predicts it and a note saying why.
 * A plan without exits has one path, the model, and is returned as it is.
 */
export async function measurePlan(plan: Plan, profile: Profile, profileFile: string, modelPath: string, options: MeasurePlanOptions & { data?: string }): Promise<{ plan: Plan; note?: string }> {
  const { data, ...rest } = options;
  if (data !== undefined) return { plan: await measurePlanPaths(plan, profile, modelPath, data, rest) };
  if (!plan.exits.length) return { plan };
  const found = profileData(profile, profileFile);
  if ("why" in found) return { plan, note: `paths predicted by the cost model alone: ${found.why}` };
  try {
    return { plan: await measurePlanPaths(plan, profile, modelPath, found.data, { ...rest, calibrationHash: profile.settings.calibrationHash }) };
  } catch (e) {
    if (!(e instanceof EeToolError) || !UNMEASURABLE.has(e.code)) throw e;
    return { plan, note: `paths predicted by the cost model alone: the profile's calibration data cannot measure them (${e.message})` };
  }
}
