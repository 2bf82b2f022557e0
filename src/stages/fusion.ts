/**
 * What an exit's cut does to onnxruntime's fused graph of the model: the op types of the model's
 * optimised backbone with the cut's tensor kept alive, counted less those without it. A negative
 * count is a fused op lost at that cut (a `SkipLayerNormalization` fused from a residual `Add` and
 * the `LayerNormalization` after it, an attention fusion), the positive ones what runs apart. An op
 * folded into another as an attribute shows only as positive: onnxruntime's NCHWc `Conv` takes in
 * a following `Relu` (and a residual `Add`), so a cut between them is `Relu +1` with the `Conv`
 * count unchanged. An empty change: the cut fuses as the model does.
 *
 * Why: a tensor something else reads (a ramp, or a graph output) cannot be fused away, so a cut
 * inside a fused block costs the fusion on top of its ramp. `profile` times that cost per exit;
 * this says where it comes from, and `inspect --fusion` shows it before any ramp is inserted.
 */
import type { ModelProto } from "../onnx/types.js";
import type { OnnxModel } from "../onnx/model.js";
import { Graph } from "../ir/graph.js";
import { shallowClone } from "../ir/clone.js";
import { makeValueInfo } from "../ir/shapes.js";
import { declaredTypes, needed } from "./split.js";
import { eachRampAlone, optimizedGraph, type RuntimeModel } from "./optimize.js";
import type { SessionSettings } from "../ort/ort.js";

/** Op type (domain-qualified outside the default domain) -> count with the cut less count without. */
export type FusionChange = Record<string, number>;

/** Op types and counts of the nodes the model's output needs (ramps and other outputs left out). */
export function backboneOps(proto: ModelProto, output: string): Map<string, number> {
  const counts = new Map<string, number>();
  for (const n of needed(new Graph(proto.graph!), [output], new Set())) {
    const op = n.domain && n.domain !== "ai.onnx" ? `${n.domain}.${n.op_type}` : n.op_type ?? "";
    counts.set(op, (counts.get(op) ?? 0) + 1);
  }
  return counts;
}

/** Each op type whose count differs, with the difference. */
export function opChange(without: Map<string, number>, withCut: Map<string, number>): FusionChange {
  const diff: FusionChange = {};
  for (const op of new Set([...without.keys(), ...withCut.keys()])) {
    const d = (withCut.get(op) ?? 0) - (without.get(op) ?? 0);
    if (d !== 0) diff[op] = d;
  }
  return diff;
}

/**
 * What each ramp alone changes in onnxruntime's optimised graph (Profile.ramps[].fusion), against
 * the model optimised with no ramp at all (`alone[k]` keeps one ramp). Null for a ramp whose graph
 * was not optimised (another provider, optimisation off, a model too large to re-serialise).
 */
export function fusionChanges(bare: RuntimeModel, alone: readonly RuntimeModel[]): Map<number, FusionChange | null> {
  const out = new Map<number, FusionChange | null>();
  const without = bare.optimized ? backboneOps(bare.proto, bare.meta.output) : null;
  for (const m of alone) out.set(m.meta.ramps[0]!.id, without && m.optimized ? opChange(without, backboneOps(m.proto, m.meta.output)) : null);
  return out;
}

/** An augmented model's ramps, each alone in the graph as a plan with that one exit runs it (what profile records). */
export async function rampFusion(model: OnnxModel, settings: SessionSettings = {}): Promise<Map<number, FusionChange | null>> {
  const { alone, none } = await eachRampAlone(model, settings);
  return fusionChanges(none, alone);
}

/**
 * A model without ramps: each candidate tensor kept alive as an extra graph output (what a ramp
 * reading it does to the graph), against the model as it is. Null for every tensor when the model's
 * optimised graph cannot be had, and for a tensor whose graph could not be optimised.
 */
export async function tensorFusion(model: OnnxModel, output: string, tensors: readonly string[], settings: SessionSettings = {}): Promise<Map<string, FusionChange | null>> {
  const out = new Map<string, FusionChange | null>();
  const bare = await optimizedGraph(model, settings);
  const without = bare ? backboneOps(bare, output) : null;
  const typeOf = declaredTypes(model.proto);
  const g = model.proto.graph!;
  for (const t of tensors) {
    if (!without) {
      out.set(t, null);
      continue;
    }
    const proto = shallowClone(model.proto);
    proto.graph = { ...g, output: [...(g.output ?? []), makeValueInfo(t, typeOf(t)!)] };
    const cut = await optimizedGraph({ ...model, proto }, settings);
    out.set(t, cut ? opChange(without, backboneOps(cut, output)) : null);
  }
  return out;
}
