import type { Command } from "commander";
import * as fs from "node:fs";
import * as path from "node:path";
import type { Plan } from "../plan/plan.js";
import { readTelemetry, replanFromFeedback } from "../plan/feedback.js";
import { writePlan } from "../emit/write.js";
import { EeToolError } from "../errors.js";
import { info, out } from "./io.js";
import { table } from "./format.js";

export function registerReplan(program: Command): void {
  program
    .command("replan")
    .description("Re-tune a plan's operating point on logged live feedback (each exit's confidence and the full model's answer): the fastest point the log certifies at the plan's constraint (in practice the loosest), or the model when none is faster")
    .argument("<plan>", "plan JSON made with ee-tool plan --points")
    .requiredOption("--telemetry <log>", "telemetry log (JSON lines, docs/serve.md) of requests that ran the whole model")
    .requiredOption("-o, --out <plan.json>", "re-tuned plan to write")
    .option("--confidence <c>", "confidence of the test on the log (default: the plan's)")
    .option("--json", "print the new plan as JSON on stdout")
    .addHelpText("after", "\nExamples:\n  $ ee-tool replan plan.json --telemetry live.jsonl -o plan.live.json")
    .action(async (planPath: string, opts: { telemetry: string; out: string; confidence?: string; json?: boolean }) => {
      let plan: Plan;
      try {
        plan = JSON.parse(fs.readFileSync(planPath, "utf8")) as Plan;
      } catch (e) {
        throw new EeToolError(fs.existsSync(planPath) ? "PROFILE_INVALID" : "FILE_NOT_FOUND", `cannot read plan ${planPath}: ${(e as Error).message}`);
      }
      if (!plan.points) throw new EeToolError("USAGE", `${planPath} has no operating points`, { hint: "Make the plan with `ee-tool plan --points`, so that there are points to choose from." });
      const confidence = opts.confidence === undefined ? undefined : Number(opts.confidence);
      if (confidence !== undefined && !(confidence > 0 && confidence < 1)) throw new EeToolError("USAGE", `--confidence must be between 0 and 1, got '${opts.confidence}'`);
      const records = readTelemetry(opts.telemetry, plan.points, plan.settings.metric);
      const next = replanFromFeedback(plan, records, confidence === undefined ? {} : { confidence });
      const modelPath = path.resolve(path.dirname(planPath), plan.model.file);
      const written = await writePlan(next, opts.out, modelPath, {});
      const live = written.live!;
      const pct = (x: number): string => `${(x * 100).toFixed(2)}%`;
      if (opts.json) out(JSON.stringify(written, null, 2));
      else {
        info(`${live.records} telemetry records; fixed-sequence test at the plan's max drop ${pct(plan.settings.maxDrop)}, confidence ${live.confidence}, strictest point first`);
        info(table([["point", "max drop", "disagreements", "upper bound", ""], ...live.tests.map((t) => [String(t.point), pct(plan.points!.points[t.point]!.maxDrop), `${t.losses}/${t.n}`, pct(t.bound), t.passed ? "holds" : "fails"])]));
        info(live.point < 0 ? "no point holds on this log: the plan becomes the model unchanged (no exits)" : `operating point ${live.point} (was ${live.previous}): expected saving ${pct(written.expected.saving)}`);
      }
      info(`wrote ${opts.out}`);
    });
}
