import type { Command } from "commander";
import * as path from "node:path";
import { loadProfile } from "../profile/merge.js";
import { DEFAULT_POINT_LEVELS, DEFAULT_TUNE_FRACTION, planFromProfile, pointBoundText, type Plan, type SearchMethod, type TuningDrop } from "../plan/plan.js";
import { writePlan } from "../emit/write.js";
import { THRESHOLDS_INPUT } from "../stages/exit-graph.js";
import { EeToolError } from "../errors.js";
import { classifierOnlyNote, info, out } from "./io.js";
import { table } from "./format.js";
import type { Against, Metric } from "../plan/problem.js";
import { loadDecoderSamples, planDecoder, readDecoderProfileFile } from "../plan/decoder.js";
import { writeDecoderPlan } from "../emit/decoder.js";
import { renderDecoderPlan } from "./decoder.js";
import { DEFAULT_MEASURE_BUDGET_MS, measurePlan } from "../eval/paths.js";
import type { Profile } from "../profile/profile.js";
import { progressBars } from "./progress.js";

interface PlanCliOptions {
  out: string;
  maxDrop: string;
  against: string;
  metric: string;
  batch: string;
  confidence: string;
  tuneFraction: string;
  tuningDrop: string;
  search: string;
  levels: string;
  frontier?: boolean;
  points?: string | boolean;
  emit?: string;
  outDir?: string;
  json?: boolean;
  kvMode: string;
  calib?: string;
  measureBudget: string;
  measure: boolean;
}

function num(name: string, v: string): number {
  const n = Number(v);
  if (!Number.isFinite(n)) throw new EeToolError("USAGE", `${name} must be a number, got '${v}'`);
  return n;
}

function pct(x: number): string {
  return `${(x * 100).toFixed(2)}%`;
}

export function renderPlan(p: Plan): string {
  const lines: string[] = [];
  if (p.exits.length === 0) lines.push("no exit configuration is faster than the model under this constraint: the plan keeps the model unchanged");
  lines.push(`plan: ${p.exits.length} exits, max drop ${pct(p.settings.maxDrop)} against the ${p.settings.against === "model" ? "model's predictions" : "labels"}, metric ${p.settings.metric}, batch ${p.settings.batch}`);
  lines.push(table([
    ["ramp", "stage", "threshold", "exit rate (tune)", "exit rate (certify)"],
    ...p.exits.map((e) => [String(e.ramp), String(e.stage), e.threshold.toFixed(4), pct(e.exitRateTune), pct(e.exitRateCertify)]),
  ]));
  const e = p.expected;
  lines.push(`expected latency: mean ${e.meanLatencyMs.toFixed(3)} ms, median ${e.medianLatencyMs.toFixed(3)} ms vs ${p.baselineMs.toFixed(3)} ms: saving ${pct(e.saving)} (median ${pct(e.savingMedian)})`);
  if (p.runtime) lines.push(`runtime form: ${p.runtime.form} (all exits active, none firing: one call ${p.runtime.oneCallMs.toFixed(3)} ms, one call per segment ${p.runtime.segmentsMs.toFixed(3)} ms, on ${p.profile.ep})`);
  const cm = p.costModel;
  if (cm) {
    const paths = cm.paths.map((x) => `${x.ramp < 0 ? "no exit" : `exit ${x.ramp}`} ${(x.ms / p.baselineMs).toFixed(3)}`).join(", ");
    const source = cm.source === "exits" ? "from each exit timed in the runtime" : cm.source === "segments" ? "from the stages and ramps timed alone (the segments form)" : "from stage prefixes (an older profile: profile again for per-exit timings)";
    const m = cm.measured;
    if (m) {
      const modelled = m.modelled.paths.map((x) => `${x.ramp < 0 ? "no exit" : `exit ${x.ramp}`} ${(x.ms / p.baselineMs).toFixed(3)}`).join(", ");
      lines.push(`paths measured in the plan's runtime (x model, ${m.samples} samples, ${(m.elapsedMs / 1000).toFixed(1)} s): ${paths}; the saving above is from them (the cost model alone: ${pct(m.modelled.saving)})`);
      lines.push(`cost model's paths (x model): ${modelled}; ${source}`);
    } else lines.push(`predicted paths (x model): ${paths}; ${source}`);
    if (cm.allExits) {
      const off = cm.allExits.measuredMs / cm.allExits.predictedMs - 1;
      const shift = cm.allExits.shiftMs;
      const moved = shift !== undefined ? `; each exit's cost moved by ${shift >= 0 ? "+" : ""}${(shift * 1000).toFixed(1)} µs to add up to it` : "";
      lines.push(`${Math.abs(off) > 0.05 ? "warning: " : ""}all exits active and none firing measured ${pct(Math.abs(off))} ${off >= 0 ? "above" : "below"} the exits' costs added up${moved}${Math.abs(off) > 0.05 ? ": the profile's reference session ran off, or the exits' costs overlap; eval measures the paths" : ""}`);
    }
  }
  lines.push(`accuracy drop: ${pct(e.dropTune)} on the ${p.data.tune} tuning samples, ${pct(e.dropCertify)} on the ${p.data.certify} held-back samples`);
  if (p.certificate) {
    const c = p.certificate;
    lines.push(`certified: true drop <= ${pct(c.maxDrop)} with probability ${c.confidence} (${c.method} p-value ${c.pValue.toExponential(2)}${c.bound !== null ? `, ${c.confidence * 100}% upper bound ${pct(c.bound)}` : ""}, n=${c.n})`);
  } else lines.push(p.exits.length ? "not certified (--confidence 0)" : "nothing to certify");
  const g = p.greedy;
  const s = p.searchBest;
  const seen = p.settings.tuningDrop === "fitted" ? ", on fitted tuning drops" : "";
  lines.push(`search (${p.settings.search}${seen}) before certification: saving ${pct(s.saving)}, drop ${pct(s.dropTune)} tuning / ${pct(s.dropCertify)} held back`);
  lines.push(`greedy baseline (Apparate): ${g.exits.length} exits, saving ${pct(g.saving)}, drop ${pct(g.dropTune)} tuning / ${pct(g.dropCertify)} held back`);
  if (p.points) {
    const op = p.points;
    const batches = Object.keys(op.points[0]?.latency ?? {});
    lines.push(`operating points: ${op.points.length} in one model with exits at ramps ${op.exits.map((e) => e.ramp).join(", ") || "none"}; all certified together with probability ${op.confidence} (each at ${(1 - (1 - op.confidence) / op.points.length).toFixed(4)}, ${op.correction}); feed ${THRESHOLDS_INPUT} to switch`);
    lines.push(table([
      ["point", "max drop", "held-back drop", "bound", ...batches.map((b) => `saving @${b}`), "thresholds"],
      ...op.points.map((pt, i) => [`${i}${i === op.default ? " (plan)" : ""}`, pct(pt.maxDrop), pct(pt.dropCertify), pointBoundText(pt, pct),
        ...batches.map((b) => pct(pt.latency[b]!.saving)), pt.thresholds.map((t) => (t === null ? "off" : t.toFixed(3))).join(" ")]),
    ]));
  }
  return lines.join("\n");
}

/**
 * The plan with its paths measured (measurePlan: on --calib's data, or by default on the profile's
 * own), with progress bars; --no-measure keeps the cost model's figures.
 */
async function measured(plan: Plan, profile: Profile, file: string, modelPath: string, opts: PlanCliOptions): Promise<Plan> {
  const budgetMs = num("--measure-budget", opts.measureBudget);
  if (!opts.measure) {
    if (opts.calib !== undefined) throw new EeToolError("USAGE", "--calib measures the plan's paths; --no-measure skips that: give one of them");
    return plan;
  }
  const bars = progressBars();
  try {
    const r = await measurePlan(plan, profile, file, modelPath, { budgetMs, ...(opts.calib !== undefined ? { data: opts.calib } : {}), onProgress: (phase, done, total) => bars.update(phase, done, total) });
    bars.stop();
    if (r.note) info(`note: ${r.note}; --calib <data> measures them in the plan's runtime (docs/plan.md)`);
    return r.plan;
  } finally {
    bars.stop();
  }
}

export function registerPlan(program: Command): void {
  program
    .command("plan")
    .description("Choose exits and thresholds under an accuracy constraint, certified on held-back samples; optionally emit runnable models")
    .argument("<profile>", "profile JSON written by ee-tool profile (its model must sit where the profile says)")
    .requiredOption("-o, --out <plan.json>", "plan to write")
    .option("--max-drop <d>", "maximum accuracy drop, as a fraction (0.01 = 1 percentage point); for a decoder, the share of tokens whose greedy token differs from the model's", "0.01")
    .option("--against <what>", "model (agreement with the original's predictions) or labels", "model")
    .option("--metric <m>", "confidence measure: maxprob, margin or entropy", "maxprob")
    .option("--batch <n>", "batch size whose profiled latency is the cost model", "1")
    .option("--confidence <c>", "probability that the true drop stays within --max-drop (0 turns certification off)", "0.95")
    .option("--search <how>", "auto, exhaustive (small instances) or greedy (Apparate's tuner)", "auto")
    .option("--levels <n>", "candidate thresholds per ramp", "64")
    .option("--tune-fraction <f>", "share of the scored samples that tune thresholds; the rest certify them", String(DEFAULT_TUNE_FRACTION))
    .option("--tuning-drop <how>", "what the search sees of a configuration's drop on the tuning samples: fitted (each ramp's loss as a smooth function of its confidence) or observed (counts)", "fitted")
    .option("--frontier", "include the Pareto frontier of (drop, latency) configurations")
    .option("--points [drops]", `also certify operating points at these drops (comma-separated; default ${DEFAULT_POINT_LEVELS.join(",")}), switched per request in one model through its ee_thresholds input`)
    .option("--kv-mode <mode>", "decoder plans: auto (speculative when it is predicted faster than the certified exits), exact (exits with certified thresholds) or speculative (lossless: drafts checked by the full model)", "auto")
    .option("--calib <data>", "inputs to measure the chosen plan's paths on, as its runtime runs them (interleaved with the model, on the profile's machine); default: the profile's calibration data, where it is still there and this is the profile's machine. Use samples eval will not see")
    .option("--measure-budget <ms>", "time for the measurement's timed calls after a warm-up", String(DEFAULT_MEASURE_BUDGET_MS))
    .option("--no-measure", "predict the paths from the profile's cost model alone (no runs)")
    .option("--emit <kinds>", "write artifacts: stages, single, truncated (comma-separated); for a decoder: truncated (the model loaded only up to the certified truncation)")
    .option("--out-dir <dir>", "directory for --emit artifacts (default: next to the plan)")
    .option("--json", "print the plan JSON on stdout")
    .addHelpText(
      "after",
      "\nExamples:\n  $ ee-tool plan cnn.profile.json --max-drop 0.01 -o cnn.plan.json\n" +
        "  $ ee-tool plan profile.json --against labels --metric margin --frontier --emit stages,single --out-dir artifacts -o plan.json",
    )
    .action(async (file: string, opts: PlanCliOptions, cmd: Command) => {
      if (!["model", "labels"].includes(opts.against)) throw new EeToolError("USAGE", `--against must be model or labels, got '${opts.against}'`);
      if (!["maxprob", "margin", "entropy"].includes(opts.metric)) throw new EeToolError("USAGE", `--metric must be maxprob, margin or entropy, got '${opts.metric}'`);
      if (!["auto", "exhaustive", "greedy"].includes(opts.search)) throw new EeToolError("USAGE", `--search must be auto, exhaustive or greedy, got '${opts.search}'`);
      if (!["fitted", "observed"].includes(opts.tuningDrop)) throw new EeToolError("USAGE", `--tuning-drop must be fitted or observed, got '${opts.tuningDrop}'`);
      const emit = opts.emit ? opts.emit.split(",").map((s) => s.trim()) : [];
      for (const k of emit) if (!["stages", "single", "truncated"].includes(k)) throw new EeToolError("USAGE", `--emit takes stages, single, truncated; got '${k}'`);
      if (!["auto", "exact", "speculative"].includes(opts.kvMode)) throw new EeToolError("USAGE", `--kv-mode must be auto, exact or speculative, got '${opts.kvMode}'`);
      const decoderProfile = readDecoderProfileFile(file);
      if (decoderProfile) {
        for (const k of emit) if (k !== "truncated") throw new EeToolError("USAGE", `--emit for a decoder plan takes truncated (the model loaded only up to the certified truncation), got '${k}'`);
        const unused = classifierOnlyNote(cmd, ["against", "batch", "search", "levels", "tuningDrop", "frontier", "points", "calib", "measureBudget"], "a decoder plan is tuned at batch 1 against the model's greedy tokens, along its measured frontier (always in the plan)");
        if (unused) info(unused);
        const plan = planDecoder(decoderProfile, loadDecoderSamples(decoderProfile, file), {
          maxDrop: num("--max-drop", opts.maxDrop), confidence: num("--confidence", opts.confidence), metric: opts.metric as Metric,
          tuneFraction: num("--tune-fraction", opts.tuneFraction), kvMode: opts.kvMode as "auto" | "exact" | "speculative",
        });
        const modelPath = path.resolve(path.dirname(file), decoderProfile.model.file);
        const written = await writeDecoderPlan(plan, opts.out, modelPath, file, { emit, ...(opts.outDir ? { outDir: opts.outDir } : {}) });
        if (opts.json) out(JSON.stringify(written, null, 2));
        else info(renderDecoderPlan(written));
        info(`wrote ${opts.out}`);
        return;
      }
      if (cmd.getOptionValueSource("kvMode") === "cli") info("note: --kv-mode applies to decoder plans only: a classifier's exits take whole inputs");
      const result = loadProfile(file);
      const plan = planFromProfile(result, {
        maxDrop: num("--max-drop", opts.maxDrop), against: opts.against as Against, metric: opts.metric as Metric,
        batch: num("--batch", opts.batch), confidence: num("--confidence", opts.confidence), search: opts.search as SearchMethod,
        levels: num("--levels", opts.levels), tuneFraction: num("--tune-fraction", opts.tuneFraction),
        tuningDrop: opts.tuningDrop as TuningDrop, frontier: !!opts.frontier,
        ...(opts.points ? { points: opts.points === true ? [...DEFAULT_POINT_LEVELS] : opts.points.split(",").map((x) => num("--points", x.trim())) } : {}),
      });
      const modelPath = path.resolve(path.dirname(file), result.profile.model.file);
      const written = await writePlan(await measured(plan, result.profile, file, modelPath, opts), opts.out, modelPath, { emit, ...(opts.outDir ? { outDir: opts.outDir } : {}) });
      if (opts.json) out(JSON.stringify(written, null, 2));
      else info(renderPlan(written));
      info(`wrote ${opts.out}`);
    });
}
