/**
 * Splitting a decoder with exit heads into the runtime's segments: segment s runs the layers
 * between exit s-1 and exit s (the first from the tokens, the last to the model's own logits),
 * and returns its layers' presents, the residual stream at its end, and the logits of its exit
 * head for the last position only.
 *
 * A segment recomputes the side values it needs (mask, rotary tables) from the graph inputs, so
 * that it can run on its own sequence: in the exact KV mode a deeper segment runs the tokens that
 * exited earlier together with the current one, after a shorter past than the first segment's.
 */
import type { ModelProto, NodeProto } from "../onnx/types.js";
import { Graph } from "../ir/graph.js";
import { needed } from "../ir/needed.js";
import { NodeEmitter, defaultOpset } from "../ir/builder.js";
import { shallowClone } from "../ir/clone.js";
import { makeValueInfo } from "../ir/shapes.js";
import { DataType } from "../onnx/dtype.js";
import { EeToolError } from "../errors.js";
import type { DecoderMetadata, DecoderExitRecord } from "../ramps/metadata.js";
import { declaredTypes, subModel } from "./split.js";

export interface DecoderSegment {
  index: number;
  /** Decoder layers [firstLayer, lastLayer) this segment runs. */
  firstLayer: number;
  lastLayer: number;
  hiddenIn: string | null;
  /** Residual stream at the end (null for the last segment). */
  hiddenOut: string | null;
  /** Logits of the last position: the exit head's, or the model's own for the last segment (every position's with `verify`). */
  logits: string;
  /** The exit this segment ends at (null: the model's own head). */
  exit: DecoderExitRecord | null;
  inputs: string[];
  outputs: string[];
  proto: ModelProto;
}

function int64(em: NodeEmitter, hint: string, v: number[]): string {
  return em.constant(hint, DataType.INT64, [v.length], BigInt64Array.from(v, BigInt));
}

/**
 * Nodes computing `target` from `boundary`, rewired to read only its last position; so are the
 * [batch, seq] inputs a head may read (the token ids whose shape GPT-2's head reshapes to). What
 * the rewiring changes is renamed (`target` keeps its name); nodes it does not touch and `body`
 * already has are not repeated.
 */
function lastPositionHead(
  view: Graph, boundary: string, target: string, sequenceInputs: readonly string[], body: ReadonlySet<NodeProto>, prefix: string, opset: number,
): { replaced: Set<NodeProto>; nodes: NodeProto[]; em: NodeEmitter } {
  const head = needed(view, [target], new Set([boundary]));
  const em = new NodeEmitter(prefix, opset);
  const start = int64(em, "start", [-1]);
  const end = int64(em, "end", [2 ** 53]);
  const axis = int64(em, "axis", [1]);
  const order = view.sortedNodes().filter((n) => head.has(n));
  const reads = new Set(order.flatMap((n) => view.inputsOf(n)));
  const renamed = new Map([boundary, ...sequenceInputs.filter((t) => reads.has(t))].map((t) => [t, em.node("Slice", [t, start, end, axis])]));
  const nodes: NodeProto[] = [];
  for (const n of order) {
    if (!(n.input ?? []).some((i) => renamed.has(i))) {
      if (!body.has(n)) nodes.push(n);
      continue;
    }
    const output = (n.output ?? []).map((o) => {
      if (!o || o === target) return o;
      renamed.set(o, `${prefix}/${o}`);
      return `${prefix}/${o}`;
    });
    nodes.push({ ...shallowClone(n), name: `${prefix}/${n.name ?? n.op_type}`, input: (n.input ?? []).map((i) => renamed.get(i) ?? i), output });
  }
  return { replaced: head, nodes: [...em.nodes, ...nodes], em };
}

export interface SegmentOptions {
  /** The last exit ends the model: tokens that reach it exit there (a truncated model), and no layer after it is kept. */
  terminal?: boolean;
  /** The segment ending at the model's own head returns its logits at every position it runs (the speculative mode checks each draft against them). */
  verify?: boolean;
}

/** Segments for the exits `use` (ids, any order). */
export function decoderSegments(augmented: ModelProto, meta: DecoderMetadata, use: readonly number[], options: SegmentOptions = {}): DecoderSegment[] {
  const terminal = options.terminal ?? false;
  const verify = options.verify ?? false;
  const view = new Graph(augmented.graph!);
  const opset = defaultOpset(augmented.opset_import);
  const exits = use.map((id) => {
    const e = meta.exits.find((x) => x.id === id);
    if (!e) throw new EeToolError("EXIT_NOT_FOUND", `the model has no exit head ${id} (heads: ${meta.exits.map((x) => x.id).join(", ")})`);
    return e;
  }).sort((a, b) => a.layers - b.layers);
  if (terminal && exits.length === 0) throw new EeToolError("INTERNAL", "a truncated decoder needs an exit to end at");
  const total = meta.layers;
  const ends: Array<DecoderExitRecord | null> = terminal ? exits : [...exits, null];
  const typeOf = declaredTypes(augmented);
  const graphInputs = new Set(view.inputs.map((i) => i.name ?? ""));
  const sequenceInputs = [meta.layout.inputIds, ...(meta.layout.positionIds ? [meta.layout.positionIds] : [])];
  const order = view.sortedNodes();
  const position = new Map(order.map((n, i) => [n, i]));
  return ends.map((exit, s) => {
    const prev = s > 0 ? exits[s - 1]! : null;
    const firstLayer = prev ? prev.layers : 0;
    const lastLayer = exit ? exit.layers : total;
    const hiddenIn = prev ? prev.tensor : null;
    const hiddenOut = exit && s < ends.length - 1 ? exit.tensor : null;
    const presents = meta.layout.layers.slice(firstLayer, lastLayer).flatMap((l) => [l.presentKey, l.presentValue]);
    const target = exit ? exit.output : meta.layout.logits;
    const boundary = exit ? exit.tensor : meta.finalTensor;
    const available = new Set(hiddenIn ? [hiddenIn] : []);
    const everyPosition = verify && exit === null;
    // Every position's logits: the model's own head as it is, fed the segment's own positions.
    const body = needed(view, [...presents, ...(hiddenOut ? [hiddenOut] : []), everyPosition ? target : boundary], available);
    const head = everyPosition ? { replaced: new Set<NodeProto>(), nodes: [], em: new NodeEmitter(`ee_seg${s}`, opset) } : lastPositionHead(view, boundary, target, sequenceInputs, body, `ee_seg${s}`, opset);
    const nodes = [...[...body].sort((a, b) => position.get(a)! - position.get(b)!), ...head.nodes];
    const reads = new Set<string>();
    for (const n of [...body, ...head.replaced]) for (const i of view.inputsOf(n)) if (graphInputs.has(i)) reads.add(i);
    const inputs = [...(hiddenIn ? [hiddenIn] : []), ...view.inputs.map((i) => i.name ?? "").filter((n) => reads.has(n))];
    const outputs = [target, ...presents, ...(hiddenOut ? [hiddenOut] : [])];
    const proto = subModel(augmented, `segment_${s}`, nodes, inputs, outputs, (t) => typeOf(t) ?? DataType.FLOAT);
    proto.graph!.initializer = [...(proto.graph!.initializer ?? []), ...head.em.initializers];
    return { index: s, firstLayer, lastLayer, hiddenIn, hiddenOut, logits: target, exit, inputs, outputs, proto };
  });
}

/** The original decoder: the augmented model without its exit heads. */
export function originalDecoder(augmented: ModelProto, meta: DecoderMetadata): ModelProto {
  const view = new Graph(augmented.graph!);
  const outputs = [meta.layout.logits, ...meta.layout.layers.flatMap((l) => [l.presentKey, l.presentValue])];
  const keep = needed(view, outputs, new Set());
  const g = shallowClone(augmented.graph!);
  g.node = view.sortedNodes().filter((n) => keep.has(n));
  g.output = (augmented.graph!.output ?? []).filter((o) => outputs.includes(o.name ?? ""));
  const used = new Set<string>();
  for (const n of g.node) for (const i of view.inputsOf(n)) used.add(i);
  g.initializer = (augmented.graph!.initializer ?? []).filter((t) => used.has(t.name ?? ""));
  const m = shallowClone(augmented);
  m.graph = g;
  m.metadata_props = (augmented.metadata_props ?? []).filter((p) => !p.key?.startsWith("ee-tool."));
  return m;
}

/**
 * HELIOS-style truncation: a decoder in the same layout that holds only the layers up to `exit`,
 * whose logits are that exit head's. Past and present of deeper layers are gone. The heads of
 * `earlier` exits stay as extra outputs (their names, ee_exit_<layers>), for a runtime that lets
 * confident tokens leave before.
 */
export function truncatedDecoder(augmented: ModelProto, meta: DecoderMetadata, exitId: number, earlier: readonly number[] = []): ModelProto {
  const find = (id: number): DecoderExitRecord => {
    const e = meta.exits.find((x) => x.id === id);
    if (!e) throw new EeToolError("EXIT_NOT_FOUND", `the model has no exit head ${id}`);
    return e;
  };
  const exit = find(exitId);
  const heads = earlier.map(find).map((e) => e.output);
  const view = new Graph(augmented.graph!);
  const kept = meta.layout.layers.slice(0, exit.layers);
  const presents = kept.flatMap((l) => [l.presentKey, l.presentValue]);
  const nodesSet = needed(view, [exit.output, ...presents, ...heads], new Set());
  const logits = meta.layout.logits;
  const nodes = view.sortedNodes().filter((n) => nodesSet.has(n)).map((n) => ({ ...shallowClone(n), output: (n.output ?? []).map((o) => (o === exit.output ? logits : o)) }));
  const graphInputs = new Set(view.inputs.map((i) => i.name ?? ""));
  const reads = new Set<string>();
  for (const n of nodesSet) for (const i of view.inputsOf(n)) if (graphInputs.has(i)) reads.add(i);
  const typeOf = declaredTypes(augmented);
  const proto = subModel(augmented, "truncated", nodes, view.inputs.map((i) => i.name ?? "").filter((n) => reads.has(n)), [logits, ...presents], (t) => typeOf(t) ?? DataType.FLOAT);
  proto.graph!.output!.push(...heads.map((h) => makeValueInfo(h, DataType.FLOAT)));
  const logitsInfo = (augmented.graph!.output ?? []).find((o) => o.name === logits);
  if (logitsInfo) proto.graph!.output![0] = logitsInfo;
  proto.metadata_props = [{ key: "ee-tool.truncated", value: JSON.stringify({ layers: exit.layers, of: meta.layers, exit: exit.id, earlier: heads }) }];
  return proto;
}
