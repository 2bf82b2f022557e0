/**
 * Candidate exit points: tensors that every path from the main input to the model output passes
 * through (after a residual block, an encoder layer, a conv stage).
 *
 * Data dependence flows from the main input through every op except Shape and Size, so shape
 * plumbing, position ids and attention masks built from other inputs are "side" values: they may
 * cross a cut and are passed along. A tensor T lies on every main path iff
 * paths(input→T) · paths(T→output) = paths(input→output); path counts are kept modulo two large
 * primes, which makes an accidental match practically impossible.
 */
import type { NodeProto } from "../onnx/types.js";
import { Graph } from "../ir/graph.js";
import { nodeFlops } from "./flops.js";

export type Layout = "NCHW" | "NHWC" | "NSD" | "ND";

export interface ExitCandidate {
  /** Stable id: position among all candidates in topological order, from 0. */
  id: number;
  tensor: string;
  /** Concrete shape observed with the discovery batch. */
  shape: number[];
  layout: Layout;
  /** Fraction of the model's FLOPs computed before this point. */
  depth: number;
  /** Side tensors computed before the cut and used after it (passed along, not a reason to reject). */
  crossing: string[];
  /** Graph inputs read after the cut besides the exit tensor. */
  inputsAfter: string[];
  /**
   * "block" when the stretch of graph since the previous candidate joins several paths (a
   * residual Add, an inception Concat, a squeeze-excitation Mul): the end of a block. "layer" when
   * it is a single chain (plain conv stacks, non-residual blocks).
   */
  kind: "block" | "layer";
}

export interface ExitAnalysis {
  mainInput: string;
  output: string;
  totalFlops: number;
  candidates: ExitCandidate[];
}

export interface ShapeFacts {
  dims: number[];
  elemType: number | undefined;
}

/** Ops that do a layer's real work (a branch through one of them is a path of its own). */
const HEAVY = new Set(["Conv", "ConvTranspose", "MatMul", "Gemm", "Einsum", "LSTM", "GRU", "RNN", "Attention"]);

const P1 = 2147483647n;
const P2 = 1000000007n;

/** Remaining FLOPs below this fraction make a ramp pointless (it would be the model's own head). */
const MIN_REMAINING = 0.02;
/** Candidates closer than this in depth are one boundary (Add then Relu, say); the later one stays. */
const SAME_BOUNDARY = 0.005;

function layoutOf(dims: number[], batch: number): Layout | undefined {
  if (dims[0] !== batch) return undefined;
  if (dims.length === 2) return "ND";
  if (dims.length === 3) return "NSD";
  if (dims.length === 4) {
    const [, a, b, c] = dims as [number, number, number, number];
    if (b === c && a !== b) return "NCHW";
    if (a === b && c !== b) return "NHWC";
    return "NCHW";
  }
  return undefined;
}

/** Which graph input drives the model: the one the most FLOPs depend on. */
function pickMainInput(graph: Graph, order: NodeProto[], flops: Map<NodeProto, number>): string {
  const inputs = graph.inputs.map((i) => i.name ?? "");
  let best = inputs[0] ?? "";
  let bestCount = -1;
  for (const name of inputs) {
    const dep = new Set([name]);
    let count = 0;
    for (const n of order) {
      if (n.op_type === "Shape" || n.op_type === "Size") continue;
      if (graph.inputsOf(n).some((i) => dep.has(i))) {
        count += flops.get(n) ?? 0;
        for (const o of n.output ?? []) if (o) dep.add(o);
      }
    }
    if (count > bestCount) {
      best = name;
      bestCount = count;
    }
  }
  return best;
}

export function findExitCandidates(
  graph: Graph,
  shapes: Map<string, ShapeFacts>,
  options: { output?: string; batch: number; mainInput?: string; minRemaining?: number; sameBoundary?: number },
): ExitAnalysis {
  const output = options.output ?? graph.outputs[0]?.name ?? "";
  // Only what the chosen output depends on: other outputs (ramps of an augmented model) are ignored.
  const live = graph.liveNames([output]);
  const order = graph.sortedNodes().filter((n) => (n.output ?? []).some((o) => live.has(o)));
  const shapeOf = (name: string): number[] | undefined => shapes.get(name)?.dims ?? (graph.initializer(name) ? graphInitDims(graph, name) : undefined);
  const flops = new Map<NodeProto, number>(order.map((n) => [n, nodeFlops(n, shapeOf)]));
  const totalFlops = [...flops.values()].reduce((a, b) => a + b, 0) || 1;
  const mainInput = options.mainInput ?? pickMainInput(graph, order, flops);

  // Main-dependent tensors and forward path counts.
  const f1 = new Map<string, bigint>([[mainInput, 1n]]);
  const f2 = new Map<string, bigint>([[mainInput, 1n]]);
  const mainInputsOf = new Map<NodeProto, string[]>();
  for (const n of order) {
    if (n.op_type === "Shape" || n.op_type === "Size") continue;
    const ins = [...new Set(graph.inputsOf(n))].filter((i) => f1.has(i));
    if (ins.length === 0) continue;
    mainInputsOf.set(n, ins);
    let a = 0n;
    let b = 0n;
    for (const i of ins) {
      a = (a + f1.get(i)!) % P1;
      b = (b + f2.get(i)!) % P2;
    }
    for (const o of n.output ?? []) {
      if (!o) continue;
      f1.set(o, a);
      f2.set(o, b);
    }
  }
  // Backward path counts to the output.
  const b1 = new Map<string, bigint>([[output, 1n]]);
  const b2 = new Map<string, bigint>([[output, 1n]]);
  for (let k = order.length - 1; k >= 0; k--) {
    const n = order[k]!;
    const ins = mainInputsOf.get(n);
    if (!ins) continue;
    let a = 0n;
    let b = 0n;
    for (const o of n.output ?? []) {
      a = (a + (b1.get(o) ?? 0n)) % P1;
      b = (b + (b2.get(o) ?? 0n)) % P2;
    }
    if (a === 0n && b === 0n) continue;
    for (const i of ins) {
      b1.set(i, ((b1.get(i) ?? 0n) + a) % P1);
      b2.set(i, ((b2.get(i) ?? 0n) + b) % P2);
    }
  }
  const total1 = f1.get(output);
  const total2 = f2.get(output);


  const raw: Array<{ tensor: string; node: NodeProto; index: number }> = [];
  order.forEach((n, index) => {
    for (const o of n.output ?? []) {
      if (!o || o === output || !f1.has(o) || total1 === undefined) continue;
      if ((f1.get(o)! * (b1.get(o) ?? 0n)) % P1 !== total1) continue;
      if ((f2.get(o)! * (b2.get(o) ?? 0n)) % P2 !== total2) continue;
      raw.push({ tensor: o, node: n, index });
    }
  });

  const candidates: ExitCandidate[] = [];
  const ancestors = new Map<ExitCandidate, Set<NodeProto>>();
  const producers = new Map<string, NodeProto>();
  for (const n of order) for (const o of n.output ?? []) if (o) producers.set(o, n);
  for (const c of raw) {
    const facts = shapes.get(c.tensor);
    if (!facts || (facts.elemType !== 1 && facts.elemType !== 10 && facts.elemType !== 16)) continue;
    const layout = layoutOf(facts.dims, options.batch);
    if (!layout) continue;
    // Ancestors of the exit tensor: everything stage 1 must compute.
    const before = new Set<NodeProto>();
    const stack = [c.tensor];
    const seen = new Set<string>();
    while (stack.length) {
      const t = stack.pop()!;
      if (seen.has(t)) continue;
      seen.add(t);
      const p = producers.get(t);
      if (p && !before.has(p)) {
        before.add(p);
        for (const i of graph.inputsOf(p)) stack.push(i);
      }
    }
    let flopsBefore = 0;
    for (const n of before) flopsBefore += flops.get(n) ?? 0;
    const crossing = new Set<string>();
    const inputsAfter = new Set<string>();
    for (const n of order) {
      if (before.has(n)) continue;
      for (const i of graph.inputsOf(n)) {
        if (i === c.tensor || graph.isInitializer(i)) continue;
        const p = producers.get(i);
        if (p && before.has(p)) crossing.add(i);
        else if (!p && graph.isGraphInput(i)) inputsAfter.add(i);
      }
    }
    const candidate: ExitCandidate = {
      id: -1, tensor: c.tensor, shape: facts.dims, layout, depth: flopsBefore / totalFlops,
      crossing: [...crossing], inputsAfter: [...inputsAfter], kind: "layer",
    };
    candidates.push(candidate);
    ancestors.set(candidate, before);
  }
  // Keep points with real work on both sides; merge points of one boundary (keep the later).
  const same = options.sameBoundary ?? SAME_BOUNDARY;
  const useful = candidates.filter((c) => c.depth >= same && 1 - c.depth >= (options.minRemaining ?? MIN_REMAINING));
  const merged: ExitCandidate[] = [];
  for (const c of useful) {
    const last = merged[merged.length - 1];
    if (last && c.depth - last.depth < same) merged[merged.length - 1] = c;
    else merged.push(c);
  }
  // A node joining several paths is a real merge unless its inputs are one value through cheap
  // element-wise chains (x * sigmoid(x), GELU's x * erf(...)): activations, not block structure.
  const rootOf = (tensor: string): string => {
    let t = tensor;
    for (;;) {
      const p = producers.get(t);
      const ins = p ? mainInputsOf.get(p) : undefined;
      if (!p || !ins || ins.length !== 1 || HEAVY.has(p.op_type ?? "")) return t;
      t = ins[0]!;
    }
  };
  const isMerge = (n: NodeProto): boolean => {
    const ins = mainInputsOf.get(n) ?? [];
    return ins.length >= 2 && new Set(ins.map(rootOf)).size >= 2;
  };
  merged.forEach((c, i) => {
    c.id = i;
    const previous = i > 0 ? ancestors.get(merged[i - 1]!)! : new Set<NodeProto>();
    for (const n of ancestors.get(c)!) {
      if (!previous.has(n) && isMerge(n)) {
        c.kind = "block";
        break;
      }
    }
  });
  return { mainInput, output, totalFlops, candidates: merged };
}

function graphInitDims(graph: Graph, name: string): number[] {
  return (graph.initializer(name)!.dims ?? []).map((d) => Number(d.toString()));
}
