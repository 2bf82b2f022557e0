/**
 * The plan's model as segments, one onnxruntime call each: segment i ends at exit i (its ramp fused
 * in, cut from the graph onnxruntime optimises for this machine), the last at the model's output.
 * Two ways to run them:
 * `runSegments` (stages/segments.ts), the "segments" form of EarlyExitSession, for providers where
 * one call per segment beats the one-call If model (the profile measures both, `forms`); and the
 * release-early mode (release.ts): every row runs to the end, each released at its exit.
 */
import type { Plan } from "../plan/plan.js";
import { loadModel } from "../onnx/model.js";
import { declaredTypes, splitModel } from "../stages/split.js";
import { runtimeBytes, type SessionSettings } from "../ort/ort.js";
import { createRunnable } from "../ort/sync.js";
import { optimizeForRuntime, partSettings, type RuntimeModel } from "../stages/optimize.js";
import { batchTensorsAt } from "../stages/exit-graph.js";
import { openSegmentChain, type Segments } from "../stages/segments.js";
import { runtimeExits } from "../plan/exits.js";

/** The plan's model as the runtime optimises it: the plan's ramps only (stages/optimize.ts). */
export function runtimeModelOf(plan: Plan, modelPath: string, settings: SessionSettings): Promise<RuntimeModel> {
  return optimizeForRuntime(loadModel(modelPath), settings, runtimeExits(plan).map((e) => e.ramp));
}

/** Open the plan's segments (exits in depth order, as runtimeExits gives them) over its runtime model. */
export async function openSegments(plan: Plan, rt: RuntimeModel, settings: SessionSettings): Promise<Segments> {
  const exits = runtimeExits(plan);
  const split = splitModel(rt.proto, declaredTypes(rt.proto), { rampIds: exits.map((e) => e.ramp), fuse: true });
  const segments = await openSegmentChain(split.stages, exits, plan.model.output, (proto, outputs) => createRunnable(runtimeBytes(proto, rt.readExternal), partSettings(rt, settings), outputs));
  const { batchTensors, rowRemoval } = exits.length ? batchTensorsAt(rt.proto, exits, plan.model.output) : { batchTensors: new Set<string>(), rowRemoval: true };
  return { segments, exits, batchTensors, rowRemoval };
}

