/**
 * Plan artifacts (--emit):
 * - stages: one model per segment (the stages up to an active exit, fused with its ramp, so one
 *   call runs both) and a last segment to the model's outputs; run them in order, stop at the
 *   first segment whose ramp is confident enough.
 * - single: one model that really exits early: after each active ramp an If node returns the
 *   ramp's logits when every row of the batch is confident, else runs the rest and each row keeps
 *   its first confident exit. Outputs: the logits and `ee_exit` [N] (the ramp id each row took,
 *   -1 for none).
 * - truncated: the model cut after the deepest active exit, with that ramp's logits as output.
 */
import * as path from "node:path";
import type { ModelProto } from "../onnx/types.js";
import type { Plan } from "../plan/plan.js";
import { loadModel, saveModel, type OnnxModel } from "../onnx/model.js";
import { Graph } from "../ir/graph.js";
import { makeValueInfo } from "../ir/shapes.js";
import { shallowClone } from "../ir/clone.js";
import { DataType } from "../onnx/dtype.js";
import { declaredTypes, splitModel } from "../stages/split.js";
import { buildExitModel, EXIT_IDS, EXIT_LOGITS, THRESHOLDS_INPUT } from "../stages/exit-graph.js";
import { runtimeExits } from "../plan/exits.js";
import { EeToolError } from "../errors.js";

export interface SegmentArtifact {
  file: string;
  inputs: string[];
  outputs: string[];
  /** The exit this segment ends with (null for the last segment). */
  exit: { ramp: number; output: string; threshold: number } | null;
}

function activeExits(plan: Plan): Plan["exits"] {
  if (plan.exits.length === 0) throw new EeToolError("UNSUPPORTED", "the plan has no exits: there is nothing to emit");
  return [...plan.exits].sort((a, b) => a.stage - b.stage);
}

function emitStages(model: OnnxModel, plan: Plan, dir: string): SegmentArtifact[] {
  const exits = activeExits(plan);
  const split = splitModel(model.proto, declaredTypes(model.proto), { rampIds: exits.map((e) => e.ramp), fuse: true });
  return split.stages.map((st, i) => {
    const file = path.join(dir, `segment_${i}.onnx`);
    saveModel({ ...model, proto: st.proto }, file);
    const e = exits[i];
    return { file, inputs: st.inputs, outputs: st.outputs, exit: e ? { ramp: e.ramp, output: e.output, threshold: e.threshold } : null };
  });
}

/**
 * One model with an If after each active ramp, over the portable graph: the early-exit runtime's
 * "where" form (exit-graph.ts), which any batch size can run: the rest of the network runs only
 * when some row is not confident, and each row keeps its first confident exit's logits.
 */
function buildSingle(model: ModelProto, plan: Plan): ModelProto {
  const exits = runtimeExits(plan);
  const metric = plan.settings.metric;
  const out = buildExitModel(model, { exits, metric, classes: plan.model.classes, output: plan.model.output, mode: "where", thresholdInput: THRESHOLDS_INPUT });
  const points = plan.points?.points.map((p) => ({ maxDrop: p.maxDrop, thresholds: p.thresholds.map((t) => t ?? "off") }));
  out.metadata_props = [...(out.metadata_props ?? []), {
    key: "ee-tool.single",
    value: JSON.stringify({ exits: exits.map((e) => ({ ramp: e.ramp, threshold: Number.isFinite(e.threshold) ? e.threshold : "off" })), metric, batch: SINGLE_BATCH, thresholdsInput: THRESHOLDS_INPUT, ...(points ? { points } : {}) }),
  }];
  return out;
}

const SINGLE_BATCH = "each row takes its first confident exit; the rest of the network runs when any row is not confident";

function buildTruncated(model: ModelProto, plan: Plan): { proto: ModelProto; ramp: number } {
  const exits = activeExits(plan);
  const deepest = exits[exits.length - 1]!;
  const out: ModelProto = shallowClone(model);
  out.graph = shallowClone(model.graph!);
  out.graph.output = [makeValueInfo(deepest.output, DataType.FLOAT, [null, plan.model.classes])];
  out.metadata_props = (model.metadata_props ?? []).filter((m) => m.key !== "ee-tool.ramps");
  new Graph(out.graph).cleanup();
  return { proto: out, ramp: deepest.ramp };
}

export async function emitArtifacts(plan: Plan, modelPath: string, dir: string, kinds: string[]): Promise<Record<string, unknown>> {
  const model = loadModel(modelPath);
  const artifacts: Record<string, unknown> = {};
  if (kinds.includes("stages")) artifacts.stages = { metric: plan.settings.metric, segments: emitStages(model, plan, dir) };
  if (kinds.includes("single")) {
    const file = path.join(dir, "single.onnx");
    saveModel({ ...model, proto: buildSingle(model.proto, plan) }, file);
    artifacts.single = { file, outputs: [EXIT_LOGITS, EXIT_IDS], batch: SINGLE_BATCH };
  }
  if (kinds.includes("truncated")) {
    const file = path.join(dir, "truncated.onnx");
    const t = buildTruncated(model.proto, plan);
    saveModel({ ...model, proto: t.proto }, file);
    artifacts.truncated = { file, ramp: t.ramp };
  }
  return artifacts;
}
