/**
 * Rough FLOP counts per node from concrete shapes: multiply-accumulates count two FLOPs for
 * convolutions and matrix products; every other op counts one per output element (shape
 * plumbing counts nothing). Used for the depth of exit points, not as a latency model.
 */
import type { NodeProto } from "../onnx/types.js";
import { toNumber } from "../onnx/int64.js";

export type ShapeOf = (name: string) => readonly number[] | undefined;

const FREE = new Set([
  "Shape", "Size", "Constant", "ConstantOfShape", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity",
  "Gather", "Slice", "Concat", "Cast", "Range", "Expand", "Transpose", "Split", "Dropout",
]);

const numel = (s: readonly number[] | undefined): number => (s ? s.reduce((a, b) => a * b, 1) : 0);

function intAttr(node: NodeProto, name: string, dflt: number): number {
  const a = node.attribute?.find((x) => x.name === name);
  return a?.i !== undefined ? toNumber(a.i) : dflt;
}

export function nodeFlops(node: NodeProto, shapeOf: ShapeOf): number {
  const op = node.op_type ?? "";
  const out = shapeOf(node.output?.[0] ?? "");
  const inp = (i: number): readonly number[] | undefined => shapeOf(node.input?.[i] ?? "");
  switch (op) {
    case "Conv": {
      const w = inp(1);
      if (!w || !out) return 0;
      return 2 * numel(out) * numel(w.slice(1));
    }
    case "ConvTranspose": {
      const w = inp(1);
      const x = inp(0);
      if (!w || !x) return 0;
      const group = intAttr(node, "group", 1);
      return 2 * numel(x) * (w[1] ?? 1) * numel(w.slice(2)) / Math.max(1, group) * group;
    }
    case "MatMul": case "MatMulInteger": case "QLinearMatMul": {
      const a = inp(0);
      if (!a || !out) return 0;
      return 2 * numel(out) * (a[a.length - 1] ?? 1);
    }
    case "Gemm": {
      const a = inp(0);
      if (!a || !out) return 0;
      const k = intAttr(node, "transA", 0) ? a[0]! : a[a.length - 1]!;
      return 2 * numel(out) * k;
    }
    case "Einsum":
      return 2 * numel(out) * 64;
    default:
      return FREE.has(op) ? 0 : numel(out);
  }
}
