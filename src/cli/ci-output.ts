/**
 * What `eval` and `run` hand a CI system besides their own output: `--junit <file>`, a Markdown
 * summary appended to `$GITHUB_STEP_SUMMARY`, and step outputs appended to `$GITHUB_OUTPUT`
 * (`saving`, `drop`, `verdict`, `artifacts`), each only when asked for or when GitHub sets the variable.
 */
import * as fs from "node:fs";
import { junitXml, markdownSummary, type CiContext, type SummaryStep } from "../eval/ci.js";
import type { EvalReport } from "../eval/eval.js";
import type { Plan } from "../plan/plan.js";
import { writeBytesAtomic } from "../util/atomic.js";
import { EeToolError, messageOf } from "../errors.js";
import { info } from "./io.js";

export interface CiOutputOptions extends CiContext {
  junit?: string;
  steps?: SummaryStep[];
  /** The run's output directory (the `artifacts` output). */
  artifacts?: string;
  env?: NodeJS.ProcessEnv;
}

function append(file: string, text: string, what: string): void {
  try {
    fs.appendFileSync(file, text);
  } catch (e) {
    throw new EeToolError("WRITE_FAILED", `cannot append the ${what} to ${file}: ${messageOf(e)}`);
  }
}

/** GitHub's step-output format; a value with a newline gets a heredoc-style delimiter. */
export function githubOutputs(values: Record<string, string>): string {
  return Object.entries(values).map(([k, v]) => (v.includes("\n") ? `${k}<<EE_TOOL_EOF\n${v}\nEE_TOOL_EOF\n` : `${k}=${v}\n`)).join("");
}

export function writeCiOutputs(report: EvalReport, plan: Plan, o: CiOutputOptions): void {
  const env = o.env ?? process.env;
  if (o.junit) {
    writeBytesAtomic(o.junit, junitXml(report, plan, o));
    info(`wrote ${o.junit}`);
  }
  if (env.GITHUB_STEP_SUMMARY) append(env.GITHUB_STEP_SUMMARY, markdownSummary(report, plan, o) + "\n", "job summary");
  if (env.GITHUB_OUTPUT) {
    const drop = report.accuracy.against === "labels" ? report.accuracy.dropVsLabels : report.accuracy.dropVsModel;
    append(env.GITHUB_OUTPUT, githubOutputs({
      verdict: report.assertions.passed ? "pass" : "fail",
      saving: report.latency.saving.toFixed(4),
      "predicted-saving": report.latency.predicted.saving.toFixed(4),
      drop: drop === null ? "" : drop.toFixed(4),
      "max-drop": report.accuracy.maxDrop.toString(),
      ...(o.artifacts ? { artifacts: o.artifacts } : {}),
    }), "step outputs");
  }
}
