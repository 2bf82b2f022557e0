/** A plan's model file: its hash, and the check that it is the model the plan was made from. */
import * as fs from "node:fs";
import { createHash } from "node:crypto";
import { EeToolError } from "../errors.js";

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
