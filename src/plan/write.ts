/** Writing a plan: the model path relative to the plan, its hash checked, artifacts emitted. */
import * as fs from "node:fs";
import * as path from "node:path";
import { createHash } from "node:crypto";
import type { Plan } from "./plan.js";
import { writeBytesAtomic } from "../util/atomic.js";
import { EeToolError } from "../errors.js";
import { emitArtifacts } from "../emit/emit.js";

export function sha256OfFile(file: string): string {
  let data: Buffer;
  try {
    data = fs.readFileSync(file);
  } catch {
    throw new EeToolError("FILE_NOT_FOUND", `model not found: ${file}`, { hint: "The plan's model is looked up relative to the profile (or the plan); keep them together." });
  }
  return createHash("sha256").update(data).digest("hex");
}

/** Refuse a model file whose hash is not the one the profile or plan was made from. */
export function checkModelHash(file: string, expected: string): void {
  const actual = sha256OfFile(file);
  if (actual !== expected) {
    throw new EeToolError("MODEL_CHANGED", `${file} has changed since it was profiled (sha256 ${actual.slice(0, 12)}..., expected ${expected.slice(0, 12)}...)`, {
      hint: "Profile and plan the model again: thresholds and latencies belong to the exact model they were measured on.",
    });
  }
}

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
