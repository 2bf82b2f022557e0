/**
 * Plan artifacts (--emit):
 * - stages: one model per segment (the stages up to an active exit, fused with its ramp, so one
 *   call runs both) and a last segment to the model's outputs; run them in order, stop at the
 *   first segment whose ramp is confident enough.
 * - single: one model that really exits early: after each active ramp an If node returns the
 *   ramp's logits when every row of the batch is confident, else runs the rest. Outputs: the
 *   logits and `ee_exit` (the ramp id taken, -1 for none).
 * - truncated: the model cut after the deepest active exit, with that ramp's logits as output.
 */
import * as path from "node:path";
import type { GraphProto, ModelProto, NodeProto } from "../onnx/types.js";
import { AttributeType } from "../onnx/types.js";
import type { Plan } from "../plan/plan.js";
import type { Metric } from "../plan/problem.js";
import { loadModel, saveModel, type OnnxModel } from "../onnx/model.js";
import { Graph } from "../ir/graph.js";
import { NodeEmitter, attr, defaultOpset } from "../ir/builder.js";
import { makeValueInfo } from "../ir/shapes.js";
import { shallowClone } from "../ir/clone.js";
import { DataType } from "../onnx/dtype.js";
import { declaredTypes, needed, splitModel } from "../stages/split.js";
import { EeToolError } from "../errors.js";

export interface SegmentArtifact {
  file: string;
  inputs: string[];
  outputs: string[];
  /** The exit this segment ends with (null for the last segment). */
  exit: { ramp: number; output: string; threshold: number } | null;
}

/**
 * Emit the confidence of logits [N, K] under a metric: [N] (higher is more confident). With
 * `oneRow` (N = 1) maxprob reduces to a scalar in one op.
 */
export function emitConfidence(em: NodeEmitter, logits: string, metric: Metric, oneRow = false): string {
  const probs = em.node("Softmax", [logits], [attr("axis", -1)]);
  if (metric === "maxprob") return em.reduce("ReduceMax", probs, oneRow ? [] : [1], false);
  if (metric === "margin") {
    const k = em.constant("k2", DataType.INT64, [1], BigInt64Array.of(2n));
    const top = em.node("TopK", [probs, k], [attr("axis", -1)]);
    const first = em.node("Gather", [top, em.constant("i0", DataType.INT64, [], BigInt64Array.of(0n))], [attr("axis", 1)]);
    const second = em.node("Gather", [top, em.constant("i1", DataType.INT64, [], BigInt64Array.of(1n))], [attr("axis", 1)]);
    return em.node("Sub", [first, second]);
  }
  // -entropy = sum p log p (p clamped away from 0)
  const tiny = em.constant("tiny", DataType.FLOAT, [], Float32Array.of(1e-30));
  return em.reduce("ReduceSum", em.node("Mul", [probs, em.node("Log", [em.node("Max", [probs, tiny])])]), [1], false);
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

/** One model with nested If nodes. */
function buildSingle(model: ModelProto, plan: Plan): ModelProto {
  const exits = activeExits(plan);
  const view = new Graph(model.graph!);
  const order = view.sortedNodes();
  const pos = new Map(order.map((n, i) => [n, i]));
  const output = plan.model.output;
  const opset = defaultOpset(model.opset_import);
  const taken = new Set<NodeProto>();
  // Nodes of segment i: what exit i's ramp needs, minus what earlier segments computed.
  const segmentNodes = (targets: string[]): NodeProto[] => {
    const s = [...needed(view, targets, new Set())].filter((n) => !taken.has(n));
    s.forEach((n) => taken.add(n));
    return s.sort((a, b) => pos.get(a)! - pos.get(b)!);
  };
  const segments = exits.map((e) => segmentNodes([e.output]));
  const rest = segmentNodes([output]);

  const metric = plan.settings.metric;
  // Build from the innermost branch outwards.
  let elseGraph: GraphProto = {
    name: "ee_rest_final",
    node: [...rest, { op_type: "Identity", input: [output], output: ["ee_final_logits"], name: "ee_final_identity" }, { op_type: "Constant", input: [], output: ["ee_final_exit"], name: "ee_final_exit_const", attribute: [{ name: "value", type: AttributeType.TENSOR, t: { name: "ee_final_exit_value", dims: [], data_type: DataType.INT64, raw_data: new Uint8Array(BigInt64Array.of(-1n).buffer) } }] }],
    output: [makeValueInfo("ee_final_logits", DataType.FLOAT, [null, plan.model.classes]), makeValueInfo("ee_final_exit", DataType.INT64, [])],
  };
  let outerNodes: NodeProto[] = [];
  let outerInits = [] as NonNullable<GraphProto["initializer"]>;
  for (let i = exits.length - 1; i >= 0; i--) {
    const e = exits[i]!;
    const em = new NodeEmitter(`ee_single${i}`, opset);
    const conf = emitConfidence(em, e.output, metric);
    const min = em.reduce("ReduceMin", conf, [], false);
    const thr = em.constant("threshold", DataType.FLOAT, [], Float32Array.of(e.threshold));
    const cond = em.node("GreaterOrEqual", [min, thr]);
    const thenGraph: GraphProto = {
      name: `ee_exit_branch_${i}`,
      node: [
        { op_type: "Identity", input: [e.output], output: [`ee_then_logits_${i}`], name: `ee_then_identity_${i}` },
        { op_type: "Constant", input: [], output: [`ee_then_exit_${i}`], name: `ee_then_exit_const_${i}`, attribute: [{ name: "value", type: AttributeType.TENSOR, t: { name: `ee_then_exit_value_${i}`, dims: [], data_type: DataType.INT64, raw_data: new Uint8Array(BigInt64Array.of(BigInt(e.ramp)).buffer) } }] },
      ],
      output: [makeValueInfo(`ee_then_logits_${i}`, DataType.FLOAT, [null, plan.model.classes]), makeValueInfo(`ee_then_exit_${i}`, DataType.INT64, [])],
    };
    const outs = i === 0 ? ["ee_logits", "ee_exit"] : [`ee_if_logits_${i}`, `ee_if_exit_${i}`];
    const ifNode: NodeProto = { op_type: "If", input: [cond], output: outs, name: `ee_if_${i}`, attribute: [{ name: "then_branch", type: AttributeType.GRAPH, g: thenGraph }, { name: "else_branch", type: AttributeType.GRAPH, g: elseGraph }] };
    const nodes = [...segments[i]!, ...em.nodes, ifNode];
    outerInits = [...outerInits, ...em.initializers];
    if (i === 0) {
      outerNodes = nodes;
    } else {
      elseGraph = {
        name: `ee_rest_${i}`,
        node: nodes,
        output: [makeValueInfo(outs[0]!, DataType.FLOAT, [null, plan.model.classes]), makeValueInfo(outs[1]!, DataType.INT64, [])],
      };
    }
  }
  const g = model.graph!;
  const used = new Set<string>();
  const collect = (nodes: NodeProto[]): void => {
    for (const n of nodes) {
      for (const i of n.input ?? []) used.add(i);
      for (const a of n.attribute ?? []) if (a.g) collect(a.g.node ?? []);
    }
  };
  collect(outerNodes);
  const out: ModelProto = shallowClone(model);
  out.graph = {
    name: `${g.name ?? "model"}_early_exit`,
    node: outerNodes,
    initializer: [...(g.initializer ?? []).filter((t) => used.has(t.name ?? "")), ...outerInits],
    input: g.input ?? [],
    output: [makeValueInfo("ee_logits", DataType.FLOAT, [null, plan.model.classes]), makeValueInfo("ee_exit", DataType.INT64, [])],
  };
  out.metadata_props = [...(model.metadata_props ?? []).filter((m) => m.key !== "ee-tool.ramps"), { key: "ee-tool.single", value: JSON.stringify({ exits: exits.map((e) => ({ ramp: e.ramp, threshold: e.threshold })), metric, batch: "exits only when every row of the batch is confident" }) }];
  return out;
}

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
    artifacts.single = { file, outputs: ["ee_logits", "ee_exit"], batch: "exits only when every row of the batch is confident" };
  }
  if (kinds.includes("truncated")) {
    const file = path.join(dir, "truncated.onnx");
    const t = buildTruncated(model.proto, plan);
    saveModel({ ...model, proto: t.proto }, file);
    artifacts.truncated = { file, ramp: t.ramp };
  }
  return artifacts;
}
