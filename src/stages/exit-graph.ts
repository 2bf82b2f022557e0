/**
 * One model that really exits early, for the runtime: after each active ramp, an If node returns
 * the ramp's logits when every row is confident, and otherwise runs the rest of the network, so a
 * request makes one onnxruntime call whatever exit it takes. Outputs: `ee_logits` [N, classes] and
 * `ee_exit` [N] (the ramp id each row took, -1 for the model's own output); at batch 1 the two
 * are packed into one row, `ee_out` [1, classes + 1] (see exitOutputs, readExitOutputs).
 *
 * Three forms:
 * - "gather": the rest runs on the remaining rows only (Gather of every batch tensor that crosses
 *   the cut), and the results are scattered back (ScatterND): rows leave the batch as they exit.
 * - "where": the rest runs on every row and each row keeps the first confident exit's logits
 *   (Where). Used when a tensor crossing a cut holds the batch size (a shape), so rows cannot
 *   leave, and for the portable `plan --emit single` model.
 * - "single": batch 1 only. The rest runs only when the one row is not confident, so it needs no
 *   merging: an exit costs the ramp, three small ops (Softmax, ReduceMax, Less) and the If. Each
 *   If has one output of a static shape (logits and exit id in one row): onnxruntime then hands
 *   the inner result straight through, where a second output or an unknown shape costs each If
 *   5-10 µs (measured on the CNN fixture).
 * Each row gets the logits of its first confident active ramp, or the model's.
 */
import type { AttributeProto, GraphProto, ModelProto, NodeProto } from "../onnx/types.js";
import { AttributeType } from "../onnx/types.js";
import { Graph } from "../ir/graph.js";
import { NodeEmitter, attr, defaultOpset } from "../ir/builder.js";
import { makeValueInfo, typeInfo } from "../ir/shapes.js";
import { shallowClone } from "../ir/clone.js";
import { DataType } from "../onnx/dtype.js";
import { makeTensor } from "../onnx/tensor.js";
import { declaredTypes, needed } from "./split.js";
import { METADATA_KEY } from "../ramps/metadata.js";

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

/** How a plan runs: one model with an If after each exit, or one call per segment (runtime/segments.ts). */
export type RuntimeForm = "one-call" | "segments";

/** How a ramp's confidence is measured from its logits (plan --metric). */
export type Metric = "maxprob" | "margin" | "entropy";

export interface ActiveExit {
  ramp: number;
  output: string;
  threshold: number;
}

export type BatchMode = "single" | "gather" | "where";

/** The form for a batch of n rows: "single" at batch 1, else "gather" when rows may leave the batch, else "where". */
export function batchMode(n: number, rowRemoval: boolean): BatchMode {
  return n === 1 ? "single" : rowRemoval ? "gather" : "where";
}

export interface ExitGraphOptions {
  exits: ActiveExit[];
  metric: Metric;
  classes: number;
  /** The model's logits output. */
  output: string;
  mode: BatchMode;
  /** Tensors whose first dimension is the batch (gathered when rows leave); needed for "gather". */
  batchTensors?: ReadonlySet<string>;
  /**
   * Take the thresholds from an optional model input, float [exits] in the order of `exits`, whose
   * default (an initializer of the same name) holds the exits' own thresholds; +Inf turns an exit
   * off. A runtime that feeds nothing gets the defaults, one that feeds a vector switches operating
   * point with no reload. Without it each threshold is a constant.
   */
  thresholdInput?: string;
  /**
   * Give thresholdInput its default (an initializer of the same name: an "overridable initializer"
   * in onnxruntime's terms). Default true. onnxruntime-node cannot feed overridable initializers
   * (it passes only the inputs without one), so EarlyExitSession makes the input required and
   * feeds it on every call.
   */
  thresholdDefault?: boolean;
}

/** The optional thresholds input of an early-exit model (see ExitGraphOptions.thresholdInput). */
export const THRESHOLDS_INPUT = "ee_thresholds";

export const EXIT_LOGITS = "ee_logits";
export const EXIT_IDS = "ee_exit";
/** The single-row form's one output: [1, classes + 1], the logits then the exit id. */
export const EXIT_PACKED = "ee_out";

/** A level's nodes and the names of its results (those of `exitOutputs(mode)`, in order). */
interface Level {
  nodes: NodeProto[];
  outputs: string[];
}

/** The early-exit model's outputs in a form. */
export function exitOutputs(mode: BatchMode): string[] {
  return mode === "single" ? [EXIT_PACKED] : [EXIT_LOGITS, EXIT_IDS];
}

/** Logits [n, classes] and the exit per row from the early-exit model's outputs. */
export function readExitOutputs(mode: BatchMode, out: Record<string, { data: unknown }>, classes: number): { logits: Float32Array; exits: Int32Array } {
  if (mode === "single") {
    const row = out[EXIT_PACKED]!.data as Float32Array;
    return { logits: row.subarray(0, classes), exits: Int32Array.of(row[classes]!) };
  }
  return { logits: out[EXIT_LOGITS]!.data as Float32Array, exits: Int32Array.from(out[EXIT_IDS]!.data as BigInt64Array, (v) => Number(v)) };
}

/** A node whose inputs (and its subgraphs' reads from outer scopes) are renamed. */
function renamed(node: NodeProto, map: ReadonlyMap<string, string>): NodeProto {
  if (map.size === 0) return node;
  const r = (s: string): string => map.get(s) ?? s;
  const graph = (g: GraphProto): GraphProto => ({ ...g, node: (g.node ?? []).map((n) => renamed(n, map)) });
  const attrs = node.attribute?.map((a): AttributeProto => (a.g ? { ...a, g: graph(a.g) } : a.graphs?.length ? { ...a, graphs: a.graphs.map(graph) } : a));
  return { ...node, input: (node.input ?? []).map((i) => (i === "" ? i : r(i))), ...(attrs ? { attribute: attrs } : {}) };
}

function graphAttr(name: string, g: GraphProto): AttributeProto {
  return { name, type: AttributeType.GRAPH, g };
}

function outputNames(g: GraphProto): Set<string> {
  return new Set((g.output ?? []).map((v) => v.name ?? ""));
}

/** Names the nodes of a graph read, with those their subgraphs read or return. */
function namesRead(nodes: NodeProto[], into = new Set<string>()): Set<string> {
  for (const n of nodes) {
    for (const i of n.input ?? []) if (i) into.add(i);
    for (const a of n.attribute ?? []) {
      for (const sg of a.g ? [a.g] : a.graphs ?? []) {
        namesRead(sg.node ?? [], into);
        for (const o of outputNames(sg)) into.add(o);
      }
    }
  }
  return into;
}

/**
 * Put each initializer into the innermost branch of the early-exit Ifs that holds all its uses
 * (unused ones are dropped). onnxruntime hands every outer-scope value a branch reads to it on each
 * execution, so weights of deep layers left in the main graph would make every If pay for them.
 */
function placeInitializers(graph: GraphProto, inits: NonNullable<GraphProto["initializer"]>): void {
  const branches = (graph.node ?? []).filter((n) => n.op_type === "If" && n.name?.startsWith("ee_rt")).flatMap((n) => (n.attribute ?? []).map((a) => a.g!));
  const own = namesRead((graph.node ?? []).filter((n) => !(n.op_type === "If" && n.name?.startsWith("ee_rt"))), outputNames(graph));
  // An early-exit If's condition is read by the If itself.
  for (const n of graph.node ?? []) if (n.op_type === "If") for (const i of n.input ?? []) own.add(i);
  const usedBy = branches.map((b) => namesRead(b.node ?? [], outputNames(b)));
  const pushed = branches.map((): NonNullable<GraphProto["initializer"]> => []);
  const here: NonNullable<GraphProto["initializer"]> = [];
  for (const t of inits) {
    const name = t.name ?? "";
    const users = usedBy.flatMap((u, i) => (u.has(name) ? [i] : []));
    if (own.has(name) || users.length > 1) here.push(t);
    else if (users.length === 1) pushed[users[0]!]!.push(t);
  }
  graph.initializer = [...(graph.initializer ?? []), ...here];
  branches.forEach((b, i) => placeInitializers(b, pushed[i]!));
}

/**
 * The nodes of each level (level i: what exit i's ramp needs beyond earlier levels; the last level:
 * the rest) and the tensors made at or before level i (graph inputs included) and read after it.
 */
function levels(view: Graph, exits: readonly ActiveExit[], output: string): { levelNodes: NodeProto[][]; crossingAt: (i: number) => string[] } {
  const pos = new Map(view.sortedNodes().map((n, i) => [n, i]));
  const taken = new Set<NodeProto>();
  const levelNodes = [...exits.map((e) => e.output), output].map((target) => {
    const s = [...needed(view, [target], new Set())].filter((n) => !taken.has(n));
    s.forEach((n) => taken.add(n));
    return s.sort((a, b) => pos.get(a)! - pos.get(b)!);
  });
  const madeAt = new Map<string, number>();
  for (const i of view.inputs) madeAt.set(i.name ?? "", -1);
  levelNodes.forEach((nodes, l) => nodes.forEach((n) => (n.output ?? []).forEach((t) => t && madeAt.set(t, l))));
  const readAt = levelNodes.map((nodes) => new Set(nodes.flatMap((n) => view.inputsOf(n))));
  const crossingAt = (i: number): string[] => {
    const s = new Set<string>();
    for (let l = i + 1; l < readAt.length; l++) for (const t of readAt[l]!) if ((madeAt.get(t) ?? Infinity) <= i) s.add(t);
    return [...s].sort();
  };
  return { levelNodes, crossingAt };
}

/** Every tensor the early-exit model passes from one level to a later one. */
export function crossingTensors(model: ModelProto, exits: readonly ActiveExit[], output: string): string[] {
  const { levelNodes, crossingAt } = levels(new Graph(model.graph!), exits, output);
  return [...new Set(levelNodes.slice(0, -1).flatMap((_, i) => crossingAt(i)))];
}

/** Build the early-exit model from an augmented model (ramps in place) and the active exits. */
export function buildExitModel(model: ModelProto, o: ExitGraphOptions): ModelProto {
  const view = new Graph(model.graph!);
  const exits = [...o.exits];
  const opset = defaultOpset(model.opset_import);
  const inits: NonNullable<GraphProto["initializer"]> = [];

  const { levelNodes, crossingAt } = levels(view, exits, o.output);
  const crossing = (i: number): string[] => crossingAt(i).filter((t) => o.batchTensors?.has(t));

  const single = o.mode === "single";
  const outputInfo = (names: string[]): GraphProto["output"] =>
    single
      ? [makeValueInfo(names[0]!, DataType.FLOAT, [1, o.classes + 1])]
      : [makeValueInfo(names[0]!, DataType.FLOAT, [null, o.classes]), makeValueInfo(names[1]!, DataType.INT64, [null])];
  /** One row: logits [1, K] and a constant exit id packed into [1, K + 1]. */
  const pack = (em: NodeEmitter, logits: string, exit: number, out: string): string =>
    em.node("Concat", [logits, em.constant("exit", DataType.FLOAT, [1, 1], Float32Array.of(exit))], [attr("axis", 1)], out);

  /**
   * Level i and everything after it. An exit level ends in an If whose outputs are `outs`; the
   * last level hands on the model's own output (named `outs` where it makes them). Returns the
   * nodes and the names of the level's results.
   */
  const emitLevel = (i: number, names: ReadonlyMap<string, string>, outs: string[]): Level => {
    const em = new NodeEmitter(`ee_rt${i}`, opset);
    const nodes = levelNodes[i]!.map((n) => renamed(n, names));
    if (i === exits.length) {
      let outputs: string[];
      if (single) outputs = [pack(em, o.output, -1, outs[0]!)];
      else {
        const n = em.node("Gather", [em.node("Shape", [o.output]), em.constant("zero", DataType.INT64, [1], BigInt64Array.of(0n))], [attr("axis", 0)]);
        outputs = [o.output, em.node("Expand", [em.constant("none", DataType.INT64, [], BigInt64Array.of(-1n)), n], [], outs[1])];
      }
      inits.push(...em.initializers);
      return { nodes: [...nodes, ...em.nodes], outputs };
    }
    const e = exits[i]!;
    const threshold = o.thresholdInput
      ? em.node("Gather", [o.thresholdInput, em.constant("at", DataType.INT64, [], BigInt64Array.of(BigInt(i)))], [attr("axis", 0)])
      : em.constant("threshold", DataType.FLOAT, [], Float32Array.of(e.threshold));
    const rest = new NodeEmitter(`ee_rt${i}_rest`, opset);
    const done = new NodeEmitter(`ee_rt${i}_done`, opset);
    let anyLeft: string;
    let then: Level;
    let doneOutputs: string[];
    if (single) {
      // One row: the rest runs only when it is not confident; its results are the answer.
      anyLeft = em.node("Less", [emitConfidence(em, e.output, o.metric, true), threshold]);
      then = emitLevel(i + 1, names, [rest.name("out")]);
      doneOutputs = [pack(done, e.output, e.ramp, done.name("out"))];
    } else {
      const conf = emitConfidence(em, e.output, o.metric);
      anyLeft = em.node("Less", [em.reduce("ReduceMin", conf, [], false), threshold]);
      const taken = (r: NodeEmitter): string => r.node("Expand", [r.constant("ramp", DataType.INT64, [], BigInt64Array.of(BigInt(e.ramp))), r.node("Shape", [conf])]);
      const ok = rest.node("GreaterOrEqual", [conf, threshold]);
      const restLogits = rest.name("logits");
      const restExit = rest.name("exit");
      const innerOuts = [rest.name("inner_logits"), rest.name("inner_exit")];
      let inner: Level;
      if (o.mode === "gather") {
        // The rest runs on the rows left; its results are scattered back.
        const idx = rest.node("Reshape", [rest.node("NonZero", [rest.node("Not", [ok])]), rest.constant("flat", DataType.INT64, [1], BigInt64Array.of(-1n))]);
        const next = new Map(names);
        for (const t of crossing(i)) next.set(t, rest.node("Gather", [names.get(t) ?? t, idx], [attr("axis", 0)]));
        const before = rest.nodes.splice(0);
        inner = emitLevel(i + 1, next, innerOuts);
        const at = rest.unsqueeze(idx, [1]);
        rest.node("ScatterND", [e.output, at, inner.outputs[0]!], [], restLogits);
        rest.node("ScatterND", [taken(rest), at, inner.outputs[1]!], [], restExit);
        inner.nodes.unshift(...before);
      } else {
        // The rest runs on every row; each row keeps its first confident exit.
        const before = rest.nodes.splice(0);
        inner = emitLevel(i + 1, names, innerOuts);
        rest.node("Where", [rest.unsqueeze(ok, [1]), e.output, inner.outputs[0]!], [], restLogits);
        rest.node("Where", [ok, taken(rest), inner.outputs[1]!], [], restExit);
        inner.nodes.unshift(...before);
      }
      then = { nodes: [...inner.nodes, ...rest.nodes], outputs: [restLogits, restExit] };
      // onnxruntime refuses an outer-scope value as a branch output: the ramp's logits pass an Identity.
      doneOutputs = [done.node("Identity", [e.output]), taken(done)];
    }
    inits.push(...em.initializers, ...rest.initializers, ...done.initializers);
    const branch = (name: string, level: Level): GraphProto => ({ name, node: level.nodes, output: outputInfo(level.outputs) });
    const thenBranch = branch(`ee_rest_${i}`, then);
    const elseBranch = branch(`ee_done_${i}`, { nodes: done.nodes, outputs: doneOutputs });
    const ifNode: NodeProto = { op_type: "If", name: `ee_rt${i}/if`, input: [anyLeft], output: outs, attribute: [graphAttr("then_branch", thenBranch), graphAttr("else_branch", elseBranch)] };
    return { nodes: [...nodes, ...em.nodes, ifNode], outputs: outs };
  };

  const graphOutputs = exitOutputs(o.mode);
  const top = emitLevel(0, new Map(), graphOutputs);
  // Without exits (batch forms) the model's logits become a graph output under their own name.
  top.outputs.forEach((t, k) => {
    if (t !== graphOutputs[k]) top.nodes.push({ op_type: "Identity", name: `ee_rt/out${k}`, input: [t], output: [graphOutputs[k]!] });
  });
  const g = model.graph!;
  const out = shallowClone(model);
  out.graph = {
    name: `${g.name ?? "model"}_early_exit`,
    node: top.nodes,
    initializer: [],
    input: [...(g.input ?? []), ...(o.thresholdInput ? [makeValueInfo(o.thresholdInput, DataType.FLOAT, [exits.length])] : [])],
    output: outputInfo(graphOutputs),
  };
  const defaults = o.thresholdInput && o.thresholdDefault !== false ? [makeTensor(o.thresholdInput, DataType.FLOAT, [exits.length], Float32Array.from(exits, (e) => e.threshold))] : [];
  placeInitializers(out.graph, [...(g.initializer ?? []), ...inits, ...defaults]);
  out.metadata_props = (model.metadata_props ?? []).filter((m) => m.key !== METADATA_KEY);
  return out;
}

/**
 * Tensors passed from one level of the early-exit model to a later one that carry the batch (graph
 * inputs and activations), and whether rows may leave: not when a rank-1 integer tensor made by
 * shape arithmetic crosses (it may hold the batch size), nor when the model's inputs fix the batch
 * size (the rest of the network then only takes a full batch).
 */
export function batchTensorsAt(proto: ModelProto, exits: readonly ActiveExit[], output: string): { batchTensors: Set<string>; rowRemoval: boolean } {
  const view = new Graph(proto.graph!);
  const typeOf = declaredTypes(proto);
  const graphInputs = new Set(view.inputs.map((i) => i.name ?? ""));
  const batchTensors = new Set<string>();
  let rowRemoval = !view.inputs.some((i) => typeof typeInfo(i.type).shape?.[0] === "number");
  for (const t of crossingTensors(proto, exits, output)) {
    if (view.isInitializer(t)) continue;
    if (graphInputs.has(t)) {
      batchTensors.add(t);
      continue;
    }
    const p = view.producer(t);
    if (p?.op_type === "Constant") continue;
    const shapeLike = typeOf(t) === DataType.INT64 && ["Shape", "Concat", "Gather", "Unsqueeze"].includes(p?.op_type ?? "");
    if (shapeLike) rowRemoval = false;
    else batchTensors.add(t);
  }
  return { batchTensors, rowRemoval };
}
