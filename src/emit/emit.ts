/** Plan artifacts (--emit): stage models, a single If-based model, a truncated model. */
import type { Plan } from "../plan/plan.js";
import { EeToolError } from "../errors.js";

export async function emitArtifacts(_plan: Plan, _modelPath: string, _dir: string, kinds: string[]): Promise<Record<string, unknown>> {
  throw new EeToolError("UNSUPPORTED", `--emit ${kinds.join(",")} is not available yet`);
}
