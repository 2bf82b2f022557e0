import type { Command } from "commander";
import * as fs from "node:fs";
import { loadProfile } from "../profile/merge.js";
import { renderReport } from "../report/report.js";
import type { Plan } from "../plan/plan.js";
import { writeBytesAtomic } from "../util/atomic.js";
import { EeToolError } from "../errors.js";
import { info } from "./io.js";

export function registerReport(program: Command): void {
  program
    .command("report")
    .description("Write one self-contained HTML report: frontier, latency bars, exit rates, agreement against threshold")
    .argument("<profile>", "profile JSON")
    .argument("[plan]", "plan JSON made from that profile")
    .requiredOption("-o, --out <report.html>", "HTML file to write")
    .addHelpText("after", "\nExamples:\n  $ ee-tool report cnn.profile.json cnn.plan.json -o report.html\n  $ ee-tool report profile.json -o report.html")
    .action((profilePath: string, planPath: string | undefined, opts: { out: string }) => {
      const result = loadProfile(profilePath);
      let plan: Plan | undefined;
      if (planPath) {
        try {
          plan = JSON.parse(fs.readFileSync(planPath, "utf8")) as Plan;
        } catch (e) {
          throw new EeToolError(fs.existsSync(planPath) ? "PROFILE_INVALID" : "FILE_NOT_FOUND", `cannot read plan ${planPath}: ${(e as Error).message}`);
        }
        if (plan.model.sha256 !== result.profile.model.sha256) throw new EeToolError("PROFILE_MISMATCH", `${planPath} was not made from ${profilePath} (different models)`);
      }
      writeBytesAtomic(opts.out, renderReport(result, plan));
      info(`wrote ${opts.out}`);
    });
}
