/**
 * An eval's verdict in the forms CI systems read: JUnit XML (one test case per assertion; GitLab,
 * Jenkins, Azure and GitHub test reporters show it) and a Markdown summary (GitHub's job summary,
 * `$GITHUB_STEP_SUMMARY`).
 */
import type { Plan } from "../plan/plan.js";
import type { EvalReport } from "./eval.js";

const xml = (s: string): string =>
  s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;").replace(/[\u0000-\u0008\u000b\u000c\u000e-\u001f]/g, "");
const pct = (x: number | null, digits = 2): string => (x === null ? "-" : `${(x * 100).toFixed(digits)}%`);
const ms = (x: number): string => x.toFixed(3);

export interface CiContext {
  /** What the suite is named after (the plan or config file). */
  name: string;
  /** Wall time of the eval in seconds, when known. */
  seconds?: number;
  timestamp?: string;
}

/** JUnit XML: a suite per eval, a test case per assertion, the figures as properties. */
export function junitXml(report: EvalReport, plan: Plan, ctx: CiContext): string {
  const checks = report.assertions.checks;
  const failed = checks.filter((c) => !c.passed).length;
  const time = (ctx.seconds ?? 0).toFixed(3);
  const props: Array<[string, string]> = [
    ["model", plan.model.file],
    ["samples", String(report.samples)],
    ["batch", String(report.batch)],
    ["exits", String(plan.exits.length)],
    ["drop.against", report.accuracy.against],
    ["drop.measured", String(report.accuracy.against === "labels" ? report.accuracy.dropVsLabels : report.accuracy.dropVsModel)],
    ["drop.max", String(report.accuracy.maxDrop)],
    ["saving.measured", String(report.latency.saving)],
    ["saving.predicted", String(report.latency.predicted.saving)],
    ["saving.tolerance", String(report.assertions.savingTolerance)],
  ];
  const lines = [
    `<?xml version="1.0" encoding="UTF-8"?>`,
    `<testsuites name="ee-tool" tests="${checks.length}" failures="${failed}" errors="0" time="${time}">`,
    `  <testsuite name="${xml(`ee-tool eval ${ctx.name}`)}" tests="${checks.length}" failures="${failed}" errors="0" skipped="0" time="${time}" timestamp="${xml((ctx.timestamp ?? new Date().toISOString()).replace(/\.\d+Z$/, ""))}">`,
    `    <properties>`,
    ...props.map(([k, v]) => `      <property name="${xml(k)}" value="${xml(v)}"/>`),
    `    </properties>`,
    ...checks.flatMap((c) => {
      const open = `    <testcase name="${xml(c.name)}" classname="ee-tool.eval" time="0"`;
      if (c.passed) return [`${open}/>`];
      return [`${open}>`, `      <failure message="${xml(c.message)}" type="AssertionError">${xml(`measured ${c.measured === null ? "nothing" : c.measured}, limit ${c.limit}`)}</failure>`, `    </testcase>`];
    }),
    `    <system-out>${xml(checks.map((c) => `${c.passed ? "ok" : "FAILED"}: ${c.message}`).join("\n"))}</system-out>`,
    `  </testsuite>`,
    `</testsuites>`,
  ];
  return lines.join("\n") + "\n";
}

const cell = (s: string): string => s.replace(/\|/g, "\\|").replace(/\n/g, " ");
const row = (cells: string[]): string => `| ${cells.map(cell).join(" | ")} |`;
const mdTable = (head: string[], rows: string[][]): string[] => [row(head), row(head.map(() => "---")), ...rows.map(row)];

export interface SummaryStep {
  step: string;
  status: string;
  ms: number;
  note?: string;
}

/** A Markdown summary: verdict, measured against predicted, the plan's exits, and (for `run`) the steps. */
export function markdownSummary(report: EvalReport, plan: Plan, ctx: CiContext & { steps?: SummaryStep[] }): string {
  const a = report.accuracy;
  const l = report.latency;
  const passed = report.assertions.passed;
  const cert = plan.certificate;
  const out: string[] = [
    `### ee-tool: ${passed ? "passed" : "FAILED"} (${ctx.name})`,
    "",
    `${plan.exits.length} exits, max drop ${pct(plan.settings.maxDrop)} against the ${plan.settings.against === "model" ? "model's predictions" : "labels"}, batch ${report.batch}, measured on ${report.samples} held-out samples.`,
    "",
    ...mdTable(["", "measured", "plan predicted"], [
      ["accuracy drop vs model", pct(a.dropVsModel), a.against === "model" ? pct(a.predictedDrop) : "-"],
      ["accuracy drop vs labels", pct(a.dropVsLabels), a.against === "labels" ? pct(a.predictedDrop) : "-"],
      ["model latency mean / p50 (ms)", `${ms(l.model.mean)} / ${ms(l.model.p50)}`, `${ms(l.predicted.baselineMs)} (p50)`],
      ["early-exit latency mean / p50 (ms)", `${ms(l.earlyExit.mean)} / ${ms(l.earlyExit.p50)}`, `${ms(l.predicted.meanMs)} / ${ms(l.predicted.medianMs)}`],
      ["saving (mean)", pct(l.saving, 1), pct(l.predicted.saving, 1)],
      ["saving (median)", pct(l.savingMedian, 1), pct(l.predicted.savingMedian, 1)],
    ]),
    "",
    cert ? `Certified: true drop <= ${pct(cert.maxDrop)} with probability ${cert.confidence} (${cert.method}, n = ${cert.n}${cert.bound !== null ? `, upper bound ${pct(cert.bound)}` : ""}).` : "Not certified.",
    "",
    ...mdTable(["exit", "threshold", "measured rate", "predicted rate"], report.exits.map((e) => {
      const planned = plan.exits.find((x) => x.ramp === e.ramp);
      return [e.ramp === -1 ? "none (whole model)" : `ramp ${e.ramp}`, planned ? planned.threshold.toFixed(4) : "-", pct(e.measured), pct(e.predicted)];
    })),
    "",
    ...report.assertions.checks.map((c) => `- ${c.passed ? "pass" : "**FAIL**"}: ${c.message}`),
  ];
  if (ctx.steps?.length) {
    out.push("", ...mdTable(["step", "status", "time"], ctx.steps.map((s) => [s.step, s.note ? `${s.status} (${s.note})` : s.status, s.status === "cached" ? "-" : `${(s.ms / 1000).toFixed(1)} s`])));
  }
  return out.join("\n") + "\n";
}
