/**
 * An augmented model that keeps only some of its ramps. What the runtime optimises and runs for a
 * plan: a ramp that stays in the graph keeps its exit tensor alive, and so stops onnxruntime fusing
 * across that cut (stages/optimize.ts), even when the plan never uses the exit.
 */
import type { ModelProto } from "../onnx/types.js";
import { Graph } from "../ir/graph.js";
import { shallowClone } from "../ir/clone.js";
import { EeToolError } from "../errors.js";
import { readRampMetadata, writeRampMetadata } from "./metadata.js";

export function withRamps(model: ModelProto, ids: Iterable<number>): ModelProto {
  const meta = readRampMetadata(model);
  if (!meta) throw new EeToolError("NO_RAMPS", "the model has no ee-tool ramps");
  const keep = new Set(ids);
  for (const id of keep) if (!meta.ramps.some((r) => r.id === id)) throw new EeToolError("INTERNAL", `the model has no ramp ${id}`);
  const dropped = new Set(meta.ramps.filter((r) => !keep.has(r.id)).map((r) => r.output));
  const g = model.graph!;
  const out = shallowClone(model);
  out.graph = { ...g, node: [...(g.node ?? [])], initializer: [...(g.initializer ?? [])], output: (g.output ?? []).filter((o) => !dropped.has(o.name ?? "")) };
  new Graph(out.graph).cleanup();
  writeRampMetadata(out, { ...meta, ramps: meta.ramps.filter((r) => keep.has(r.id)) });
  return out;
}
