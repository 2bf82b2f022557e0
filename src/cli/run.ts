import type { Command } from "commander";
import * as path from "node:path";
import { loadRunConfig } from "../pipeline/config.js";
import { runPipeline, STEPS, type RunResult, type StepEvent } from "../pipeline/run.js";
import { ExitCode } from "../errors.js";
import { info, out } from "./io.js";
import { progressBars } from "./progress.js";
import { table } from "./format.js";
import { renderEval } from "./eval.js";
import { writeCiOutputs } from "./ci-output.js";

const seconds = (ms: number): string => `${(ms / 1000).toFixed(1)} s`;

function stepLine(e: StepEvent, outDir: string, total: number): string {
  const files = (e.outputs ?? []).map((f) => path.relative(outDir, f)).join(", ");
  const at = `[${STEPS.indexOf(e.step) + 1}/${total}] ${e.step}`;
  if (e.status === "start") return `${at}: running${e.note ? ` (${e.note})` : ""}`;
  if (e.status === "cached") return `${at}: skipped, inputs and settings unchanged (${files})${e.note ? `; ${e.note}` : ""}`;
  return `${at}: done in ${seconds(e.ms ?? 0)} (${files})`;
}

export function renderRun(r: RunResult): string {
  const e = r.eval;
  const a = e.accuracy;
  const drop = a.against === "labels" ? a.dropVsLabels : a.dropVsModel;
  const pct = (x: number | null, d = 2): string => (x === null ? "-" : `${(x * 100).toFixed(d)}%`);
  return [
    renderEval(e),
    "",
    table([
      ["step", "status", "time", "wrote"],
      ...r.steps.map((s) => [s.step, s.status, s.status === "cached" ? "-" : seconds(s.ms), s.outputs.map((f) => path.relative(r.config.out, f)).join(", ")]),
    ]),
    `verdict: ${r.passed ? "passed" : "FAILED"}: ${r.plan.exits.length} exits, drop ${pct(drop)} against the ${a.against === "model" ? "model" : "labels"} (max ${pct(a.maxDrop)}), mean saving ${pct(e.latency.saving, 1)} (predicted ${pct(e.latency.predicted.saving, 1)}, tolerance ${(e.assertions.savingTolerance * 100).toFixed(0)} points)`,
  ].join("\n");
}

export function registerRun(program: Command): void {
  program
    .command("run")
    .description("Insert, profile, plan, eval and report one model from a configuration file into one directory, skipping steps whose inputs did not change; ends with the verdict")
    .argument("<config>", "configuration JSON (docs/run.schema.json)")
    .option("-o, --out <dir>", "output directory (default: the configuration's `out`, else ee-tool-run beside it)")
    .option("--force", "redo every step, whatever the step records say")
    .option("--junit <file>", "write the eval's assertions as JUnit XML")
    .option("--json", "print the eval report and the steps as JSON on stdout")
    .addHelpText(
      "after",
      "\nExit status: 0 when every assertion holds, 3 when one fails (each printed), 1-2 for bad usage or input.\n" +
        "With $GITHUB_STEP_SUMMARY set, a Markdown summary is appended to it; with $GITHUB_OUTPUT, the outputs verdict, saving, drop and artifacts.\n" +
        "\nExamples:\n  $ ee-tool run fixtures/cnn/run.json\n  $ ee-tool run ci/ee-tool.json --out build/ee --junit build/ee/junit.xml",
    )
    .action(async (file: string, opts: { out?: string; force?: boolean; junit?: string; json?: boolean }) => {
      const config = loadRunConfig(file, opts.out ? { out: opts.out } : {});
      const bars = progressBars();
      const result = await runPipeline(config, {
        ...(opts.force ? { force: true } : {}),
        onStep: (e) => {
          bars.stop();
          info(stepLine(e, config.out, config.report ? STEPS.length : STEPS.length - 1));
        },
        onProgress: (p, d, t) => bars.update(p, d, t),
      });
      bars.stop();
      if (opts.json) out(JSON.stringify({ passed: result.passed, failures: result.failures, out: config.out, steps: result.steps, eval: result.eval }, null, 2));
      else info(renderRun(result));
      writeCiOutputs(result.eval, result.plan, {
        name: path.relative(process.cwd(), config.file) || config.file,
        ...(opts.junit ? { junit: opts.junit } : {}),
        steps: result.steps,
        artifacts: config.out,
        ...(result.steps.find((s) => s.step === "eval" && s.status === "ran") ? { seconds: result.steps.find((s) => s.step === "eval")!.ms / 1000 } : {}),
      });
      if (!result.passed) {
        for (const f of result.failures) process.stderr.write(`ee-tool: assertion failed: ${f}\n`);
        process.exitCode = ExitCode.CONSTRAINT;
      }
    });
}
