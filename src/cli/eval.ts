import type { Command } from "commander";
import { parseEp } from "../ort/providers.js";
import { evaluatePlan, type EvalReport } from "../eval/eval.js";
import type { ModeThroughput } from "../eval/throughput.js";
import { EeToolError, ExitCode } from "../errors.js";
import { info, out } from "./io.js";
import { progressBars } from "./progress.js";
import { table, EP_HELP } from "./format.js";
import { writeCiOutputs } from "./ci-output.js";
import * as fs from "node:fs";
import * as path from "node:path";
import type { Plan } from "../plan/plan.js";
import type { DecoderPlan } from "../plan/decoder.js";
import { evaluateDecoderPlan } from "../eval/decoder.js";
import { renderDecoderEval } from "./decoder.js";

const pct = (x: number | null): string => (x === null ? "-" : `${(x * 100).toFixed(2)}%`);
const ms = (x: number): string => x.toFixed(3);

export function renderEval(r: EvalReport): string {
  const a = r.accuracy;
  const l = r.latency;
  const lines = [
    `${r.samples} samples at batch ${r.batch} on ${r.runtime.ep}${r.runtime.threads ? ` with ${r.runtime.threads} intra-op thread${r.runtime.threads > 1 ? "s" : ""}` : ""} (${r.runtime.sessions} session${r.runtime.sessions === 1 ? "" : "s"} each of the model and the runtime, taking turns by block), runtime form ${r.runtime.form}${r.runtime.ep !== r.runtime.planEp ? ` (note: the plan was profiled on ${r.runtime.planEp}; its latency predictions are for that provider)` : ""}`,
    ...(r.runtime.sessions > 1 ? [`  by session: model p50 ${r.latency.sessions.model.map((x) => x.toFixed(3)).join(", ")} ms per row; mean saving ${r.latency.sessions.saving.map(pct).join(", ")}`] : []),
    table([
      ["", "measured", "plan predicted"],
      ["accuracy drop vs model", pct(a.dropVsModel), a.against === "model" ? pct(a.predictedDrop) : "-"],
      ["accuracy drop vs labels", pct(a.dropVsLabels), a.against === "labels" ? pct(a.predictedDrop) : "-"],
      ["model accuracy (labels)", pct(a.modelAccuracy), ""],
      ["early-exit accuracy (labels)", pct(a.earlyExitAccuracy), ""],
      ["model latency mean / p50 (ms)", `${ms(l.model.mean)} / ${ms(l.model.p50)}`, `${ms(l.predicted.baselineMs)} (p50)`],
      ["early-exit latency mean / p50 (ms)", `${ms(l.earlyExit.mean)} / ${ms(l.earlyExit.p50)}`, `${ms(l.predicted.meanMs)} / ${ms(l.predicted.medianMs)}`],
      ["early-exit p90 / p99 (ms)", `${ms(l.earlyExit.p90)} / ${ms(l.earlyExit.p99)}`, ""],
      ["saving (mean)", pct(l.saving), pct(l.predicted.saving)],
      ["saving (median)", pct(l.savingMedian), pct(l.predicted.savingMedian)],
    ]),
    "exits",
    table([
      ["  ramp", "measured", "predicted", ...(r.batch === 1 ? ["path x model: measured", "predicted"] : [])],
      ...r.exits.map((e) => [`  ${e.ramp === -1 ? "none" : e.ramp}`, pct(e.measured), pct(e.predicted), ...(r.batch === 1 ? [e.path ? e.path.measured.toFixed(3) : "-", e.path?.predicted != null ? e.path.predicted.toFixed(3) : "-"] : [])]),
    ]),
  ];
  if (r.throughput) {
    const mode = (m: ModeThroughput | null): string[] => (m ? [ms(m.rowLatencyMs), m.rowsPerSecond.toFixed(0)] : ["-", "-"]);
    lines.push("latency per row (ms, mean time to a row's answer) and throughput (rows/s)");
    lines.push(table([
      ["  batch", "model", "rows/s", "early exit", "rows/s", "release early", "rows/s"],
      ...r.throughput.map((t) => [`  ${t.batch}`, ...mode(t.model), ...mode(t.earlyExit), ...mode(t.releaseEarly)]),
    ]));
  }
  return lines.join("\n");
}

function readPlanFile(file: string): Plan | DecoderPlan {
  try {
    return JSON.parse(fs.readFileSync(file, "utf8")) as Plan | DecoderPlan;
  } catch (e) {
    throw new EeToolError(fs.existsSync(file) ? "PROFILE_INVALID" : "FILE_NOT_FOUND", `cannot read plan ${file}: ${(e as Error).message}`);
  }
}

export function registerEval(program: Command): void {
  program
    .command("eval")
    .description("Measure a plan on held-out data: accuracy drop, exits and latency of the early-exit runtime against the original model")
    .argument("<plan>", "plan JSON written by ee-tool plan")
    .option("--data <inputs>", "held-out inputs (same forms as --calib); classifier plans")
    .option("--prompts <ids.npy>", "decoder plans: prompts as token ids [prompts, length]")
    .option("--max-new-tokens <n>", "decoder plans: tokens to generate per prompt", "64")
    .option("--text <ids.npy>", "decoder plans: evaluation text windows [sequences, length] for teacher-forced perplexity and the differing share")
    .option("--eos <id>", "decoder plans: stop a continuation after this token")
    .option("--truncated", "decoder plans: evaluate the certified truncation (the model loaded only up to that layer) instead of the plan")
    .option("--labels <y.npy>", "labels, for the drop against labels")
    .option("--batch <n>", "batch size (default: the plan's)")
    .option("--ep <provider>", EP_HELP, "cpu")
    .option("--throughput <sizes>", "also measure latency per row and rows per second of the model, the one-call runtime and the release-early mode at these batch sizes (comma-separated, e.g. 1,8,32,64)")
    .option("--threads <n>", "onnxruntime intra-op threads")
    .option("--sessions <n>", "classifier plans: sessions of the model and of the runtime each, which blocks of calls take turns in (default 3, fewer where they would not fit in half the free memory): one session can run a few percent off another of the same graph")
    .option("--assert", "exit 3 when the measured drop exceeds the plan's maximum or the saving falls short of the prediction")
    .option("--saving-tolerance <f>", "allowed shortfall of the measured mean saving below the prediction (absolute)", "0.1")
    .option("--junit <file>", "write the assertions as JUnit XML (one test case each)")
    .option("--json", "print the report as JSON on stdout")
    .addHelpText("after", "\nWith $GITHUB_STEP_SUMMARY set, a Markdown summary is appended to it; with $GITHUB_OUTPUT, the outputs verdict, saving and drop.\n" +
      "\nExamples:\n  $ ee-tool eval cnn.plan.json --data fixtures/cnn/eval.npz --labels fixtures/cnn/eval_labels.npy\n  $ ee-tool eval plan.json --data holdout.npz --assert --json > eval.json\n  $ ee-tool eval plan.json --data holdout.npz --assert --junit junit.xml")
    .action(async (planPath: string, opts: { data?: string; prompts?: string; maxNewTokens: string; text?: string; eos?: string; truncated?: boolean; labels?: string; batch?: string; ep: string; throughput?: string; threads?: string; sessions?: string; assert?: boolean; savingTolerance: string; junit?: string; json?: boolean }) => {
      parseEp(opts.ep); // a bad --ep fails before any work
      const batch = opts.batch === undefined ? undefined : Number(opts.batch);
      if (batch !== undefined && !(Number.isInteger(batch) && batch >= 1)) throw new EeToolError("USAGE", `--batch must be a positive integer, got '${opts.batch}'`);
      const tolerance = Number(opts.savingTolerance);
      if (!(tolerance >= 0)) throw new EeToolError("USAGE", `--saving-tolerance must be a non-negative number, got '${opts.savingTolerance}'`);
      const threads = opts.threads ? Number(opts.threads) : undefined;
      const throughput = opts.throughput === undefined ? undefined : opts.throughput.split(",").map((x) => Number(x.trim()));
      if (throughput?.some((b) => !(Number.isInteger(b) && b >= 1))) throw new EeToolError("USAGE", `--throughput takes positive batch sizes separated by commas, got '${opts.throughput}'`);
      const sessions = opts.sessions === undefined ? undefined : Number(opts.sessions);
      if (sessions !== undefined && !(Number.isInteger(sessions) && sessions >= 1)) throw new EeToolError("USAGE", `--sessions must be a positive integer, got '${opts.sessions}'`);
      const bars = progressBars();
      const t0 = performance.now();
      const parsed = readPlanFile(planPath);
      if ("kind" in parsed && parsed.kind === "decoder") {
        if (!opts.prompts) throw new EeToolError("USAGE", "a decoder plan is evaluated on prompts: give --prompts <ids.npy> (and --text <ids.npy> for perplexity)");
        const maxNew = Number(opts.maxNewTokens);
        if (!(Number.isInteger(maxNew) && maxNew >= 1)) throw new EeToolError("USAGE", `--max-new-tokens must be a positive integer, got '${opts.maxNewTokens}'`);
        const eos = opts.eos === undefined ? undefined : Number(opts.eos);
        if (eos !== undefined && !(Number.isInteger(eos) && eos >= 0)) throw new EeToolError("USAGE", `--eos must be a token id, got '${opts.eos}'`);
        const report = await evaluateDecoderPlan(planPath, parsed, {
          prompts: opts.prompts, maxNewTokens: maxNew, ...(opts.text ? { text: opts.text } : {}), ...(eos !== undefined ? { eos } : {}),
          truncated: !!opts.truncated, settings: { ep: opts.ep, ...(threads ? { threads } : {}) },
          onProgress: (p, d, t) => bars.update(p, d, t),
        });
        bars.stop();
        if (opts.json) out(JSON.stringify(report, null, 2));
        else info(renderDecoderEval(report));
        if (opts.assert && !report.assertions.passed) {
          for (const f of report.assertions.failures) process.stderr.write(`ee-tool: assertion failed: ${f}\n`);
          process.exitCode = ExitCode.CONSTRAINT;
        }
        return;
      }
      if (!opts.data) throw new EeToolError("USAGE", "a classifier plan is evaluated on held-out inputs: give --data <inputs>");
      const report = await evaluatePlan(planPath, {
        data: opts.data, ...(opts.labels ? { labels: opts.labels } : {}), ...(batch ? { batch } : {}),
        settings: { ep: opts.ep, ...(threads ? { threads } : {}) }, savingTolerance: tolerance, ...(throughput ? { throughput } : {}), ...(sessions ? { sessions } : {}),
        onProgress: (p, d, t) => bars.update(p, d, t),
      });
      bars.stop();
      if (opts.json) out(JSON.stringify(report, null, 2));
      else info(renderEval(report));
      const plan = JSON.parse(fs.readFileSync(planPath, "utf8")) as Plan;
      writeCiOutputs(report, plan, { name: path.basename(planPath), seconds: (performance.now() - t0) / 1000, ...(opts.junit ? { junit: opts.junit } : {}) });
      if (opts.assert && !report.assertions.passed) {
        for (const f of report.assertions.failures) process.stderr.write(`ee-tool: assertion failed: ${f}\n`);
        process.exitCode = ExitCode.CONSTRAINT;
      }
    });
}
