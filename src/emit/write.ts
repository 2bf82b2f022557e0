/** Writing a plan: the model path relative to the plan, its hash checked, artifacts emitted. */
import * as fs from "node:fs";
import * as path from "node:path";
import type { Plan } from "../plan/plan.js";
import { checkModelHash } from "../plan/write.js";
import { writeBytesAtomic } from "../util/atomic.js";
import { EeToolError } from "../errors.js";
import { emitArtifacts } from "./emit.js";

export async function writePlan(plan: Plan, file: string, modelPath: string, options: { emit?: string[]; outDir?: string }): Promise<Plan> {
  checkModelHash(modelPath, plan.model.sha256);
  const planDir = path.dirname(path.resolve(file));
  let out: Plan = { ...plan, model: { ...plan.model, file: path.relative(planDir, modelPath) } };
  if (options.emit?.length) {
    const dir = path.resolve(options.outDir ?? planDir);
    try {
      fs.mkdirSync(dir, { recursive: true });
    } catch (e) {
      throw new EeToolError("WRITE_FAILED", `cannot create ${dir}: ${(e as Error).message}`);
    }
    const artifacts = await emitArtifacts(out, modelPath, dir, options.emit);
    const rel = (p: string): string => path.relative(planDir, p);
    // Only `file` entries are paths; tensor names may look like absolute paths ("/layer1/Relu_output_0").
    out = { ...out, artifacts: JSON.parse(JSON.stringify(artifacts, (k, v: unknown) => (k === "file" && typeof v === "string" ? rel(v) : v))) as Record<string, unknown> };
  }
  writeBytesAtomic(file, JSON.stringify(out, null, 1) + "\n");
  return out;
}
