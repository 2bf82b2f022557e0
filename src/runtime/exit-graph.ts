/**
 * One model that really exits early, for the runtime: after each active ramp, an If node returns
 * the ramp's logits when every row is confident, and otherwise runs the rest of the network, so a
 * request makes one onnxruntime call whatever exit it takes. Outputs: `ee_logits` [N, classes] and
 * `ee_exit` [N] (the ramp id each row took, -1 for the model's own output).
 *
 * Three forms:
 * - "gather": the rest runs on the remaining rows only (Gather of every batch tensor that crosses
 *   the cut), and the results are scattered back (ScatterND): rows leave the batch as they exit.
 * - "where": the rest runs on every row and each row keeps the first confident exit's logits
 *   (Where). Used when a tensor crossing a cut holds the batch size (a shape), so rows cannot
 *   leave, and for the portable `plan --emit single` model.
 * - "single": batch 1 only. The rest runs only when the one row is not confident, so it needs no
 *   merging: an exit costs the ramp, three small ops (Softmax, ReduceMax, Less) and the If.
 * Each row gets the logits of its first confident active ramp, or the model's.
 */
import type { AttributeProto, GraphProto, ModelProto, NodeProto } from "../onnx/types.js";
import { AttributeType } from "../onnx/types.js";
import type { Metric } from "../plan/problem.js";
import { Graph } from "../ir/graph.js";
import { NodeEmitter, attr, defaultOpset } from "../ir/builder.js";
import { makeValueInfo } from "../ir/shapes.js";
import { shallowClone } from "../ir/clone.js";
import { DataType } from "../onnx/dtype.js";
import { needed } from "../stages/split.js";
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
}

export const EXIT_LOGITS = "ee_logits";
export const EXIT_IDS = "ee_exit";

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

/** Names the nodes of a graph read, with those of their subgraphs. */
function namesRead(nodes: NodeProto[], into = new Set<string>()): Set<string> {
  for (const n of nodes) {
    for (const i of n.input ?? []) if (i) into.add(i);
    for (const a of n.attribute ?? []) for (const sg of a.g ? [a.g] : a.graphs ?? []) namesRead(sg.node ?? [], into);
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
  const own = namesRead((graph.node ?? []).filter((n) => !(n.op_type === "If" && n.name?.startsWith("ee_rt"))));
  // An early-exit If's condition is read by the If itself.
  for (const n of graph.node ?? []) if (n.op_type === "If") for (const i of n.input ?? []) own.add(i);
  const usedBy = branches.map((b) => namesRead(b.node ?? []));
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

  const emitLevel = (i: number, names: ReadonlyMap<string, string>, outLogits: string, outExit: string): NodeProto[] => {
    const em = new NodeEmitter(`ee_rt${i}`, opset);
    const nodes = levelNodes[i]!.map((n) => renamed(n, names));
    if (i === exits.length) {
      const shape = em.node("Shape", [o.output]);
      const n = em.node("Gather", [shape, em.constant("zero", DataType.INT64, [1], BigInt64Array.of(0n))], [attr("axis", 0)]);
      em.node("Identity", [o.output], [], outLogits);
      em.node("Expand", [em.constant("none", DataType.INT64, [], BigInt64Array.of(-1n)), n], [], outExit);
      inits.push(...em.initializers);
      return [...nodes, ...em.nodes];
    }
    const e = exits[i]!;
    const threshold = em.constant("threshold", DataType.FLOAT, [], Float32Array.of(e.threshold));
    const rampId = (r: NodeEmitter): string => r.constant("ramp", DataType.INT64, [], BigInt64Array.of(BigInt(e.ramp)));
    const rest = new NodeEmitter(`ee_rt${i}_rest`, opset);
    const done = new NodeEmitter(`ee_rt${i}_done`, opset);
    const restLogits = rest.name("logits");
    const restExit = rest.name("exit");
    const doneLogits = done.name("logits");
    const doneExit = done.name("exit");
    let anyLeft: string;
    let thenNodes: NodeProto[];
    if (o.mode === "single") {
      // One row: the rest runs only when it is not confident; its results are the answer.
      anyLeft = em.node("Less", [emitConfidence(em, e.output, o.metric, true), threshold]);
      thenNodes = emitLevel(i + 1, names, restLogits, restExit);
      done.node("Identity", [e.output], [], doneLogits);
      done.node("Reshape", [rampId(done), done.constant("one", DataType.INT64, [1], BigInt64Array.of(1n))], [], doneExit);
    } else {
      const conf = emitConfidence(em, e.output, o.metric);
      anyLeft = em.node("Less", [em.reduce("ReduceMin", conf, [], false), threshold]);
      const taken = (r: NodeEmitter): string => r.node("Expand", [rampId(r), r.node("Shape", [conf])]);
      const ok = rest.node("GreaterOrEqual", [conf, threshold]);
      const innerLogits = rest.name("inner_logits");
      const innerExit = rest.name("inner_exit");
      if (o.mode === "gather") {
        // The rest runs on the rows left; its results are scattered back.
        const idx = rest.node("Reshape", [rest.node("NonZero", [rest.node("Not", [ok])]), rest.constant("flat", DataType.INT64, [1], BigInt64Array.of(-1n))]);
        const next = new Map(names);
        for (const t of crossing(i)) next.set(t, rest.node("Gather", [names.get(t) ?? t, idx], [attr("axis", 0)]));
        const before = rest.nodes.splice(0);
        const inner = emitLevel(i + 1, next, innerLogits, innerExit);
        const at = rest.unsqueeze(idx, [1]);
        rest.node("ScatterND", [e.output, at, innerLogits], [], restLogits);
        rest.node("ScatterND", [taken(rest), at, innerExit], [], restExit);
        thenNodes = [...before, ...inner, ...rest.nodes];
      } else {
        // The rest runs on every row; each row keeps its first confident exit.
        const before = rest.nodes.splice(0);
        const inner = emitLevel(i + 1, names, innerLogits, innerExit);
        rest.node("Where", [rest.unsqueeze(ok, [1]), e.output, innerLogits], [], restLogits);
        rest.node("Where", [ok, taken(rest), innerExit], [], restExit);
        thenNodes = [...before, ...inner, ...rest.nodes];
      }
      done.node("Identity", [e.output], [], doneLogits);
      done.node("Identity", [taken(done)], [], doneExit);
    }
    inits.push(...em.initializers, ...rest.initializers, ...done.initializers);
    const branch = (name: string, nodes: NodeProto[], logits: string, exit: string): GraphProto => ({
      name, node: nodes,
      output: [makeValueInfo(logits, DataType.FLOAT, [null, o.classes]), makeValueInfo(exit, DataType.INT64, [null])],
    });
    const thenBranch = branch(`ee_rest_${i}`, thenNodes, restLogits, restExit);
    const elseBranch = branch(`ee_done_${i}`, done.nodes, doneLogits, doneExit);
    const ifNode: NodeProto = { op_type: "If", name: `ee_rt${i}/if`, input: [anyLeft], output: [outLogits, outExit], attribute: [graphAttr("then_branch", thenBranch), graphAttr("else_branch", elseBranch)] };
    return [...nodes, ...em.nodes, ifNode];
  };

  const nodes = emitLevel(0, new Map(), EXIT_LOGITS, EXIT_IDS);
  const g = model.graph!;
  const out = shallowClone(model);
  out.graph = {
    name: `${g.name ?? "model"}_early_exit`,
    node: nodes,
    initializer: [],
    input: g.input ?? [],
    output: [makeValueInfo(EXIT_LOGITS, DataType.FLOAT, [null, o.classes]), makeValueInfo(EXIT_IDS, DataType.INT64, [null])],
  };
  placeInitializers(out.graph, [...(g.initializer ?? []), ...inits]);
  out.metadata_props = (model.metadata_props ?? []).filter((m) => m.key !== METADATA_KEY);
  return out;
}
