/**
 * Ramp subgraphs. A ramp pools the tensor at its exit point into features [N, D], then maps them
 * to logits [N, classes]:
 *   [N,C,H,W]  GlobalAveragePool, Flatten, or (grid) AveragePool to a coarse grid of up to 4x4
 *              cells, Flatten: keeps where things are, which early layers need (a shirt and a
 *              pullover differ in where their edges are, not in which edges there are)
 *   [N,H,W,C]  ReduceMean over H, W
 *   [N,S,D]    first token (cls) or mean over S, mask-aware when the model has an attention mask
 *   [N,D]      as is
 * then Gemm (linear), or Gemm, Tanh, Gemm (mlp: a hidden layer of min(D, --hidden) units).
 */
import type { ExitCandidate } from "../analysis/exits.js";
import { attr, NodeEmitter } from "../ir/builder.js";
import { DataType } from "../onnx/dtype.js";
import { EeToolError } from "../errors.js";

export type RampKind = "linear" | "mlp";
export type PoolChoice = "auto" | "cls" | "mean" | "gap" | "grid";
export type Pooling = "gap" | "grid" | "spatial-mean" | "cls" | "mean" | "masked-mean" | "none";

/** Most features a grid-pooled ramp may have. */
const GRID_MAX_FEATURES = 1024;

/** AveragePool window (= stride) for a grid of 2x2 to 4x4 cells over [C, H, W] within GRID_MAX_FEATURES, or null. */
export function gridWindow(shape: readonly number[]): { kernel: [number, number]; cells: [number, number] } | null {
  const [c, h, w] = [shape[1]!, shape[2]!, shape[3]!];
  if (![c, h, w].every((d) => Number.isInteger(d) && d > 0)) return null;
  for (const g of [4, 3, 2]) {
    if (h < g || w < g) continue;
    const kernel: [number, number] = [Math.ceil(h / g), Math.ceil(w / g)];
    const cells: [number, number] = [Math.floor(h / kernel[0]), Math.floor(w / kernel[1])];
    // A "grid" of one cell would see only part of the map: worse than the global average.
    if (cells[0] < 2 || cells[1] < 2) continue;
    if (c * cells[0] * cells[1] <= GRID_MAX_FEATURES) return { kernel, cells };
  }
  return null;
}

export interface RampDesign {
  id: number;
  exit: ExitCandidate;
  kind: RampKind;
  pooling: Pooling;
  featureDim: number;
  hidden: number;
  classes: number;
  maskInput?: string;
}

export interface RampWeights {
  /** [D, H] for mlp, [D, classes] for linear (row-major). */
  w1: Float32Array;
  b1: Float32Array;
  /** [H, classes] (mlp only). */
  w2?: Float32Array;
  b2?: Float32Array;
}

/** Default hidden width of mlp ramps (capped at the feature width). */
export const DEFAULT_HIDDEN = 64;

export function designRamp(id: number, exit: ExitCandidate, kind: RampKind, pool: PoolChoice, classes: number, maskInput?: string, hiddenWidth = DEFAULT_HIDDEN): RampDesign {
  let pooling: Pooling;
  let featureDim: number;
  switch (exit.layout) {
    case "NCHW": {
      const grid = pool === "grid" ? gridWindow(exit.shape) : null;
      pooling = grid ? "grid" : "gap";
      featureDim = grid ? exit.shape[1]! * grid.cells[0] * grid.cells[1] : exit.shape[1]!;
      break;
    }
    case "NHWC":
      pooling = "spatial-mean";
      featureDim = exit.shape[3]!;
      break;
    case "NSD":
      pooling = pool === "cls" ? "cls" : maskInput ? "masked-mean" : "mean";
      featureDim = exit.shape[2]!;
      break;
    case "ND":
      pooling = "none";
      featureDim = exit.shape[1]!;
      break;
  }
  const hidden = kind === "mlp" ? Math.min(featureDim, hiddenWidth) : 0;
  return { id, exit, kind, pooling, featureDim, hidden, classes, ...(pooling === "masked-mean" && maskInput ? { maskInput } : {}) };
}

export function rampParameterCount(d: RampDesign): number {
  return d.kind === "mlp" ? d.featureDim * d.hidden + d.hidden + d.hidden * d.classes + d.classes : d.featureDim * d.classes + d.classes;
}

/** Emit the pooling nodes; returns the name of the [N, D] feature tensor. */
export function emitFeatures(d: RampDesign, em: NodeEmitter): string {
  const x = d.exit.tensor;
  switch (d.pooling) {
    case "gap":
      return em.node("Flatten", [em.node("GlobalAveragePool", [x])], [attr("axis", 1)]);
    case "grid": {
      const { kernel } = gridWindow(d.exit.shape)!;
      return em.node("Flatten", [em.node("AveragePool", [x], [attr("kernel_shape", kernel), attr("strides", kernel)])], [attr("axis", 1)]);
    }
    case "spatial-mean":
      return em.reduce("ReduceMean", x, [1, 2], false);
    case "cls": {
      const zero = em.constant("index0", DataType.INT64, [], BigInt64Array.of(0n));
      return em.node("Gather", [x, zero], [attr("axis", 1)]);
    }
    case "mean":
      return em.reduce("ReduceMean", x, [1], false);
    case "masked-mean": {
      // sum_s(x * m) / max(sum_s(m), eps), with m the attention mask as float [N, S, 1]
      const m = em.node("Cast", [d.maskInput!], [attr("to", DataType.FLOAT)]);
      const m3 = em.unsqueeze(m, [2]);
      const summed = em.reduce("ReduceSum", em.node("Mul", [x, m3]), [1], false);
      const count = em.reduce("ReduceSum", m3, [1], false);
      const eps = em.constant("eps", DataType.FLOAT, [], Float32Array.of(1e-6));
      return em.node("Div", [summed, em.node("Max", [count, eps])]);
    }
    case "none":
      return x;
  }
}

/** Emit the head (Gemm, or Gemm-Tanh-Gemm) from features to `output`. */
export function emitHead(d: RampDesign, em: NodeEmitter, features: string, w: RampWeights, output: string): void {
  const D = d.featureDim;
  if (d.kind === "linear") {
    if (w.w1.length !== D * d.classes) throw new EeToolError("INTERNAL", `ramp ${d.id}: weights of ${w.w1.length} for ${D}x${d.classes}`);
    const W = em.constant("weight", DataType.FLOAT, [D, d.classes], w.w1);
    const B = em.constant("bias", DataType.FLOAT, [d.classes], w.b1);
    em.node("Gemm", [features, W, B], [], output);
    return;
  }
  const W1 = em.constant("dense_weight", DataType.FLOAT, [D, d.hidden], w.w1);
  const B1 = em.constant("dense_bias", DataType.FLOAT, [d.hidden], w.b1);
  const W2 = em.constant("weight", DataType.FLOAT, [d.hidden, d.classes], w.w2!);
  const B2 = em.constant("bias", DataType.FLOAT, [d.classes], w.b2!);
  const h = em.node("Tanh", [em.node("Gemm", [features, W1, B1])]);
  em.node("Gemm", [h, W2, B2], [], output);
}
