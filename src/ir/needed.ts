import type { NodeProto } from "../onnx/types.js";
import type { Graph } from "./graph.js";

/** Nodes needed for `targets`, stopping at `available` tensors. */
export function needed(view: Graph, targets: string[], available: Set<string>): Set<NodeProto> {
  const out = new Set<NodeProto>();
  const stack = [...targets];
  const seen = new Set<string>();
  while (stack.length) {
    const t = stack.pop()!;
    if (seen.has(t) || available.has(t)) continue;
    seen.add(t);
    const p = view.producer(t);
    if (p && !out.has(p)) {
      out.add(p);
      for (const i of view.inputsOf(p)) stack.push(i);
    }
  }
  return out;
}

