/**
 * `ee-tool insert`: find exit points, attach ramps, fit them on part of the calibration set with
 * the backbone frozen, and record which samples fitted them.
 */
import { createHash } from "node:crypto";
import type { ModelProto } from "../onnx/types.js";
import type { OnnxModel } from "../onnx/model.js";
import { Graph } from "../ir/graph.js";
import { NodeEmitter, defaultOpset } from "../ir/builder.js";
import { makeValueInfo, typeInfo } from "../ir/shapes.js";
import { shallowClone } from "../ir/clone.js";
import { DataType } from "../onnx/dtype.js";
import { analyzeExits, requireFloat32Logits } from "../analysis/analyze.js";
import type { ExitAnalysis, ExitCandidate } from "../analysis/exits.js";
import { openCalibration, openLabels } from "../data/calib.js";
import { createSession, runSession, runtimeBytes, type SessionSettings } from "../ort/ort.js";
import { EeToolError } from "../errors.js";
import { Rng } from "../util/rng.js";
import { argmaxRows } from "../util/logits.js";
import { DEFAULT_HIDDEN, designRamp, emitFeatures, emitHead, rampParameterCount, type PoolChoice, type RampDesign, type RampKind } from "./build.js";
import { fitRamps, type FitResult } from "./fit.js";
import { packHashes, writeRampMetadata, type RampMetadata, type RampRecord } from "./metadata.js";

export const TOOL_VERSION = "ee-tool 0.1.0";

export type ProgressFn = (phase: string, done: number, total: number) => void;

export interface InsertOptions {
  /** --calib argument: file, name=file list, .npz, or directory of input_N.pb. */
  calib: string;
  labels?: string;
  /** auto | all | a count | comma-separated ids or tensor names. */
  exits?: string;
  /** auto (default): linear and mlp at every exit, and an mlp only where it agrees clearly better (AUTO_MLP_MARGIN); or one kind. */
  ramp?: RampKind | "auto";
  /** Hidden width of mlp ramps (default 64, capped at the feature width). */
  hidden?: number;
  pool?: PoolChoice;
  output?: string;
  seed?: number;
  /** Fraction of calibration samples used to fit ramps (the rest is left for profile and plan). */
  fitFraction?: number;
  batchSize?: number;
  /**
   * Session settings. Their provider (`ep`) runs the model: the analysis and the feature-extraction
   * pass; the ramps are always fitted on the CPU provider (their training graph is small, and
   * onnxruntime's gradient ops run there).
   */
  settings?: SessionSettings;
  onProgress?: ProgressFn;
}

export interface InsertResult {
  model: OnnxModel;
  metadata: RampMetadata;
  analysis: ExitAnalysis;
  timings: { analyzeMs: number; extractMs: number; fitMs: number };
}

const AUTO_MAX = 8;

/**
 * With `--ramp auto`, an exit keeps an mlp ramp only where its held-out agreement beats the best
 * linear ramp's by at least this much: an mlp costs two more operators at every request that
 * passes the exit, and on a few hundred held-out samples smaller differences are noise.
 */
export const AUTO_MLP_MARGIN = 0.01;

/** Choose exits from the candidates: auto (up to 8, spread in depth), all, N, or ids/names. */
export function selectExits(candidates: ExitCandidate[], spec: string): ExitCandidate[] {
  const s = spec.trim();
  if (candidates.length === 0) throw new EeToolError("NO_EXIT_POINTS", "the model has no candidate exit points");
  if (s === "all") return candidates;
  // auto spreads over block boundaries when the model has them (layer-level points inside
  // non-residual blocks stay available through ids, names or a count).
  const blocks = candidates.filter((c) => c.kind === "block");
  const pool = s === "auto" && blocks.length >= 2 ? blocks : candidates;
  const count = s === "auto" ? Math.min(AUTO_MAX, pool.length) : /^\d+$/.test(s) ? Number(s) : undefined;
  if (count !== undefined) {
    if (count < 1) throw new EeToolError("USAGE", "--exits needs at least 1 exit");
    if (count > candidates.length) {
      throw new EeToolError("EXIT_NOT_FOUND", `--exits asks for ${count} exits, but the model has ${candidates.length} candidate exit points (a list of ids needs a comma: '${count},')`);
    }
    if (count === pool.length) return pool;
    // Evenly spaced targets in depth; each takes the nearest unused candidate.
    const lo = pool[0]!.depth;
    const hi = pool[pool.length - 1]!.depth;
    const chosen = new Set<ExitCandidate>();
    for (let i = 0; i < count; i++) {
      const target = count === 1 ? hi : lo + ((hi - lo) * i) / (count - 1);
      let best: ExitCandidate | undefined;
      for (const c of pool) if (!chosen.has(c) && (!best || Math.abs(c.depth - target) < Math.abs(best.depth - target))) best = c;
      chosen.add(best!);
    }
    return pool.filter((c) => chosen.has(c));
  }
  const picked: ExitCandidate[] = [];
  for (const part of s.split(",").map((p) => p.trim()).filter(Boolean)) {
    const c = /^\d+$/.test(part) ? candidates.find((x) => x.id === Number(part)) : candidates.find((x) => x.tensor === part);
    if (!c) {
      throw new EeToolError("EXIT_NOT_FOUND", `exit '${part}' is not a candidate exit point (candidates: ${candidates.map((x) => x.id).join(", ")})`);
    }
    if (!picked.includes(c)) picked.push(c);
  }
  return picked.sort((a, b) => a.id - b.id);
}

function softmaxRows(x: Float32Array, n: number, k: number): Float32Array {
  const out = new Float32Array(n * k);
  for (let i = 0; i < n; i++) {
    let max = -Infinity;
    for (let j = 0; j < k; j++) max = Math.max(max, x[i * k + j]!);
    let sum = 0;
    for (let j = 0; j < k; j++) sum += out[i * k + j] = Math.exp(x[i * k + j]! - max);
    for (let j = 0; j < k; j++) out[i * k + j]! /= sum;
  }
  return out;
}

/** Find the attention mask input for mask-aware pooling: a rank-2 input named like a mask. */
function findMaskInput(model: ModelProto, mainInput: string): string | undefined {
  const g = new Graph(model.graph!);
  return g.inputs.find((i) => i.name !== mainInput && /mask/i.test(i.name ?? "") && (typeInfo(i.type).shape?.length ?? 0) === 2)?.name;
}

export async function insertRamps(model: OnnxModel, options: InsertOptions): Promise<InsertResult> {
  const seed = options.seed ?? 0;
  const progress = options.onProgress ?? (() => undefined);
  const proto = model.proto;
  const graph = new Graph(proto.graph!);
  const outputName = options.output ?? graph.outputs[0]?.name ?? "";
  if (!graph.outputs.some((o) => o.name === outputName)) {
    throw new EeToolError("NOT_A_CLASSIFIER", `'${outputName}' is not an output of the model (outputs: ${graph.outputs.map((o) => o.name).join(", ")})`);
  }
  requireFloat32Logits(outputName, typeInfo(graph.valueInfo(outputName)?.type).elemType);
  const calib = openCalibration(options.calib, proto);
  const labels = options.labels ? openLabels(options.labels, calib.size) : undefined;

  // 1. Exit points, from the shapes of one small batch.
  const t0 = performance.now();
  const probe = calib.probeFeeds();
  const analysis = await analyzeExits(model, probe, { output: outputName, ...(options.settings ? { settings: options.settings } : {}) });
  const probeBatch = Object.values(probe)[0]!.dims[0]!;
  const outInfo = typeInfo(graph.valueInfo(outputName)?.type);
  if (outInfo.elemType !== undefined && outInfo.elemType !== DataType.FLOAT) {
    throw new EeToolError("NOT_A_CLASSIFIER", `output '${outputName}' is not float logits`);
  }
  const probeSession = await createSession(runtimeBytes(proto, model.readExternal), options.settings ?? {});
  const probeOut = (await runSession(probeSession, probe, [outputName]))[outputName]!;
  await probeSession.release();
  if (probeOut.dims.length !== 2 || probeOut.dims[0] !== probeBatch || probeOut.dims[1]! < 2) {
    throw new EeToolError("NOT_A_CLASSIFIER", `output '${outputName}' has shape [${probeOut.dims.join(",")}] for a batch of ${probeBatch}; ramps need logits [N, classes]`);
  }
  const classes = probeOut.dims[1]!;
  const exits = selectExits(analysis.candidates, options.exits ?? "auto");
  const mask = findMaskInput(proto, analysis.mainInput);
  // With --pool auto, [N,S,D] exits try both the first token and the (mask-aware) mean, and
  // [N,C,H,W] exits both global and grid average pooling; the held-out loss decides per exit.
  const pool = options.pool ?? "auto";
  const choice = options.ramp ?? "auto";
  const kinds: RampKind[] = choice === "auto" ? ["linear", "mlp"] : [choice];
  const hidden = options.hidden ?? DEFAULT_HIDDEN;
  const variants: RampDesign[][] = exits.map((e, i) => kinds.flatMap((kind) => {
    if (pool !== "auto") return [designRamp(i, e, kind, pool, classes, mask, hidden)];
    const second = e.layout === "NSD" ? designRamp(i, e, kind, "cls", classes, mask, hidden) : e.layout === "NCHW" ? designRamp(i, e, kind, "grid", classes, mask, hidden) : undefined;
    const first = designRamp(i, e, kind, "mean", classes, mask, hidden);
    return second && second.pooling !== first.pooling ? [first, second] : [first];
  }));
  const tried = variants.flat();
  const analyzeMs = performance.now() - t0;

  // 2. Which samples fit the ramps: a seeded random subset, the rest stays unseen.
  const fraction = options.fitFraction ?? 0.4;
  const nFit = Math.max(2, Math.min(calib.size, Math.round(calib.size * fraction)));
  if (calib.size < 10) throw new EeToolError("CALIB_MISMATCH", `calibration data has ${calib.size} samples; fitting ramps needs at least 10`);
  const fitIdx = new Rng(seed).permutation(calib.size).slice(0, nFit).sort();

  // 3. One pass of the model over the fitting samples, with the ramps' pooled features as extra outputs.
  const t1 = performance.now();
  const opset = defaultOpset(proto.opset_import);
  const probeEmitters = tried.map((_, j) => new NodeEmitter(`ee_probe${j}`, opset));
  const featureNames = tried.map((d, j) => emitFeatures(d, probeEmitters[j]!));
  const extractProto = shallowClone(proto);
  extractProto.graph = shallowClone(proto.graph!);
  extractProto.graph.node = [...graph.nodes, ...probeEmitters.flatMap((e) => e.nodes)];
  extractProto.graph.initializer = [...(proto.graph!.initializer ?? []), ...probeEmitters.flatMap((e) => e.initializers)];
  extractProto.graph.output = [makeValueInfo(outputName, DataType.FLOAT), ...featureNames.filter((f) => f !== outputName).map((f) => makeValueInfo(f, DataType.FLOAT))];
  const session = await createSession(runtimeBytes(extractProto, model.readExternal), options.settings ?? {});
  const batchSize = calib.passBatch(options.batchSize ?? 64);
  const features = tried.map((d) => new Float32Array(nFit * d.featureDim));
  const logits = new Float32Array(nFit * classes);
  try {
    for (let s = 0; s < nFit; s += batchSize) {
      const idx = fitIdx.subarray(s, Math.min(nFit, s + batchSize));
      const out = await runSession(session, calib.passFeeds(idx), [outputName, ...featureNames]);
      const rows = (name: string, width: number): Float32Array => (out[name]!.data as Float32Array).subarray(0, idx.length * width);
      logits.set(rows(outputName, classes), s * classes);
      tried.forEach((d, j) => features[j]!.set(rows(featureNames[j]!, d.featureDim), s * d.featureDim));
      progress("extract", Math.min(nFit, s + batchSize), nFit);
    }
  } finally {
    await session.release();
  }
  const extractMs = performance.now() - t1;

  // 4. Fit each ramp against the model's own (soft) predictions, plus labels when given.
  const t2 = performance.now();
  const finalPred = argmaxRows(logits, nFit, classes);
  const targets = softmaxRows(logits, nFit, classes);
  if (labels) {
    fitIdx.forEach((sample, i) => {
      const label = labels[sample]!;
      if (label < 0 || label >= classes) throw new EeToolError("CALIB_MISMATCH", `label ${label} of sample ${sample} is outside 0..${classes - 1}`);
      for (let j = 0; j < classes; j++) targets[i * classes + j] = 0.5 * targets[i * classes + j]! + (j === label ? 0.5 : 0);
    });
  }
  progress("fit", 0, 1);
  const triedFits: FitResult[] = await fitRamps(
    tried.map((d, j) => ({ kind: d.kind, d: d.featureDim, hidden: d.hidden, x: features[j]! })),
    { y: targets, finalPred, n: nFit, k: classes },
    { seed, ...(options.settings ? { settings: { ...options.settings, ep: "cpu" } } : {}) },
  );
  progress("fit", 1, 1);
  const designs: RampDesign[] = [];
  const fits: FitResult[] = [];
  const chosenFeatures: number[] = [];
  // Per kind, the pooling with the lowest held-out loss; between kinds, see AUTO_MLP_MARGIN.
  const bestOf = (group: RampDesign[]): number => {
    let bestJ = -1;
    for (const d of group) {
      const j = tried.indexOf(d);
      if (bestJ < 0 || triedFits[j]!.holdoutLoss < triedFits[bestJ]!.holdoutLoss) bestJ = j;
    }
    return bestJ;
  };
  for (const group of variants) {
    const [linear, mlp] = [bestOf(group.filter((d) => d.kind === "linear")), bestOf(group.filter((d) => d.kind === "mlp"))];
    const bestJ = linear < 0 ? mlp : mlp < 0 ? linear : triedFits[mlp]!.holdoutAgreement - triedFits[linear]!.holdoutAgreement >= AUTO_MLP_MARGIN ? mlp : linear;
    designs.push(tried[bestJ]!);
    fits.push(triedFits[bestJ]!);
    chosenFeatures.push(bestJ);
  }
  const fitMs = performance.now() - t2;

  // 5. The augmented model: the original graph untouched, plus ramps and one output per ramp.
  const out = shallowClone(proto);
  out.graph = shallowClone(proto.graph!);
  const nodes = [...graph.nodes];
  const inits = [...(proto.graph!.initializer ?? [])];
  const outputs = [...graph.outputs];
  const records: RampRecord[] = designs.map((d, i) => {
    const em = new NodeEmitter(`ee_ramp${d.id}`, opset);
    const rampOut = `ee_exit_${d.id}`;
    emitHead(d, em, emitFeatures(d, em), fits[i]!.weights, rampOut);
    nodes.push(...em.nodes);
    inits.push(...em.initializers);
    outputs.push(makeValueInfo(rampOut, DataType.FLOAT, [outInfo.shape?.[0] ?? null, classes]));
    const f = fits[i]!;
    return {
      id: d.id, exit: d.exit.id, tensor: d.exit.tensor, layout: d.exit.layout, shape: d.exit.shape.slice(1), depth: round(d.exit.depth),
      kind: d.kind, pooling: d.pooling, featureDim: d.featureDim, hidden: d.hidden, parameters: rampParameterCount(d), output: rampOut,
      crossing: d.exit.crossing, inputsAfter: d.exit.inputsAfter,
      fit: { weightDecay: f.weightDecay, steps: f.steps, trainAgreement: round(f.trainAgreement), holdoutAgreement: round(f.holdoutAgreement), holdoutSamples: f.holdoutSamples },
    };
  });
  out.graph.node = nodes;
  out.graph.initializer = inits;
  out.graph.output = outputs;
  const allHashes = calib.sampleHashes();
  const fitHashes = Array.from(fitIdx, (i) => allHashes[i]!);
  const metadata: RampMetadata = {
    format: 1,
    tool: TOOL_VERSION,
    output: outputName,
    classes,
    mainInput: analysis.mainInput,
    inputs: calib.specs.map((s) => s.name),
    ramps: records,
    calibration: {
      samples: calib.size,
      hash: createHash("sha256").update(allHashes.join("")).digest("hex"),
      seed,
      targets: labels ? "model+labels" : "model",
      fitSamples: nFit,
      fitHashes: packHashes(fitHashes),
    },
  };
  writeRampMetadata(out, metadata);
  new Graph(out.graph).toposort();
  const { path: _source, ...rest } = model;
  return {
    model: { ...rest, proto: out },
    metadata,
    analysis,
    timings: { analyzeMs, extractMs, fitMs },
  };
}

function round(x: number): number {
  return Math.round(x * 1e6) / 1e6;
}
