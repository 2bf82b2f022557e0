import type { Command } from "commander";
import * as fs from "node:fs";
import { loadProfile } from "../profile/merge.js";
import { renderReport } from "../report/report.js";
import type { Plan } from "../plan/plan.js";
import { writeBytesAtomic } from "../util/atomic.js";
import { EeToolError } from "../errors.js";
import { info } from "./io.js";
import { readDecoderProfileFile, type DecoderPlan } from "../plan/decoder.js";
import { renderDecoderReport } from "../report/decoder.js";

function readJson(file: string): unknown {
  try {
    return JSON.parse(fs.readFileSync(file, "utf8"));
  } catch (e) {
    throw new EeToolError(fs.existsSync(file) ? "PROFILE_INVALID" : "FILE_NOT_FOUND", `cannot read plan ${file}: ${(e as Error).message}`);
  }
}

export function registerReport(program: Command): void {
  program
    .command("report")
    .description("Write one self-contained HTML report: frontier, latency bars, exit rates, agreement against threshold")
    .argument("<profile>", "profile JSON")
    .argument("[plan]", "plan JSON made from that profile")
    .requiredOption("-o, --out <report.html>", "HTML file to write")
    .addHelpText("after", "\nExamples:\n  $ ee-tool report cnn.profile.json cnn.plan.json -o report.html\n  $ ee-tool report profile.json -o report.html")
    .action((profilePath: string, planPath: string | undefined, opts: { out: string }) => {
      const decoder = readDecoderProfileFile(profilePath);
      if (decoder) {
        let plan: DecoderPlan | undefined;
        if (planPath) {
          plan = readJson(planPath) as DecoderPlan;
          if (plan.kind !== "decoder" || plan.model.sha256 !== decoder.model.sha256) throw new EeToolError("PROFILE_MISMATCH", `${planPath} was not made from ${profilePath} (different models)`);
        }
        writeBytesAtomic(opts.out, renderDecoderReport(decoder, plan));
        info(`wrote ${opts.out}`);
        return;
      }
      const result = loadProfile(profilePath);
      let plan: Plan | undefined;
      if (planPath) {
        plan = readJson(planPath) as Plan;
        if (plan.model.sha256 !== result.profile.model.sha256) throw new EeToolError("PROFILE_MISMATCH", `${planPath} was not made from ${profilePath} (different models)`);
      }
      writeBytesAtomic(opts.out, renderReport(result, plan));
      info(`wrote ${opts.out}`);
    });
}
