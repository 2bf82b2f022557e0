/**
 * `ee-tool eval`: the original model and the early-exit runtime on the same held-out inputs,
 * interleaved, with the same session options: measured accuracy drop, exit histogram and latency,
 * each beside the plan's prediction.
 */
import * as path from "node:path";
import * as fs from "node:fs";
import { planSettings, type Plan, type RuntimeForm } from "../plan/plan.js";
import { EarlyExitSession } from "../runtime/early-exit.js";
import { loadModel } from "../onnx/model.js";
import { checkBatch, openCalibration, openLabels } from "../data/calib.js";
import { declaredTypes, splitModel } from "../stages/split.js";
import { runtimeBytes, sessionsThatFit, type SessionSettings } from "../ort/ort.js";
import { createRunnable, type RunnableSession } from "../ort/sync.js";
import { summarize, type LatencyStats } from "../profile/timing.js";
import { checkModelHash } from "../plan/write.js";
import { EeToolError } from "../errors.js";
import { argmaxRows } from "../util/logits.js";
import { measureThroughput, type BatchThroughput } from "./throughput.js";

export interface EvalReport {
  plan: string;
  samples: number;
  batch: number;
  accuracy: {
    dropVsModel: number;
    dropVsLabels: number | null;
    modelAccuracy: number | null;
    earlyExitAccuracy: number | null;
    predictedDrop: number;
    maxDrop: number;
    against: "model" | "labels";
  };
  /**
   * Exit rates, and at batch 1 each path's latency: the median of the calls that took it, as a
   * multiple of the model's median, beside the plan's predicted multiple (null where the plan has
   * no prediction, or at larger batches, whose calls mix paths).
   */
  exits: Array<{ ramp: number; measured: number; predicted: number; path: { measured: number; predicted: number | null } | null }>;
  latency: {
    model: LatencyStats;
    earlyExit: LatencyStats;
    /**
     * Per session pair, in order: the model's median (ms per row; every call the same work, so a
     * session that ran off shows here) and the mean saving over the pair's blocks (the runtime's
     * calls mix paths, so only its saving against the model on the same samples compares).
     */
    sessions: { model: number[]; saving: number[] };
    saving: number;
    savingMedian: number;
    predicted: { meanMs: number; medianMs: number; baselineMs: number; saving: number; savingMedian: number };
  };
  /**
   * ep: the provider eval ran on; planEp: the one the plan's profile measured (they may differ).
   * sessions: how many sessions of the model and of the runtime the blocks of calls took turns in.
   */
  runtime: { direct: boolean; rowRemoval: boolean; optimizedGraph: boolean; ep: string; planEp: string; form: RuntimeForm; sessions: number;
    /** Intra-op threads both ran with (null: onnxruntime's default): the plan's unless the caller set them. */
    threads: number | null };
  /** With `throughput`: latency per row and rows per second at each batch size, three modes (throughput.ts). */
  throughput: BatchThroughput[] | null;
  /** `--assert`'s checks: failures holds the messages of those that failed. */
  assertions: { passed: boolean; failures: string[]; savingTolerance: number; checks: EvalCheck[] };
}

/** One assertion of eval: what was measured, the limit it is held to, and a sentence saying so. */
export interface EvalCheck {
  name: "accuracy drop" | "latency saving";
  passed: boolean;
  measured: number | null;
  limit: number;
  message: string;
}

export interface EvalOptions {
  data: string;
  labels?: string;
  batch?: number;
  settings?: SessionSettings;
  /** Allowed shortfall of the measured mean saving below the predicted one (absolute, e.g. 0.1). */
  savingTolerance?: number;
  warmup?: number;
  /**
   * Sessions of the model and of the runtime each (default EVAL_SESSIONS, fewer where they would
   * not fit in half the free memory); block k of calls runs in pair k mod sessions.
   */
  sessions?: number;
  /** Batch sizes at which to measure latency per row and throughput of the model, the runtime and release-early. */
  throughput?: number[];
  onProgress?: (phase: string, done: number, total: number) => void;
}

/** Calls per block of eval's interleaved timing. */
const EVAL_BLOCK = 16;

/**
 * Sessions of the model and of the runtime that eval's blocks take turns in. One session of a
 * graph can run 3-6% slow or fast against others of the same graph all along (profile.ts,
 * REFERENCE_SESSIONS); with one session each, that luck would move the measured saving by as
 * many points. Over three, each session's share is a third.
 */
export const EVAL_SESSIONS = 3;

export async function evaluatePlan(planPath: string, options: EvalOptions): Promise<EvalReport> {
  let plan: Plan;
  try {
    plan = JSON.parse(fs.readFileSync(planPath, "utf8")) as Plan;
  } catch (e) {
    throw new EeToolError(fs.existsSync(planPath) ? "PROFILE_INVALID" : "FILE_NOT_FOUND", `cannot read plan ${planPath}: ${(e as Error).message}`);
  }
  if (options.sessions !== undefined && !(Number.isInteger(options.sessions) && options.sessions >= 1)) throw new EeToolError("USAGE", `--sessions must be a positive integer, got ${options.sessions}`);
  const modelPath = path.resolve(path.dirname(planPath), plan.model.file);
  checkModelHash(modelPath, plan.model.sha256);
  const settings: SessionSettings = planSettings(plan, options.settings);
  const batch = options.batch ?? plan.settings.batch;
  const model = loadModel(modelPath);
  const data = openCalibration(options.data, model.proto);
  checkBatch(data.specs, batch, options.batch === undefined ? "the plan's batch" : "eval --batch");
  const labels = options.labels ? openLabels(options.labels, data.size) : undefined;
  const original = splitModel(model.proto, declaredTypes(model.proto)).original;
  const originalBytes = runtimeBytes(original, model.readExternal);
  // Each pair is a session of the model and one of the runtime, about twice the model's bytes each.
  const nSessions = options.sessions ?? sessionsThatFit(EVAL_SESSIONS, 4 * originalBytes.byteLength);
  const bases: RunnableSession[] = [];
  const ees: EarlyExitSession[] = [];
  const release = async (): Promise<void> => {
    for (const s of [...bases, ...ees]) await s.release();
  };
  try {
    for (let i = 0; i < nSessions; i++) {
      bases.push(await createRunnable(originalBytes, settings, [plan.model.output]));
      ees.push(await EarlyExitSession.fromPlan(plan, modelPath, settings));
    }
  } catch (e) {
    await release();
    throw e;
  }
  const base = bases[0]!;
  const ee = ees[0]!;
  const k = plan.model.classes;
  const n = data.size;
  const basePred = new Int32Array(n);
  const eePred = new Int32Array(n);
  const exits = new Int32Array(n);
  const tBase: number[] = [];
  const tEe: number[] = [];
  // The session each timed call ran in (its block's).
  const sessionOf: number[] = [];
  let throughput: BatchThroughput[] | null = null;
  try {
    // The warm-up calls shared out over the sessions (each gets at least one).
    const calls = Math.floor(n / batch);
    const warm = Math.max(nSessions, Math.min(options.warmup ?? 20, calls));
    for (let w = 0; w < warm; w++) {
      const f = data.feeds((w % calls) * batch, ((w % calls) + 1) * batch);
      await bases[w % nSessions]!.run(f, [plan.model.output]);
      await ees[w % nSessions]!.run(f);
    }
    // Blocks of calls: the model on a block, then the runtime on the same block (the order swaps
    // every block), each block after one untimed call of its session. Every timed call follows a
    // call of the same session, as on a server that runs one model (its weights in cache), and
    // both see the same stretch of the machine's drift. Blocks take turns in the sessions.
    const starts: number[] = [];
    for (let s = 0; s + batch <= n; s += batch) starts.push(s);
    for (let blk = 0; blk * EVAL_BLOCK < starts.length; blk++) {
      const block = starts.slice(blk * EVAL_BLOCK, (blk + 1) * EVAL_BLOCK);
      const base = bases[blk % nSessions]!;
      const ee = ees[blk % nSessions]!;
      for (const s of block) sessionOf[s / batch] = blk % nSessions;
      const runBase = async (): Promise<void> => {
        await base.run(data.feeds(block[0]!, block[0]! + batch), [plan.model.output]);
        for (const s of block) {
          const feeds = data.feeds(s, s + batch);
          const t0 = performance.now();
          const out = await base.run(feeds, [plan.model.output]);
          tBase[s / batch] = performance.now() - t0;
          basePred.set(argmaxRows(out[plan.model.output]!.data as Float32Array, batch, k), s);
        }
      };
      const runEe = async (): Promise<void> => {
        await ee.run(data.feeds(block[0]!, block[0]! + batch));
        for (const s of block) {
          const r = await ee.run(data.feeds(s, s + batch));
          tEe[s / batch] = r.timings.totalMs;
          eePred.set(argmaxRows(r.logits, batch, k), s);
          exits.set(r.exits, s);
        }
      };
      if (blk % 2 === 0) {
        await runBase();
        await runEe();
      } else {
        await runEe();
        await runBase();
      }
      options.onProgress?.("eval", Math.min(n, (block.at(-1)! + batch)), n);
    }
    if (options.throughput?.length) {
      for (const b of options.throughput) checkBatch(data.specs, b, "eval --throughput");
      throughput = await measureThroughput(plan, modelPath, data, options.throughput, base, ee, settings, options.onProgress);
    }
  } finally {
    await release();
  }
  const m = Math.floor(n / batch) * batch;
  let agree = 0;
  let baseRight = 0;
  let eeRight = 0;
  for (let i = 0; i < m; i++) {
    if (basePred[i] === eePred[i]) agree++;
    if (labels) {
      if (basePred[i] === labels[i]) baseRight++;
      if (eePred[i] === labels[i]) eeRight++;
    }
  }
  const per = (xs: number[]): number[] => xs.map((x) => x / batch);
  const baseStats = summarize(per(tBase), true);
  const early = summarize(per(tEe), true);
  const ofSession = (xs: number[], i: number): number[] => per(xs.filter((_, c) => sessionOf[c] === i));
  const sessions = {
    model: bases.map((_, i) => summarize(ofSession(tBase, i), true).p50),
    saving: bases.map((_, i) => 1 - summarize(ofSession(tEe, i), true).mean / summarize(ofSession(tBase, i), true).mean),
  };
  const dropVsModel = (m - agree) / m;
  const dropVsLabels = labels ? (baseRight - eeRight) / m : null;
  const against = plan.settings.against;
  const measuredDrop = against === "labels" ? dropVsLabels : dropVsModel;
  const saving = 1 - early.mean / baseStats.mean;
  const savingMedian = 1 - early.p50 / baseStats.p50;
  const tolerance = options.savingTolerance ?? 0.1;
  const p2 = (x: number): string => `${(x * 100).toFixed(2)}%`;
  const p1 = (x: number): string => `${(x * 100).toFixed(1)}%`;
  const dropOk = measuredDrop !== null && measuredDrop <= plan.settings.maxDrop + 1e-12;
  const savingOk = saving >= plan.expected.saving - tolerance;
  const checks: EvalCheck[] = [
    {
      name: "accuracy drop", passed: dropOk, measured: measuredDrop, limit: plan.settings.maxDrop,
      message: measuredDrop === null ? "the plan is against labels but no --labels were given"
        : dropOk ? `measured accuracy drop ${p2(measuredDrop)} is within the plan's maximum ${p2(plan.settings.maxDrop)} (against the ${against === "model" ? "model's predictions" : "labels"})`
        : `measured accuracy drop ${p2(measuredDrop)} exceeds the plan's maximum ${p2(plan.settings.maxDrop)}`,
    },
    {
      name: "latency saving", passed: savingOk, measured: saving, limit: plan.expected.saving - tolerance,
      message: savingOk ? `measured mean saving ${p1(saving)} is within ${(tolerance * 100).toFixed(0)} points of the predicted ${p1(plan.expected.saving)}`
        : `measured mean saving ${p1(saving)} falls short of the predicted ${p1(plan.expected.saving)} by more than ${(tolerance * 100).toFixed(0)} points`,
    },
  ];
  const failures = checks.filter((c) => !c.passed).map((c) => c.message);
  // At batch 1 each call took one path: its median against the model's, beside the plan's prediction.
  const pathOf = (ramp: number): { measured: number; predicted: number | null } | null => {
    const taken = tEe.filter((_, i) => exits[i] === ramp);
    if (batch !== 1 || taken.length === 0) return null;
    const predicted = plan.costModel?.paths.find((x) => x.ramp === ramp)?.ms;
    return { measured: summarize(taken, true).p50 / baseStats.p50, predicted: predicted === undefined ? null : predicted / plan.baselineMs };
  };
  const rampIds = [...plan.exits].sort((a, b) => a.stage - b.stage);
  return {
    plan: planPath,
    samples: m,
    batch,
    accuracy: {
      dropVsModel, dropVsLabels, modelAccuracy: labels ? baseRight / m : null, earlyExitAccuracy: labels ? eeRight / m : null,
      predictedDrop: plan.expected.dropCertify, maxDrop: plan.settings.maxDrop, against,
    },
    exits: [
      ...rampIds.map((e) => ({ ramp: e.ramp, measured: exits.subarray(0, m).filter((x) => x === e.ramp).length / m, predicted: e.exitRateCertify, path: pathOf(e.ramp) })),
      { ramp: -1, measured: exits.subarray(0, m).filter((x) => x === -1).length / m, predicted: 1 - rampIds.reduce((a, e) => a + e.exitRateCertify, 0), path: pathOf(-1) },
    ],
    latency: {
      model: baseStats, earlyExit: early, sessions, saving, savingMedian,
      predicted: { meanMs: plan.expected.meanLatencyMs, medianMs: plan.expected.medianLatencyMs, baselineMs: plan.baselineMs, saving: plan.expected.saving, savingMedian: plan.expected.savingMedian },
    },
    runtime: { direct: base.direct, rowRemoval: ee.rowRemoval, optimizedGraph: ee.optimizedGraph, ep: settings.ep ?? "cpu", planEp: plan.profile.ep ?? "cpu", form: ee.form, sessions: nSessions, threads: settings.threads ?? null },
    throughput,
    assertions: { passed: failures.length === 0, failures, savingTolerance: tolerance, checks },
  };
}
