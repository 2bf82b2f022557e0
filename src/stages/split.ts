/**
 * Splitting an augmented model at its ramps' exit tensors into stage models (stage k runs from
 * exit k-1 to exit k, taking the tensors that cross each cut as inputs) and one small model per
 * ramp. Chaining the stages reproduces the original model's outputs exactly.
 */
import type { GraphProto, ModelProto, NodeProto, ValueInfoProto } from "../onnx/types.js";
import { Graph } from "../ir/graph.js";
import { needed } from "../ir/needed.js";
import { makeValueInfo } from "../ir/shapes.js";
import { shallowClone } from "../ir/clone.js";
import { EeToolError } from "../errors.js";
import { readRampMetadata, type RampMetadata } from "../ramps/metadata.js";
import { DataType } from "../onnx/dtype.js";

export { needed };

export interface StagePart {
  /** "stage" k covers the backbone from cut k-1 to cut k; "ramp" k is ramp k alone; "prefix" k is stages 0..k. */
  kind: "stage" | "ramp" | "prefix";
  index: number;
  inputs: string[];
  outputs: string[];
  proto: ModelProto;
}

export interface SplitModel {
  meta: RampMetadata;
  /** stages[k] ends at ramp k's exit tensor; the last stage ends at the model's outputs. */
  stages: StagePart[];
  ramps: StagePart[];
  /** The original model: the augmented model without its ramps. */
  original: ModelProto;
}

/** Element types of every tensor the parts exchange, as far as the graph declares them. */
export type TypeLookup = (name: string) => number | undefined;

export function subModel(source: ModelProto, name: string, nodes: NodeProto[], inputs: string[], outputs: string[], typeOf: TypeLookup): ModelProto {
  const g = source.graph!;
  const used = new Set<string>();
  for (const n of nodes) for (const i of n.input ?? []) used.add(i);
  const view = new Graph(g);
  for (const n of nodes) for (const i of view.implicitInputsOf(n)) used.add(i);
  const vi = (t: string): ValueInfoProto => {
    const declared = view.valueInfo(t);
    if (declared?.type) return declared;
    const et = typeOf(t);
    if (et === undefined) throw new EeToolError("INTERNAL", `no type known for tensor '${t}' at a stage boundary`);
    return makeValueInfo(t, et);
  };
  const graph: GraphProto = {
    name,
    node: nodes,
    initializer: (g.initializer ?? []).filter((t) => used.has(t.name ?? "")),
    input: inputs.map(vi),
    output: outputs.map(vi),
  };
  if (g.sparse_initializer?.length) graph.sparse_initializer = g.sparse_initializer.filter((s) => used.has(s.values?.name ?? ""));
  const m: ModelProto = {
    ir_version: source.ir_version ?? 8,
    opset_import: source.opset_import ?? [],
    producer_name: "ee-tool",
    graph,
  };
  if (source.functions?.length) m.functions = source.functions;
  return m;
}

interface PartPlan {
  kind: "stage" | "ramp";
  index: number;
  nodes: NodeProto[];
  inputs: string[];
  outputs: string[];
}

interface SplitPlan {
  meta: RampMetadata;
  stages: PartPlan[];
  ramps: PartPlan[];
  backbone: NodeProto[];
  originalOutputs: ValueInfoProto[];
}

export interface SplitOptions {
  /** Split only at these ramps (default: all). */
  rampIds?: number[];
  /**
   * Put each ramp into the stage that ends at its exit, so one call runs both (segments of an
   * early-exit runtime); the ramp's logits become the stage's first output.
   */
  fuse?: boolean;
}

/**
 * Element types without running the model: the declared type, else INT64 for shape arithmetic
 * (Shape, Size) and Cast's target, else FLOAT (exit tensors and activations).
 */
export function declaredTypes(model: ModelProto): TypeLookup {
  const g = new Graph(model.graph!);
  return (name) => {
    const declared = g.valueInfo(name)?.type?.tensor_type?.elem_type;
    if (declared) return declared;
    const producer = g.producer(name);
    if (producer?.op_type === "Shape" || producer?.op_type === "Size") return DataType.INT64;
    if (producer?.op_type === "Cast") {
      const to = producer.attribute?.find((a) => a.name === "to")?.i;
      if (to !== undefined) return Number(String(to));
    }
    return DataType.FLOAT;
  };
}

/** Split an augmented model (with ee-tool ramp metadata) into stages and ramps. */
export function splitModel(model: ModelProto, typeOf: TypeLookup, options: SplitOptions = {}): SplitModel {
  const plan = planSplit(model, options);
  const build = (p: PartPlan): StagePart => ({
    kind: p.kind, index: p.index, inputs: p.inputs, outputs: p.outputs,
    proto: subModel(model, `${p.kind}_${p.index}`, p.nodes, p.inputs, p.outputs, typeOf),
  });
  const view = new Graph(model.graph!);
  const graphInputs = new Set(view.inputs.map((i) => i.name ?? ""));
  const original = shallowClone(model);
  original.graph = shallowClone(model.graph!);
  original.graph.node = plan.backbone;
  original.graph.output = plan.originalOutputs;
  const used = new Set<string>();
  for (const n of plan.backbone) for (const i of view.inputsOf(n)) used.add(i);
  original.graph.initializer = (model.graph!.initializer ?? []).filter((t) => used.has(t.name ?? "") || graphInputs.has(t.name ?? ""));
  original.metadata_props = (model.metadata_props ?? []).filter((m) => m.key !== "ee-tool.ramps");
  return { meta: plan.meta, stages: plan.stages.map(build), ramps: plan.ramps.map(build), original };
}

/** Every tensor passed between parts (their inputs and outputs). */
export function boundaryTensors(model: ModelProto, options: SplitOptions = {}): string[] {
  const plan = planSplit(model, options);
  const s = new Set<string>();
  for (const p of [...plan.stages, ...plan.ramps]) for (const t of [...p.inputs, ...p.outputs]) s.add(t);
  return [...s];
}

function planSplit(model: ModelProto, options: SplitOptions = {}): SplitPlan {
  const meta = readRampMetadata(model);
  if (!meta || meta.ramps.length === 0) {
    throw new EeToolError("NO_RAMPS", "the model has no ee-tool ramps", { hint: "Run `ee-tool insert <model> --calib <data> -o model.ee.onnx` first, and profile its output." });
  }
  const view = new Graph(model.graph!);
  const rampOutputs = new Set(meta.ramps.map((r) => r.output));
  const originalOutputs = view.outputs.map((o) => o.name ?? "").filter((o) => !rampOutputs.has(o));
  const wanted = options.rampIds ? new Set(options.rampIds) : undefined;
  const ramps = meta.ramps.filter((r) => !wanted || wanted.has(r.id)).sort((a, b) => a.depth - b.depth);
  if (wanted && ramps.length !== wanted.size) throw new EeToolError("EXIT_NOT_FOUND", `the model has no ramp ${[...wanted].filter((id) => !meta.ramps.some((r) => r.id === id)).join(", ")}`);
  const order = view.sortedNodes();
  const position = new Map(order.map((n, i) => [n, i]));
  const sorted = (set: Set<NodeProto>): NodeProto[] => [...set].sort((a, b) => position.get(a)! - position.get(b)!);
  const graphInputs = new Set(view.inputs.map((i) => i.name ?? ""));

  // Backbone nodes: what the original outputs need. Assign each to the first stage that needs it.
  const backbone = needed(view, originalOutputs, new Set());
  const stageOf = new Map<NodeProto, number>();
  const cuts = [...ramps.map((r) => r.tensor)];
  cuts.forEach((cut, k) => {
    for (const n of needed(view, [cut], new Set())) if (!stageOf.has(n)) stageOf.set(n, k);
  });
  for (const n of backbone) if (!stageOf.has(n)) stageOf.set(n, cuts.length);
  const producedIn = new Map<string, number>();
  for (const [n, k] of stageOf) for (const o of n.output ?? []) if (o) producedIn.set(o, k);

  const stageNodes: Array<Set<NodeProto>> = Array.from({ length: cuts.length + 1 }, () => new Set());
  for (const [n, k] of stageOf) if (backbone.has(n) || k < cuts.length) stageNodes[k]!.add(n);
  const consumedBy = (k: number): Set<string> => {
    const s = new Set<string>();
    for (const n of stageNodes[k]!) for (const i of view.inputsOf(n)) s.add(i);
    return s;
  };
  const consumption = stageNodes.map((_, k) => consumedBy(k));
  const stages: PartPlan[] = stageNodes.map((nodes, k) => {
    const inputs = [...consumption[k]!].filter((t) => {
      if (graphInputs.has(t)) return true;
      const from = producedIn.get(t);
      return from !== undefined && from < k;
    });
    // Previous cut tensor first, then the rest in a stable order.
    inputs.sort((a, b) => (a === cuts[k - 1] ? -1 : b === cuts[k - 1] ? 1 : a.localeCompare(b)));
    const outputs = new Set<string>();
    if (k < cuts.length) outputs.add(cuts[k]!);
    else for (const o of originalOutputs) outputs.add(o);
    for (let later = k + 1; later < stageNodes.length; later++) {
      for (const t of consumption[later]!) if (producedIn.get(t) === k) outputs.add(t);
    }
    return { kind: "stage", index: k, nodes: sorted(nodes), inputs, outputs: [...outputs] };
  });

  const rampParts: PartPlan[] = ramps.map((r) => {
    const nodes = needed(view, [r.output], new Set([r.tensor, ...graphInputs]));
    const inputs = [r.tensor];
    for (const n of nodes) for (const i of view.inputsOf(n)) if (graphInputs.has(i) && !inputs.includes(i)) inputs.push(i);
    return { kind: "ramp", index: r.id, nodes: sorted(nodes), inputs, outputs: [r.output] };
  });
  if (options.fuse) {
    rampParts.forEach((rp, k) => {
      const st = stages[k]!;
      const produced = new Set(st.nodes.flatMap((n) => n.output ?? []));
      const nodes = new Set([...st.nodes, ...rp.nodes]);
      st.nodes = sorted(nodes);
      for (const i of rp.inputs) if (!produced.has(i) && !st.inputs.includes(i)) st.inputs.push(i);
      st.outputs = [rp.outputs[0]!, ...st.outputs];
    });
  }
  return {
    meta, stages, ramps: rampParts, backbone: sorted(backbone),
    originalOutputs: view.outputs.filter((o) => !rampOutputs.has(o.name ?? "")),
  };
}

/**
 * Stages 0..k as one part: their nodes in order, the graph inputs they read, and every tensor
 * the later stages need from them (stage k's outputs among them). Timing prefixes measures what
 * reaching cut k costs in one call, as the one-call runtime pays it.
 */
export function prefixPart(stages: StagePart[], k: number): StagePart {
  const parts = stages.slice(0, k + 1);
  const produced = new Set<string>();
  const inputs: string[] = [];
  const nodes: NodeProto[] = [];
  const initializers = new Map<string, NonNullable<GraphProto["initializer"]>[number]>();
  const sparse = new Map<string, NonNullable<GraphProto["sparse_initializer"]>[number]>();
  const infos = new Map<string, ValueInfoProto>();
  for (const p of parts) {
    const g = p.proto.graph!;
    for (const i of g.input ?? []) {
      infos.set(i.name ?? "", i);
      if (!produced.has(i.name ?? "") && !inputs.includes(i.name ?? "")) inputs.push(i.name ?? "");
    }
    for (const o of g.output ?? []) infos.set(o.name ?? "", o);
    nodes.push(...(g.node ?? []));
    for (const t of g.initializer ?? []) initializers.set(t.name ?? "", t);
    for (const t of g.sparse_initializer ?? []) sparse.set(t.values?.name ?? "", t);
    for (const o of p.outputs) produced.add(o);
  }
  const later = new Set(stages.slice(k + 1).flatMap((s) => s.inputs));
  const outputs = [...new Set([...stages[k]!.outputs, ...[...produced].filter((t) => later.has(t))])];
  const first = parts[0]!.proto;
  const graph: GraphProto = {
    name: `prefix_${k}`, node: nodes, initializer: [...initializers.values()],
    input: inputs.map((n) => infos.get(n)!), output: outputs.map((n) => infos.get(n)!),
  };
  if (sparse.size) graph.sparse_initializer = [...sparse.values()];
  return { kind: "prefix", index: k, inputs, outputs, proto: { ...first, graph } };
}
