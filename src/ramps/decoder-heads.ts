/**
 * Exit heads of a decoder LM (the decoder counterpart of ramps): at the residual stream after a
 * layer, a fitted affine correction h' = h A + b followed by a copy of the model's own final norm
 * and LM head (the graph from the residual stream after the last layer to the logits).
 *
 * The correction is fitted label-free under teacher forcing with the backbone frozen: ridge
 * regression of the residual stream after the last layer (what the model's own head reads) on
 * the stream at the exit, over every token of the fitting sequences, shrunk towards the identity.
 * It has a closed form, so it is deterministic and takes seconds; the regression matches the
 * head's input rather than its output distribution (no gradient through the head is needed).
 */
import type { ModelProto, NodeProto } from "../onnx/types.js";
import type { OnnxModel } from "../onnx/model.js";
import { Graph } from "../ir/graph.js";
import { NodeEmitter, defaultOpset } from "../ir/builder.js";
import { makeValueInfo, typeInfo } from "../ir/shapes.js";
import { shallowClone } from "../ir/clone.js";
import { DataType } from "../onnx/dtype.js";
import { analyzeExits, requireFloat32Logits } from "../analysis/analyze.js";
import { attentionLayers, declaredBatch, decoderExits, decoderFeeds, findDecoderLayout, inlineCacheBranch, requireCacheDims, type DecoderExit, type DecoderLayout } from "../analysis/decoder.js";
import type { ExitAnalysis } from "../analysis/exits.js";
import { openTokens, tokenSetHash, type TokenSet } from "../data/tokens.js";
import { createSession, runSession, runtimeBytes, type SessionSettings, type ort } from "../ort/ort.js";
import { EeToolError } from "../errors.js";
import { Rng } from "../util/rng.js";
import { needed } from "../ir/needed.js";
import { packHashes, writeDecoderMetadata, type DecoderExitRecord, type DecoderMetadata } from "./metadata.js";
import { TOOL_VERSION, type ProgressFn } from "./insert.js";

export interface DecoderInsertOptions {
  /** Token ids [sequences, length] (.npy). */
  calib: string;
  /** auto / all (every layer but the last), or comma-separated layer counts (2 = after the second layer). */
  exits?: string;
  seed?: number;
  fitFraction?: number;
  batchSize?: number;
  /** Shrinkage towards the identity, relative to the mean variance of the exit's stream. */
  ridge?: number;
  settings?: SessionSettings;
  onProgress?: ProgressFn;
}

export interface DecoderInsertResult {
  model: OnnxModel;
  metadata: DecoderMetadata;
  analysis: ExitAnalysis;
  exits: DecoderExit[];
  timings: { analyzeMs: number; extractMs: number; fitMs: number };
  /** What the analysis found worth saying (an export that runs one window a call). */
  note?: string;
}

export const DEFAULT_RIDGE = 1e-3;
/** Share of the fitting sequences kept back to report each head's agreement. */
const HOLDOUT = 0.2;

/**
 * The decoder's exit points: one per layer, the last one where the model's own head starts. The
 * probe feeds two windows unless the batch is fixed; an export that fails at two but runs at one
 * comes back with `oneWindow` set in its layout, and a note that says so.
 */
export async function analyzeDecoder(
  model: OnnxModel, given: DecoderLayout, settings?: SessionSettings,
): Promise<{ analysis: ExitAnalysis; exits: DecoderExit[]; layout: DecoderLayout; note?: string }> {
  requireCacheDims(given);
  requireFloat32Logits(given.logits, typeInfo((model.proto.graph!.output ?? []).find((o) => o.name === given.logits)?.type).elemType);
  const probeAt = (b: number): Promise<ExitAnalysis> => analyzeExits(model, decoderFeeds(model.proto, given, new Array<number>(8 * b).fill(0), b, given.cache === "kv" ? 3 : 0), {
    output: given.logits, mainInput: given.inputIds, everyPoint: true, ...(settings ? { settings } : {}),
  });
  const declared = declaredBatch(model.proto, given);
  let layout = given;
  let note: string | undefined;
  let analysis: ExitAnalysis;
  try {
    analysis = await probeAt(given.oneWindow ? 1 : declared ?? 2);
  } catch (e) {
    if (declared !== null || given.oneWindow || !(e instanceof EeToolError) || e.code !== "RUNTIME_FAILED") throw e;
    analysis = await probeAt(1).catch(() => Promise.reject(e));
    layout = { ...given, oneWindow: true };
    note = `note: the model's batch is symbolic but it fails on 2 windows and runs on 1 (${e.message.replace(/^onnxruntime failed to run the model: /, "")}): every pass feeds one window`;
  }
  const exits = decoderExits(model.proto, layout, analysis);
  const expected = layout.cache === "kv" ? layout.layers.length : attentionLayers(model.proto);
  if (exits.length < 2 || exits.length !== expected) {
    throw new EeToolError("NO_EXIT_POINTS", `found the residual stream after ${exits.length} of the decoder's ${expected} layers`, {
      hint: "Each layer's output must be a single tensor that all paths from the tokens to the logits pass through (a pre- or post-norm residual stream).",
    });
  }
  return { analysis, exits, layout, ...(note ? { note } : {}) };
}

function selectLayers(exits: DecoderExit[], spec: string): DecoderExit[] {
  const usable = exits.slice(0, -1);
  const s = spec.trim();
  if (s === "auto" || s === "all") return usable;
  const out: DecoderExit[] = [];
  for (const part of s.split(",").map((p) => p.trim()).filter(Boolean)) {
    const n = Number(part);
    const e = usable.find((x) => x.layer + 1 === n);
    if (!Number.isInteger(n) || !e) {
      throw new EeToolError("EXIT_NOT_FOUND", `--exits '${part}': a decoder exit is a layer count from 1 to ${usable.length} (the last layer is the model itself)`);
    }
    if (!out.includes(e)) out.push(e);
  }
  return out.sort((a, b) => a.layer - b.layer);
}

/** A copy of the model's own head (finalTensor -> logits), reading `from`, writing `output`. */
export function copyHead(head: NodeProto[], finalTensor: string, logits: string, from: string, prefix: string, output: string): NodeProto[] {
  const inside = new Set(head.flatMap((n) => n.output ?? []));
  const rename = (t: string): string => (t === finalTensor ? from : t === logits ? output : inside.has(t) ? `${prefix}/${t}` : t);
  return head.map((n, i) => ({
    ...shallowClone(n),
    input: (n.input ?? []).map((t) => (t ? rename(t) : t)),
    output: (n.output ?? []).map((t) => (t ? rename(t) : t)),
    name: `${prefix}/head_${i}`,
  }));
}

/**
 * The model's own head: nodes from the residual stream after the last layer to the logits. It may
 * read the token ids or position ids ([batch, seq]: Hugging Face's GPT-2 reshapes the stream to the
 * shape of its input_ids before the head), nothing else of the inputs.
 */
export function headNodes(view: Graph, finalTensor: string, logits: string, layout: Pick<DecoderLayout, "inputIds" | "positionIds">): NodeProto[] {
  const set = needed(view, [logits], new Set([finalTensor]));
  const order = view.sortedNodes();
  const head = order.filter((n) => set.has(n));
  const sequenceInputs = new Set([layout.inputIds, ...(layout.positionIds ? [layout.positionIds] : [])]);
  for (const n of head) {
    for (const i of view.inputsOf(n)) {
      if (view.isGraphInput(i) && !sequenceInputs.has(i)) {
        throw new EeToolError("UNSUPPORTED", `the model's head (from '${finalTensor}' to '${logits}') reads the input '${i}': exit heads cannot copy it`);
      }
    }
  }
  return head;
}

/** A model whose graph lists (nodes, initializers, outputs, metadata) can be extended without touching the source. */
function graphCopy(p: ModelProto): ModelProto {
  const g = p.graph!;
  return {
    ...p,
    metadata_props: [...(p.metadata_props ?? [])],
    graph: { ...g, node: [...(g.node ?? [])], initializer: [...(g.initializer ?? [])], output: [...(g.output ?? [])], value_info: [...(g.value_info ?? [])] },
  };
}

function identityCorrection(d: number): Correction {
  const weight = new Float32Array(d * d);
  for (let i = 0; i < d; i++) weight[i * d + i] = 1;
  return { weight, bias: new Float32Array(d) };
}

interface Correction {
  weight: Float32Array;
  bias: Float32Array;
}

/** Ridge regression of y on x (both [n, d], accumulated), shrunk towards the identity. */
class RidgeFit {
  private xtx: Float64Array;
  private xty: Float64Array;
  private sx: Float64Array;
  private sy: Float64Array;
  n = 0;

  constructor(readonly d: number) {
    this.xtx = new Float64Array(d * d);
    this.xty = new Float64Array(d * d);
    this.sx = new Float64Array(d);
    this.sy = new Float64Array(d);
  }

  add(x: Float32Array, y: Float32Array, rows: number): void {
    const d = this.d;
    for (let r = 0; r < rows; r++) {
      const xo = r * d;
      for (let i = 0; i < d; i++) {
        const xi = x[xo + i]!;
        this.sx[i]! += xi;
        this.sy[i]! += y[xo + i]!;
        const row = i * d;
        for (let j = i; j < d; j++) this.xtx[row + j]! += xi * x[xo + j]!;
        for (let j = 0; j < d; j++) this.xty[row + j]! += xi * y[xo + j]!;
      }
    }
    this.n += rows;
  }

  solve(ridge: number): Correction {
    const d = this.d;
    const n = Math.max(1, this.n);
    const mx = Float64Array.from(this.sx, (v) => v / n);
    const my = Float64Array.from(this.sy, (v) => v / n);
    const a = new Float64Array(d * d);
    const b = new Float64Array(d * d);
    let trace = 0;
    for (let i = 0; i < d; i++) {
      for (let j = 0; j < d; j++) {
        const xx = i <= j ? this.xtx[i * d + j]! : this.xtx[j * d + i]!;
        a[i * d + j] = xx - n * mx[i]! * mx[j]!;
        b[i * d + j] = this.xty[i * d + j]! - n * mx[i]! * my[j]!;
      }
      trace += a[i * d + i]!;
    }
    const lambda = ridge * (trace / d) + 1e-12;
    for (let i = 0; i < d; i++) {
      a[i * d + i]! += lambda;
      b[i * d + i]! += lambda;
    }
    const w = choleskySolve(a, b, d);
    const bias = new Float32Array(d);
    for (let j = 0; j < d; j++) {
      let s = my[j]!;
      for (let i = 0; i < d; i++) s -= mx[i]! * w[i * d + j]!;
      bias[j] = s;
    }
    return { weight: Float32Array.from(w), bias };
  }
}

/** Solve A X = B for symmetric positive definite A (d x d) and B (d x m = d). */
function choleskySolve(a: Float64Array, b: Float64Array, d: number): Float64Array {
  const l = new Float64Array(d * d);
  for (let i = 0; i < d; i++) {
    for (let j = 0; j <= i; j++) {
      let s = a[i * d + j]!;
      for (let k = 0; k < j; k++) s -= l[i * d + k]! * l[j * d + k]!;
      if (i === j) {
        if (s <= 0) throw new EeToolError("INTERNAL", "exit head fit: the normal equations are not positive definite");
        l[i * d + i] = Math.sqrt(s);
      } else l[i * d + j] = s / l[j * d + j]!;
    }
  }
  const x = new Float64Array(d * d);
  const m = d;
  const y = new Float64Array(d);
  for (let c = 0; c < m; c++) {
    for (let i = 0; i < d; i++) {
      let s = b[i * m + c]!;
      for (let k = 0; k < i; k++) s -= l[i * d + k]! * y[k]!;
      y[i] = s / l[i * d + i]!;
    }
    for (let i = d - 1; i >= 0; i--) {
      let s = y[i]!;
      for (let k = i + 1; k < d; k++) s -= l[k * d + i]! * x[k * m + c]!;
      x[i * m + c] = s / l[i * d + i]!;
    }
  }
  return x;
}

/** Run teacher-forced windows through a model exposing `names`, in batches. */
export async function teacherForced(
  session: ort.InferenceSession,
  proto: ModelProto,
  layout: DecoderLayout,
  tokens: TokenSet,
  rows: readonly number[],
  batch: number,
  names: readonly string[],
  each: (out: Record<string, ort.Tensor>, rows: readonly number[]) => void,
  progress?: (done: number) => void,
): Promise<void> {
  // An export with a fixed batch of 1 takes one window a call.
  if (layout.oneWindow || declaredBatch(proto, layout) === 1) batch = 1;
  for (let s = 0; s < rows.length; s += batch) {
    const part = rows.slice(s, s + batch);
    const ids = new Int32Array(part.length * tokens.length);
    part.forEach((r, i) => ids.set(tokens.row(r), i * tokens.length));
    const out = await runSession(session, decoderFeeds(proto, layout, ids, part.length, 0), names);
    each(out, part);
    progress?.(Math.min(rows.length, s + batch));
  }
}

/** A model with extra graph outputs (tensors inside the graph), for reading hidden states. */
export function withOutputs(proto: ModelProto, names: readonly string[], elemType = DataType.FLOAT): ModelProto {
  const g = shallowClone(proto.graph!);
  const have = new Set((g.output ?? []).map((o) => o.name));
  g.output = [...(g.output ?? []), ...names.filter((n) => !have.has(n)).map((n) => makeValueInfo(n, elemType))];
  return { ...proto, graph: g };
}

function argmaxAt(x: Float32Array, offset: number, k: number): number {
  let best = 0;
  let v = -Infinity;
  for (let j = 0; j < k; j++) {
    const y = x[offset + j]!;
    if (y > v) {
      v = y;
      best = j;
    }
  }
  return best;
}

/** Positions that count as next-token predictions of a window: all but the last. */
function agreementCount(a: Float32Array, b: Float32Array, seqs: number, len: number, vocab: number): number {
  let same = 0;
  for (let s = 0; s < seqs; s++) for (let t = 0; t < len - 1; t++) {
    const o = (s * len + t) * vocab;
    if (argmaxAt(a, o, vocab) === argmaxAt(b, o, vocab)) same++;
  }
  return same;
}

export async function insertDecoderHeads(model: OnnxModel, given: DecoderLayout, options: DecoderInsertOptions): Promise<DecoderInsertResult> {
  const seed = options.seed ?? 0;
  const ridge = options.ridge ?? DEFAULT_RIDGE;
  const progress = options.onProgress ?? (() => undefined);
  const settings = options.settings ?? {};
  const t0 = performance.now();
  const { analysis, exits, layout, note } = await analyzeDecoder(model, given, settings);
  const chosen = selectLayers(exits, options.exits ?? "auto");
  const finalTensor = exits[exits.length - 1]!.candidate.tensor;
  const view = new Graph(model.proto.graph!);
  const head = headNodes(view, finalTensor, layout.logits, layout);
  const tokens = openTokens(options.calib, "calibration tokens", layout.vocab, layout.maxPositions);

  const fraction = options.fitFraction ?? 0.4;
  const order = new Rng(seed).permutation(tokens.sequences);
  const nFit = Math.floor(tokens.sequences * fraction);
  if (nFit < 5) {
    throw new EeToolError("TOO_FEW_SAMPLES", `${tokens.sequences} calibration sequences leave ${nFit} to fit the heads (--fit-fraction ${fraction}); at least 5 are needed`);
  }
  const fitRows = Array.from(order.slice(0, nFit)).sort((a, b) => a - b);
  const nHold = Math.max(1, Math.floor(nFit * HOLDOUT));
  const regressRows = fitRows.slice(0, nFit - nHold);
  const holdRows = fitRows.slice(nFit - nHold);
  const t1 = performance.now();

  // Hidden states of every chosen exit and of the final stream, teacher-forced.
  const names = [...chosen.map((e) => e.candidate.tensor), finalTensor];
  const probe = await createSession(runtimeBytes(withOutputs(model.proto, names), model.readExternal), settings);
  const width = chosen[0]!.candidate.shape[2]!;
  const fits = chosen.map((e) => new RidgeFit(e.candidate.shape[2]!));
  if (chosen.some((e) => e.candidate.shape[2] !== exits[exits.length - 1]!.candidate.shape[2])) {
    throw new EeToolError("UNSUPPORTED", "the residual stream changes width between layers; exit heads need one width");
  }
  const batch = options.batchSize ?? 16;
  try {
    await teacherForced(probe, model.proto, layout, tokens, regressRows, batch, names, (out, rows) => {
      const y = out[finalTensor]!.data as Float32Array;
      chosen.forEach((e, i) => fits[i]!.add(out[e.candidate.tensor]!.data as Float32Array, y, rows.length * tokens.length));
    }, (d) => progress("fitting exit heads", d, regressRows.length));
  } finally {
    await probe.release();
  }
  const t2 = performance.now();
  const corrections = fits.map((f) => f.solve(ridge));

  // The augmented model: the original plus one head per exit.
  const proto = graphCopy(model.proto);
  const opset = defaultOpset(proto.opset_import);
  const build = (p: ModelProto, withIdentity: boolean): { records: DecoderExitRecord[]; identity: string[] } => {
    const gg = new Graph(p.graph!);
    const records: DecoderExitRecord[] = [];
    const identity: string[] = [];
    chosen.forEach((e, i) => {
      const em = new NodeEmitter(`ee_head${e.layer + 1}`, opset);
      const c = corrections[i]!;
      const w = em.constant("weight", DataType.FLOAT, [width, width], c.weight);
      const b = em.constant("bias", DataType.FLOAT, [width], c.bias);
      const corrected = em.node("Add", [em.node("MatMul", [e.candidate.tensor, w]), b]);
      const output = `ee_exit_${e.layer + 1}`;
      const nodes = [...em.nodes, ...copyHead(head, finalTensor, layout.logits, corrected, em.prefix, output)];
      if (withIdentity) nodes.push(...copyHead(head, finalTensor, layout.logits, e.candidate.tensor, `${em.prefix}_identity`, `${output}_identity`));
      for (const n of nodes) gg.addNode(n);
      for (const t of em.initializers) gg.addInitializer(t);
      gg.addOutput(makeValueInfo(output, DataType.FLOAT));
      if (withIdentity) {
        gg.addOutput(makeValueInfo(`${output}_identity`, DataType.FLOAT));
        identity.push(`${output}_identity`);
      }
      records.push({
        id: i, layers: e.layer + 1, tensor: e.candidate.tensor, width, depth: e.candidate.depth, output, weight: w, bias: b,
        parameters: width * width + width,
        fit: { ridge, tokens: regressRows.length * tokens.length, holdoutAgreement: 0, identityAgreement: 0, holdoutTokens: 0, corrected: true },
      });
    });
    gg.toposort();
    return { records, identity };
  };
  // Agreement on the held-back fitting sequences, with and without the correction; an exit keeps
  // its correction only where it agrees at least as well.
  const evalProto = graphCopy(model.proto);
  const trial = build(evalProto, true);
  const agree = trial.records.map(() => ({ fitted: 0, identity: 0 }));
  let holdTokens = 0;
  const evalSession = await createSession(runtimeBytes(evalProto, model.readExternal), settings);
  const vocab = layout.vocab ?? 0;
  try {
    await teacherForced(evalSession, evalProto, layout, tokens, holdRows, batch, [layout.logits, ...trial.records.map((r) => r.output), ...trial.identity], (out, rows) => {
      const full = out[layout.logits]!.data as Float32Array;
      const v = vocab || out[layout.logits]!.dims[2]!;
      trial.records.forEach((r, i) => {
        agree[i]!.fitted += agreementCount(out[r.output]!.data as Float32Array, full, rows.length, tokens.length, v);
        agree[i]!.identity += agreementCount(out[trial.identity[i]!]!.data as Float32Array, full, rows.length, tokens.length, v);
      });
      holdTokens += rows.length * (tokens.length - 1);
    });
  } finally {
    await evalSession.release();
  }
  agree.forEach((a, i) => {
    if (a.identity > a.fitted) corrections[i] = identityCorrection(width);
  });
  const { records } = build(proto, false);
  records.forEach((r, i) => {
    r.fit.holdoutAgreement = agree[i]!.fitted / Math.max(1, holdTokens);
    r.fit.identityAgreement = agree[i]!.identity / Math.max(1, holdTokens);
    r.fit.holdoutTokens = holdTokens;
    r.fit.corrected = agree[i]!.identity <= agree[i]!.fitted;
  });
  const metadata: DecoderMetadata = {
    format: 1, tool: TOOL_VERSION, kind: "decoder", layout, layers: exits.length, finalTensor, exits: records,
    calibration: {
      sequences: tokens.sequences, length: tokens.length, hash: tokenSetHash(tokens), seed, fitSequences: nFit,
      fitHashes: packHashes(fitRows.map((r) => tokens.hash(r))),
    },
  };
  writeDecoderMetadata(proto, metadata);
  const t3 = performance.now();
  return {
    model: { ...model, proto, byteLength: 0 }, metadata, analysis, exits,
    timings: { analyzeMs: t1 - t0, extractMs: t2 - t1, fitMs: t3 - t2 },
    ...(note ? { note } : {}),
  };
}

/**
 * A model as a decoder LM, if it is one: Optimum's merged decoder inlined to its with-past graph
 * (note says so), then the layout found by structure. Null layout: not a decoder.
 */
export function asDecoder(model: OnnxModel): { model: OnnxModel; layout: DecoderLayout | null; note?: string } {
  const merged = inlineCacheBranch(model.proto);
  const m = merged ? { ...model, proto: merged.model } : model;
  const layout = findDecoderLayout(m.proto);
  return { model: m, layout, ...(merged ? { note: merged.note } : {}) };
}
