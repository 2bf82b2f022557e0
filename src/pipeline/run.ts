/**
 * `ee-tool run`: insert, profile, plan, eval and report of one model into one output directory,
 * each step skipped when its inputs and settings are those of its record (cache.ts), ending with
 * the eval's verdict.
 *
 *   <out>/model.ee.onnx            insert
 *   <out>/profile.json, .bin       profile
 *   <out>/plan.json (+ artifacts)  plan
 *   <out>/eval.json                eval (the verdict: its assertions)
 *   <out>/report.html              report
 *   <out>/steps/<step>.json        what each step read, its settings, what it wrote
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { loadModel, saveModel } from "../onnx/model.js";
import { insertRamps } from "../ramps/insert.js";
import { asDecoder } from "../ramps/decoder-heads.js";
import { profileModel, writeProfile } from "../profile/profile.js";
import { loadProfile } from "../profile/merge.js";
import { planFromProfile, type Plan } from "../plan/plan.js";
import { writePlan } from "../emit/write.js";
import { evaluatePlan, type EvalReport } from "../eval/eval.js";
import { renderReport } from "../report/report.js";
import { writeBytesAtomic } from "../util/atomic.js";
import { EeToolError } from "../errors.js";
import { measurePlan } from "../eval/paths.js";
import type { SessionSettings } from "../ort/ort.js";
import type { RunConfig } from "./config.js";
import { dropRecord, externalDataFiles, hashDataFiles, hashModelFiles, machineFingerprint, stepKey, validRecord, writeRecord, type MachineFingerprint, type StepRecord } from "./cache.js";

export const STEPS = ["insert", "profile", "plan", "eval", "report"] as const;
export type StepName = (typeof STEPS)[number];

export interface StepEvent {
  step: StepName;
  /** start: about to run; ran: finished; cached: skipped, its record still holds. */
  status: "start" | "ran" | "cached";
  /** Why it runs although a record exists, or what a cached latency step was measured on. */
  note?: string;
  ms?: number;
  outputs?: string[];
}

export interface RunOptions {
  /** Redo every step, whatever the records say. */
  force?: boolean;
  onStep?: (e: StepEvent) => void;
  onProgress?: (phase: string, done: number, total: number) => void;
}

export interface RunResult {
  config: RunConfig;
  steps: Array<{ step: StepName; status: "ran" | "cached"; ms: number; note?: string; outputs: string[] }>;
  plan: Plan;
  eval: EvalReport;
  passed: boolean;
  failures: string[];
}

/** Which steps time the model, and so depend on the machine. */
const TIMED: ReadonlySet<StepName> = new Set(["profile", "eval"]);

function sameMachine(a: MachineFingerprint | null, b: MachineFingerprint): boolean {
  return a !== null && JSON.stringify(a) === JSON.stringify(b);
}

function describeMachine(m: MachineFingerprint): string {
  return `${m.cpu}, ${m.cores} cores, ${m.platform}, onnxruntime ${m.onnxruntime}, ${m.ep}`;
}

/** Every `file` entry of a plan's artifacts (paths relative to the plan). */
function artifactFiles(plan: Plan, planDir: string): string[] {
  const files: string[] = [];
  JSON.stringify(plan.artifacts ?? {}, (k, v: unknown) => {
    if (k === "file" && typeof v === "string") files.push(path.resolve(planDir, v));
    return v;
  });
  return [...new Set(files)].filter((f) => fs.existsSync(f));
}

export async function runPipeline(config: RunConfig, options: RunOptions = {}): Promise<RunResult> {
  if (asDecoder(loadModel(config.model)).layout) {
    throw new EeToolError("UNSUPPORTED", `ee-tool run takes classifiers; ${config.model} is a decoder LM`, {
      hint: "Run its steps one by one: ee-tool insert, profile, plan, then eval --prompts ids.npy [--text ids.npy] --assert (docs/decoders.md).",
    });
  }
  const out = config.out;
  try {
    fs.mkdirSync(out, { recursive: true });
  } catch (e) {
    throw new EeToolError("WRITE_FAILED", `cannot create ${out}: ${(e as Error).message}`);
  }
  const settings: SessionSettings = { ep: config.ep, ...(config.threads ? { threads: config.threads } : {}) };
  const machine = machineFingerprint(config.ep, config.threads ?? null);
  const onStep = options.onStep ?? (() => undefined);
  const progress = options.onProgress;
  const files = {
    ee: path.join(out, "model.ee.onnx"),
    profile: path.join(out, "profile.json"),
    plan: path.join(out, "plan.json"),
    eval: path.join(out, "eval.json"),
    report: path.join(out, "report.html"),
  };
  const steps: RunResult["steps"] = [];

  /** Run `body` unless the step's record holds; `body` returns the files it wrote, and may add a note on what it did. */
  const step = async (name: StepName, inputs: Record<string, string>, stepSettings: unknown, body: (addNote: (n: string) => void) => Promise<string[]>): Promise<void> => {
    const timed = TIMED.has(name) || (name === "plan" && config.plan.measure);
    const policy = config.cache.latency;
    const keyMachine = timed && policy !== "any-machine" ? machine : null;
    const key = stepKey(name, inputs, stepSettings, keyMachine);
    const fresh = options.force || (timed && policy === "never");
    const rec: StepRecord | undefined = fresh ? undefined : validRecord(out, name, key);
    if (rec) {
      const note = timed && rec.machine && !sameMachine(rec.machine, machine) ? `measured on another machine (${describeMachine(rec.machine)}); cache.latency is any-machine` : undefined;
      const outputs = Object.keys(rec.outputs).map((p) => path.join(out, p));
      steps.push({ step: name, status: "cached", ms: 0, ...(note ? { note } : {}), outputs });
      onStep({ step: name, status: "cached", ...(note ? { note } : {}), outputs });
      return;
    }
    let note: string | undefined;
    if (options.force) note = "--force";
    else if (timed && policy === "never") note = "cache.latency is never";
    else {
      const old = readRecordLoosely(out, name);
      if (old && timed && old.machine && !sameMachine(old.machine, machine) && stepKey(name, inputs, stepSettings, old.machine) === old.key) {
        note = `the cached result was measured on another machine (${describeMachine(old.machine)})`;
      }
    }
    onStep({ step: name, status: "start", ...(note ? { note } : {}) });
    dropRecord(out, name);
    const t0 = performance.now();
    const written = await body((n) => void (note = note ? `${note}; ${n}` : n));
    const ms = performance.now() - t0;
    writeRecord(out, { step: name, key, ms, inputs, settings: stepSettings, machine: timed ? machine : null }, written);
    steps.push({ step: name, status: "ran", ms, ...(note ? { note } : {}), outputs: written });
    onStep({ step: name, status: "ran", ms, ...(note ? { note } : {}), outputs: written });
  };

  const calibHashes = { ...hashDataFiles(config.calibration.data, "calibration"), ...(config.calibration.labels ? hashDataFiles(config.calibration.labels, "calibration labels") : {}) };

  await step("insert", { ...hashModelFiles(config.model, "model"), ...calibHashes }, { ...config.insert, labels: Boolean(config.calibration.labels), ep: config.ep, threads: config.threads ?? null }, async () => {
    const result = await insertRamps(loadModel(config.model), {
      calib: config.calibration.data, ...(config.calibration.labels ? { labels: config.calibration.labels } : {}),
      exits: config.insert.exits, ramp: config.insert.ramp, pool: config.insert.pool, hidden: config.insert.hidden,
      ...(config.insert.output ? { output: config.insert.output } : {}), seed: config.insert.seed, fitFraction: config.insert.fitFraction,
      settings, ...(progress ? { onProgress: progress } : {}),
    });
    const saved = saveModel(result.model, files.ee);
    return [saved.path, ...externalDataFiles(saved.path)];
  });

  await step("profile", { ...hashModelFiles(files.ee, "model.ee.onnx"), ...calibHashes }, { ...config.profile, ep: config.ep, threads: config.threads ?? null }, async () => {
    const result = await profileModel(loadModel(files.ee), {
      calib: config.calibration.data, ...(config.calibration.labels ? { labels: config.calibration.labels } : {}),
      batches: config.profile.batches, budgetMs: config.profile.budgetMs, settings, ...(progress ? { onProgress: progress } : {}),
    });
    const w = writeProfile(files.profile, result, files.ee);
    return [w.json, w.sidecar];
  });

  const planSettings = { maxDrop: config.maxDrop, against: config.against, batch: config.batch, ...config.plan };
  // Measuring the chosen plan's paths (measurePlan) reads the profile's calibration data and times the model.
  const planInputs = { ...hashDataFiles(files.profile, "profile.json"), ...hashDataFiles(files.profile.replace(/\.json$/, ".bin"), "profile.bin"), ...hashModelFiles(files.ee, "model.ee.onnx"), ...(config.plan.measure ? calibHashes : {}) };
  await step("plan", planInputs, planSettings, async (addNote) => {
    const profiled = loadProfile(files.profile);
    const chosen = planFromProfile(profiled, {
      maxDrop: config.maxDrop, against: config.against, batch: config.batch, metric: config.plan.metric,
      confidence: config.plan.confidence, tuneFraction: config.plan.tuneFraction, frontier: true,
      ...(config.plan.points ? { points: config.plan.points } : {}),
    });
    const measured = config.plan.measure
      ? await measurePlan(chosen, profiled.profile, files.profile, files.ee, { budgetMs: config.plan.measureBudgetMs, ...(progress ? { onProgress: progress } : {}) })
      : { plan: chosen };
    if (measured.note) addNote(measured.note);
    const written = await writePlan(measured.plan, files.plan, files.ee, { emit: config.plan.emit });
    return [files.plan, ...artifactFiles(written, out)];
  });
  const plan = JSON.parse(fs.readFileSync(files.plan, "utf8")) as Plan;

  const evalSettings = { batch: config.batch, savingTolerance: config.eval.savingTolerance, labels: Boolean(config.evaluation.labels), ep: config.ep, threads: config.threads ?? null };
  const evalInputs = { ...hashDataFiles(files.plan, "plan.json"), ...hashModelFiles(files.ee, "model.ee.onnx"), ...hashDataFiles(config.evaluation.data, "evaluation"), ...(config.evaluation.labels ? hashDataFiles(config.evaluation.labels, "evaluation labels") : {}) };
  await step("eval", evalInputs, evalSettings, async () => {
    const report = await evaluatePlan(files.plan, {
      data: config.evaluation.data, ...(config.evaluation.labels ? { labels: config.evaluation.labels } : {}), batch: config.batch,
      settings, savingTolerance: config.eval.savingTolerance, ...(progress ? { onProgress: progress } : {}),
    });
    // Paths relative to the output directory, so that a cached eval.json reads the same anywhere.
    writeBytesAtomic(files.eval, JSON.stringify({ ...report, plan: path.relative(out, report.plan) }, null, 1) + "\n");
    return [files.eval];
  });
  const evalReport = JSON.parse(fs.readFileSync(files.eval, "utf8")) as EvalReport;

  if (config.report) {
    await step("report", { ...hashDataFiles(files.profile, "profile.json"), ...hashDataFiles(files.profile.replace(/\.json$/, ".bin"), "profile.bin"), ...hashDataFiles(files.plan, "plan.json") }, {}, async () => {
      writeBytesAtomic(files.report, renderReport(loadProfile(files.profile), plan));
      return [files.report];
    });
  }
  return { config, steps, plan, eval: evalReport, passed: evalReport.assertions.passed, failures: evalReport.assertions.failures };
}

function readRecordLoosely(outDir: string, step: string): StepRecord | undefined {
  try {
    return JSON.parse(fs.readFileSync(path.join(outDir, "steps", `${step}.json`), "utf8")) as StepRecord;
  } catch {
    return undefined;
  }
}
