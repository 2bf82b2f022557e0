/**
 * Decoder-only language models: recognising the layout (token ids, mask, positions, the KV pairs
 * of each layer, logits [batch, seq, vocab]) by the graph's structure, and the exit points of a
 * decoder: the residual stream after each layer.
 *
 * A KV pair is a rank-4 graph input (past) that a Concat joins with new keys or values into a
 * graph output (present), through Identity, Cast or one-input Concat nodes on the way. Which of a
 * layer's two pairs is the key: by name when the names say so ("key"/"value", "k"/"v"), otherwise
 * the value is the one whose present feeds a MatMul with softmax weights (or a fused attention's
 * value input). Layers are ordered by where their Concat sits in the graph.
 */
import type { ModelProto, NodeProto } from "../onnx/types.js";
import { Graph } from "../ir/graph.js";
import { typeInfo, type Dim } from "../ir/shapes.js";
import { EeToolError } from "../errors.js";
import { ort } from "../ort/ort.js";
import type { ExitAnalysis, ExitCandidate } from "./exits.js";

export interface KvLayer {
  pastKey: string;
  pastValue: string;
  presentKey: string;
  presentValue: string;
}

export interface DecoderLayout {
  inputIds: string;
  attentionMask?: string;
  positionIds?: string;
  logits: string;
  /** "kv": a past/present pair per layer; "none": a plain export that recomputes the prefix every step. */
  cache: "kv" | "none";
  layers: KvLayer[];
  /** Heads and head size of the cache (declared dims of the past inputs). */
  heads: number | null;
  headDim: number | null;
  /** Element type of the cache (ONNX data type). */
  cacheType: number;
  vocab: number | null;
  /** Positions a learned position embedding holds (its table's rows), null when positions are computed (rotary). */
  maxPositions: number | null;
  /**
   * Measured by the analysis: the batch is symbolic but the export fails above one window and runs
   * at one (an exporter's bug), so every pass feeds one window.
   */
  oneWindow?: boolean;
}

/**
 * Ops a past tensor may pass through on its way to the present: Identity, Cast, and Concat (the
 * join with the new keys or values; the TorchScript exporter also writes a one-input Concat
 * where a cache layer is first filled).
 */
const PASS_THROUGH = new Set(["Identity", "Cast", "Concat"]);

/**
 * The graph output a past input reaches through such a chain, and the last Concat on the way
 * (where the layer joins its new keys or values), or undefined.
 */
function presentOf(g: Graph, past: string, outputs: Set<string>): { present: string; join: NodeProto } | undefined {
  let cur = past;
  let join: NodeProto | undefined;
  for (let i = 0; i < 5; i++) {
    if (outputs.has(cur) && join) return { present: cur, join };
    const next = g.consumers(cur).find((n) => PASS_THROUGH.has(n.op_type ?? ""));
    if (!next) return undefined;
    if (next.op_type === "Concat") join = next;
    cur = next.output![0]!;
  }
  return outputs.has(cur) && join ? { present: cur, join } : undefined;
}

function rankOf(dims: Dim[] | undefined): number {
  return dims?.length ?? -1;
}

/** Nearest producers (a few steps back) of a tensor: does one of them have this op type? */
function comesFrom(g: Graph, t: string, op: string, depth = 4): boolean {
  const p = g.producer(t);
  if (!p) return false;
  if (p.op_type === op) return true;
  if (depth === 0) return false;
  return g.inputsOf(p).some((i) => comesFrom(g, i, op, depth - 1));
}

/**
 * Fused attention ops: ONNX's Attention (opset 23, which the torch exporter writes for
 * scaled_dot_product_attention) and onnxruntime's contrib ops; they hold their softmax inside.
 */
const ATTENTION_OPS = new Set(["Attention", "MultiHeadAttention", "GroupQueryAttention"]);

/** Does the present feed a MatMul whose other operand is attention weights (softmax), or a fused attention's value input? */
function isValueLike(g: Graph, present: string): boolean {
  const stack: Array<[string, number]> = [[present, 0]];
  while (stack.length) {
    const [t, d] = stack.pop()!;
    for (const n of g.consumers(t)) {
      if (ATTENTION_OPS.has(n.op_type ?? "") && n.input?.[2] === t) return true; // (query, key, value, ...)
      if (n.op_type === "MatMul") {
        const other = n.input![0] === t ? n.input![1]! : n.input![0]!;
        if (n.input![1] === t && comesFrom(g, other, "Softmax")) return true;
      } else if (d < 4 && ["Transpose", "Reshape", "Expand", "Unsqueeze", "Cast", "Identity"].includes(n.op_type ?? "")) {
        stack.push([n.output![0]!, d + 1]);
      }
    }
  }
  return false;
}

function nameKind(name: string): "key" | "value" | undefined {
  const n = name.toLowerCase();
  if (/key|(^|[._/])k($|[._/])/.test(n)) return "key";
  if (/value|(^|[._/])v($|[._/])/.test(n)) return "value";
  return undefined;
}

/**
 * The decoder layout of a model, or null when it is not a decoder LM (no rank-3 float output fed
 * by an integer token input). Throws a one-line error for a decoder whose cache cannot work.
 */
export function findDecoderLayout(model: ModelProto): DecoderLayout | null {
  const g = new Graph(model.graph!);
  const inputs = g.inputs.map((i) => ({ name: i.name ?? "", info: typeInfo(i.type) }));
  const outputs = g.outputs.map((o) => ({ name: o.name ?? "", info: typeInfo(o.type) }));
  const intRank2 = inputs.filter((i) => (i.info.elemType === 7 || i.info.elemType === 6) && rankOf(i.info.shape) === 2);
  const ids = intRank2.find((i) => /input_ids|ids|tokens/i.test(i.name)) ?? intRank2.find((i) => !/mask|position/i.test(i.name));
  if (!ids) return null;
  const rank3 = outputs.filter((o) => rankOf(o.info.shape) === 3 && [1, 10, 16].includes(o.info.elemType ?? 0));
  const logits = rank3.find((o) => /logits/i.test(o.name)) ?? rank3[0];
  if (!logits) return null;

  // KV pairs: past input -> Concat -> (Identity/Cast) -> present output.
  const outputNames = new Set(outputs.map((o) => o.name));
  const order = g.sortedNodes();
  const position = new Map<NodeProto, number>(order.map((n, i) => [n, i]));
  const pairs: Array<{ past: string; present: string; at: number }> = [];
  const rank4Inputs = inputs.filter((i) => rankOf(i.info.shape) === 4);
  for (const inp of rank4Inputs) {
    const found = presentOf(g, inp.name, outputNames);
    if (found) pairs.push({ past: inp.name, present: found.present, at: position.get(found.join) ?? 0 });
  }
  const presentsLike = outputs.filter((o) => rankOf(o.info.shape) === 4);
  if (pairs.length === 0) {
    if (rank4Inputs.length > 0 && presentsLike.length === 0) {
      throw new EeToolError("UNSUPPORTED", `decoder has ${rank4Inputs.length} past key/value inputs but no present outputs: a cache it cannot update`, {
        hint: "Export the decoder with use_cache=True so that it returns present.{i}.key/value (Optimum: --task text-generation-with-past).",
      });
    }
    return {
      inputIds: ids.name, logits: logits.name, cache: "none", layers: [], heads: null, headDim: null, cacheType: 1,
      vocab: numberOr(logits.info.shape?.[2]), maxPositions: positionTable(g, inputs.map((i) => i.name), ids.name),
      ...sideInputs(inputs.map((i) => i.name), ids.name),
    };
  }
  if (pairs.length % 2 !== 0 || pairs.length !== rank4Inputs.length) {
    throw new EeToolError("UNSUPPORTED", `the key/value cache does not pair up: ${rank4Inputs.length} rank-4 inputs, ${pairs.length} of them joined into present outputs by a Concat`, {
      hint: "ee-tool needs every past input to be concatenated with the new keys or values into a present output (the Optimum decoder-with-past layout).",
    });
  }
  pairs.sort((a, b) => a.at - b.at);
  const layers: KvLayer[] = [];
  for (let i = 0; i < pairs.length; i += 2) {
    const a = pairs[i]!;
    const b = pairs[i + 1]!;
    let key = a;
    let value = b;
    const ka = nameKind(a.past);
    const kb = nameKind(b.past);
    if (ka && kb && ka !== kb) {
      if (ka === "value") [key, value] = [b, a];
    } else if (isValueLike(g, a.present) && !isValueLike(g, b.present)) {
      [key, value] = [b, a];
    }
    layers.push({ pastKey: key.past, pastValue: value.past, presentKey: key.present, presentValue: value.present });
  }
  const pastInfo = inputs.find((i) => i.name === layers[0]!.pastKey)!.info;
  for (const l of layers) {
    const k = inputs.find((i) => i.name === l.pastKey)!.info.shape!;
    const v = inputs.find((i) => i.name === l.pastValue)!.info.shape!;
    if (typeof k[1] === "number" && typeof v[1] === "number" && k[1] !== v[1]) {
      throw new EeToolError("UNSUPPORTED", `KV shapes do not pair up: '${l.pastKey}' has ${k[1]} heads, '${l.pastValue}' ${v[1]}`, {
        hint: "The past key and value of a layer must have the same number of heads ([batch, heads, past, head_dim]).",
      });
    }
  }
  return {
    inputIds: ids.name, logits: logits.name, cache: "kv", layers,
    heads: numberOr(pastInfo.shape?.[1]), headDim: numberOr(pastInfo.shape?.[3]), cacheType: pastInfo.elemType ?? 1,
    vocab: numberOr(logits.info.shape?.[2]), maxPositions: positionTable(g, inputs.map((i) => i.name), ids.name),
    ...sideInputs(inputs.map((i) => i.name), ids.name),
  };
}

/**
 * Rows of a learned position table: a Gather from a 2-D initializer indexed by the position ids,
 * or (GPT-2 style exports that make the positions inside the graph) the 2-D table of the same
 * width whose Gather is added to the token embedding's.
 */
function positionTable(g: Graph, inputs: string[], ids: string): number | null {
  const pos = inputs.find((n) => n !== ids && /position/i.test(n));
  return (pos ? tableAlong(g, pos, 3) : null) ?? addedTable(g, ids);
}

const TABLE_INDEX_OPS = ["Cast", "Identity", "Unsqueeze", "Reshape", "Add", "Sub", "Expand", "Squeeze"];

/** The first 2-D initializer Gathered with indices derived (within `hops` shape-keeping ops) from tensor t. */
function tableAlong(g: Graph, t0: string, hops: number): number | null {
  const stack: Array<[string, number]> = [[t0, 0]];
  while (stack.length) {
    const [t, d] = stack.pop()!;
    for (const n of g.consumers(t)) {
      if (n.op_type === "Gather" && n.input?.[1] === t && g.isInitializer(n.input[0]!)) {
        const dims = g.initializer(n.input[0]!)!.dims ?? [];
        if (dims.length === 2) return Number(dims[0]);
      }
      if (d < hops && TABLE_INDEX_OPS.includes(n.op_type ?? "")) stack.push([n.output![0]!, d + 1]);
    }
  }
  return null;
}

function addedTable(g: Graph, ids: string): number | null {
  // The token embedding: the Gather of a 2-D table by the token ids.
  let embedding: { out: string; width: number; table: string } | null = null;
  const stack: Array<[string, number]> = [[ids, 0]];
  while (stack.length && !embedding) {
    const [t, d] = stack.pop()!;
    for (const n of g.consumers(t)) {
      if (n.op_type === "Gather" && n.input?.[1] === t && g.isInitializer(n.input[0]!) && (g.initializer(n.input[0]!)!.dims ?? []).length === 2) {
        embedding = { out: n.output![0]!, width: Number(g.initializer(n.input[0]!)!.dims![1]), table: n.input[0]! };
        break;
      }
      if (d < 2 && ["Cast", "Identity", "Reshape", "Unsqueeze", "Squeeze", "Flatten"].includes(n.op_type ?? "")) stack.push([n.output![0]!, d + 1]);
    }
  }
  if (!embedding) return null;
  for (const add of g.consumers(embedding.out)) {
    if (add.op_type !== "Add") continue;
    // The other addend, back through shape-keeping ops, to a Gather of another table of that width.
    let t: string | undefined = add.input?.find((x) => x !== embedding!.out);
    for (let hop = 0; t && hop < 4; hop++) {
      const p = g.producer(t);
      if (!p) break;
      if (p.op_type === "Gather" && g.isInitializer(p.input![0]!) && p.input![0] !== embedding.table) {
        const dims = g.initializer(p.input![0]!)!.dims ?? [];
        return dims.length === 2 && Number(dims[1]) === embedding.width ? Number(dims[0]) : null;
      }
      t = TABLE_INDEX_OPS.includes(p.op_type ?? "") ? p.input?.[0] : undefined;
    }
  }
  return null;
}

function numberOr(d: Dim | undefined): number | null {
  return typeof d === "number" ? d : null;
}

function sideInputs(names: string[], ids: string): { attentionMask?: string; positionIds?: string } {
  const mask = names.find((n) => n !== ids && /mask/i.test(n));
  const pos = names.find((n) => n !== ids && /position/i.test(n));
  return { ...(mask ? { attentionMask: mask } : {}), ...(pos ? { positionIds: pos } : {}) };
}

/** One line saying what was found. */
export function describeDecoder(l: DecoderLayout): string {
  const side = [l.attentionMask, l.positionIds].filter(Boolean).join(", ");
  const cache = l.cache === "kv"
    ? `KV cache of ${l.layers.length} layers (${l.heads ?? "?"} heads x ${l.headDim ?? "?"}; '${l.layers[0]!.pastKey}' -> '${l.layers[0]!.presentKey}', ...)`
    : "no KV cache (every step recomputes the prefix)";
  const positions = l.maxPositions !== null ? `; ${l.maxPositions} positions (a learned table)` : "";
  return `decoder LM: tokens '${l.inputIds}'${side ? ` (+ ${side})` : ""} -> '${l.logits}' [batch, seq, ${l.vocab ?? "vocab"}], ${cache}${positions}`;
}

export interface DecoderExit {
  /** Decoder layer after which this exit reads the residual stream (0-based). */
  layer: number;
  candidate: ExitCandidate;
}

/**
 * The residual stream after each decoder layer, among the exit candidates: for layer j, the
 * deepest block end that lies after layer j's cache (its presents do not depend on it) and before
 * layer j+1's (whose presents do). The analysis must keep every point (AnalyzeOptions.everyPoint),
 * so that the residual stream after the last layer, where the model's own norm and head start, is
 * among them. Without a cache, every block-end candidate is a layer exit.
 */
export function decoderExits(model: ModelProto, layout: DecoderLayout, analysis: ExitAnalysis): DecoderExit[] {
  const g = new Graph(model.graph!);
  const ancestorsOf = (t: string): Set<string> => {
    const seen = new Set<string>();
    const stack = [t];
    while (stack.length) {
      const x = stack.pop()!;
      if (seen.has(x)) continue;
      seen.add(x);
      const p = g.producer(x);
      if (p) for (const i of g.inputsOf(p)) stack.push(i);
    }
    return seen;
  };
  // What marks a layer: its cache outputs, or (no cache) its attention's softmax.
  const markers = layout.cache === "kv" ? layout.layers.map((l) => [l.presentKey, l.presentValue]) : softmaxOutputs(g).map((t) => [t]);
  const presentAncestors = markers.map((m) => {
    const a = new Set<string>();
    for (const t of m) for (const x of ancestorsOf(t)) a.add(x);
    return a;
  });
  const out: DecoderExit[] = [];
  for (let j = 0; j < markers.length; j++) {
    const inLayer = analysis.candidates.filter((c) => !presentAncestors[j]!.has(c.tensor) && (j + 1 >= markers.length || presentAncestors[j + 1]!.has(c.tensor)));
    // The deepest block end: after the last layer, points inside the final norm follow it.
    const sorted = inLayer.sort((a, b) => b.depth - a.depth);
    const pick = sorted.find((c) => c.kind === "block") ?? sorted[0];
    if (pick) out.push({ layer: j, candidate: pick });
  }
  return out;
}

/** Attention softmax (or fused attention) outputs in graph order: one per layer of a decoder without a cache. */
function softmaxOutputs(g: Graph): string[] {
  return g.sortedNodes().filter((n) => n.op_type === "Softmax" || ATTENTION_OPS.has(n.op_type ?? "")).map((n) => n.output![0]!);
}

/** Decoder layers of a model without a cache: its attention softmaxes. */
export function attentionLayers(model: ModelProto): number {
  return softmaxOutputs(new Graph(model.graph!)).length;
}

/** Whether the model declares an input int32 (token ids, masks and positions are int64 otherwise). */
export function isInt32Input(model: ModelProto, name: string): boolean {
  return typeInfo((model.graph!.input ?? []).find((i) => i.name === name)?.type).elemType === 6;
}

/** Integer tensor of an input's declared type (int64 unless the model declares int32). */
export function intTensor(model: ModelProto | boolean, name: string, values: ArrayLike<number>, dims: readonly number[]): ort.Tensor {
  const int32 = typeof model === "boolean" ? model : isInt32Input(model, name);
  if (int32) return new ort.Tensor("int32", Int32Array.from(values), dims);
  const out = new BigInt64Array(values.length);
  for (let i = 0; i < values.length; i++) out[i] = BigInt(values[i]!);
  return new ort.Tensor("int64", out, dims);
}

/** An empty cache tensor [batch, heads, past, head_dim] of the cache's type. */
export function cacheTensor(layout: DecoderLayout, batch: number, past: number, data?: Float32Array): ort.Tensor {
  const dims = [batch, layout.heads ?? 1, past, layout.headDim ?? 1];
  const n = dims.reduce((a, b) => a * b, 1);
  if (layout.cacheType === 10) return new ort.Tensor("float16", new Uint16Array(n), dims);
  return new ort.Tensor("float32", data ?? new Float32Array(n), dims);
}

/**
 * Feeds for `tokens` ([batch, seq], row-major) following `past` cached positions: ones for the
 * attention mask, positions past..past+seq-1, and zero caches of that length for every layer not
 * given in `caches`.
 */
export function decoderFeeds(
  model: ModelProto,
  layout: DecoderLayout,
  tokens: ArrayLike<number>,
  batch: number,
  past: number,
  caches: Record<string, ort.Tensor> = {},
): Record<string, ort.Tensor> {
  const seq = tokens.length / batch;
  const feeds: Record<string, ort.Tensor> = { [layout.inputIds]: intTensor(model, layout.inputIds, tokens, [batch, seq]) };
  if (layout.attentionMask) feeds[layout.attentionMask] = intTensor(model, layout.attentionMask, new Array<number>(batch * (past + seq)).fill(1), [batch, past + seq]);
  if (layout.positionIds) {
    const pos = new Array<number>(batch * seq);
    for (let b = 0; b < batch; b++) for (let i = 0; i < seq; i++) pos[b * seq + i] = past + i;
    feeds[layout.positionIds] = intTensor(model, layout.positionIds, pos, [batch, seq]);
  }
  for (const l of layout.layers) {
    for (const name of [l.pastKey, l.pastValue]) feeds[name] = caches[name] ?? cacheTensor(layout, batch, past);
  }
  return feeds;
}

/** The batch the token input declares when it is a number (an export with a fixed batch), else null. */
export function declaredBatch(model: ModelProto, layout: DecoderLayout): number | null {
  const input = (model.graph!.input ?? []).find((i) => i.name === layout.inputIds);
  const d = typeInfo(input?.type).shape?.[0];
  return typeof d === "number" ? d : null;
}

/** The heads and head size of the cache, which the runtime must know to build empty caches. */
export function requireCacheDims(layout: DecoderLayout): void {
  if (layout.cache === "kv" && (layout.heads === null || layout.headDim === null)) {
    throw new EeToolError("UNSUPPORTED", `the past inputs ('${layout.layers[0]!.pastKey}') do not declare their heads and head size`, {
      hint: "Export with numeric heads and head_dim in the past inputs' shapes ([batch, heads, past, head_dim]; only batch and past symbolic), as Optimum does.",
    });
  }
}

/**
 * Optimum's merged decoder: one If on a boolean graph input (use_cache_branch) whose branches are
 * the with-past and the no-past graphs. The with-past branch (the one that concatenates past
 * inputs) is inlined, and the boolean input dropped: the with-past graph also serves the first
 * step, with a zero-length past. Returns null for any other model.
 */
export function inlineCacheBranch(model: ModelProto): { model: ModelProto; note: string } | null {
  const g = model.graph!;
  const boolInputs = new Set((g.input ?? []).filter((i) => typeInfo(i.type).elemType === 9).map((i) => i.name ?? ""));
  const ifNode = (g.node ?? []).find((n) => n.op_type === "If" && boolInputs.has(n.input?.[0] ?? ""));
  if (!ifNode) return null;
  const rank4 = new Set((g.input ?? []).filter((i) => rankOf(typeInfo(i.type).shape) === 4).map((i) => i.name ?? ""));
  const branches = (ifNode.attribute ?? []).filter((a) => a.g && (a.name === "then_branch" || a.name === "else_branch"));
  const readsPast = (sub: NonNullable<(typeof branches)[number]["g"]>): boolean => (sub.node ?? []).some((n) => n.op_type === "Concat" && (n.input ?? []).some((i) => rank4.has(i)));
  const withPast = branches.find((b) => readsPast(b.g!));
  if (!withPast) return null;
  const sub = withPast.g!;
  const names = new Set([...(g.initializer ?? []).map((t) => t.name ?? ""), ...(g.node ?? []).flatMap((n) => n.output ?? [])]);
  const clash = [...(sub.initializer ?? []), ...(sub.node ?? []).flatMap((n) => (n.output ?? []).map((o) => ({ name: o })))].find((t) => names.has(t.name ?? ""));
  if (clash) throw new EeToolError("UNSUPPORTED", `merged decoder: the with-past branch redefines '${clash.name}' of the outer graph`);
  const bridges = (ifNode.output ?? []).map((o, i) => ({ op_type: "Identity", input: [sub.output![i]!.name!], output: [o], name: `ee_inline/${o}` }));
  const cond = ifNode.input![0]!;
  const graph = {
    ...g,
    node: [...(g.node ?? []).filter((n) => n !== ifNode), ...(sub.node ?? []), ...bridges],
    initializer: [...(g.initializer ?? []), ...(sub.initializer ?? [])],
    input: (g.input ?? []).filter((i) => i.name !== cond),
    value_info: [...(g.value_info ?? []), ...(sub.value_info ?? [])],
  };
  const out: ModelProto = { ...model, graph };
  new Graph(out.graph!).toposort();
  return { model: out, note: `merged decoder: inlined the ${withPast.name === "then_branch" ? "then" : "else"} branch of If '${ifNode.name ?? ""}' (the with-past graph) and dropped the input '${cond}'` };
}
