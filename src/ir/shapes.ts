/**
 * Tensor shapes and element types: from value_info, graph inputs/outputs and initializers, and
 * where those are silent, discovered by running one batch through onnxruntime with the tensors
 * exposed as extra outputs.
 */
import type { TypeProto, ValueInfoProto } from "../onnx/types.js";
import type { OnnxModel } from "../onnx/model.js";
import { Graph } from "./graph.js";
import { tensorDims } from "../onnx/tensor.js";
import { toNumber } from "../onnx/int64.js";
import { dataTypeFromOrt } from "../onnx/dtype.js";
import { createSession, ort, runSession, runtimeBytes, type SessionSettings } from "../ort/ort.js";

/** A dimension: a number, a symbolic name, or unknown (null). */
export type Dim = number | string | null;

export interface TensorInfo {
  elemType: number | undefined;
  shape: Dim[] | undefined;
}

export function typeInfo(type: TypeProto | undefined): TensorInfo {
  const tt = type?.tensor_type;
  if (!tt) return { elemType: undefined, shape: undefined };
  const shape = tt.shape
    ? (tt.shape.dim ?? []).map((d): Dim => {
        if (Object.prototype.hasOwnProperty.call(d, "dim_value")) return toNumber(d.dim_value);
        if (d.dim_param) return d.dim_param;
        return null;
      })
    : undefined;
  return { elemType: tt.elem_type, shape };
}

/** What the graph itself says about a tensor (value_info, inputs, outputs, initializers). */
export function declaredInfo(graph: Graph, name: string): TensorInfo {
  const init = graph.initializer(name);
  if (init) return { elemType: init.data_type, shape: tensorDims(init) };
  return typeInfo(graph.valueInfo(name)?.type);
}

export function formatShape(shape: Dim[] | undefined): string {
  if (!shape) return "?";
  return `[${shape.map((d) => (d === null ? "?" : String(d))).join(",")}]`;
}

/** A ValueInfoProto with element type and (optionally) shape. */
export function makeValueInfo(name: string, elemType: number, shape?: Dim[]): ValueInfoProto {
  const tensor: NonNullable<TypeProto["tensor_type"]> = { elem_type: elemType };
  if (shape) tensor.shape = { dim: shape.map((d) => (typeof d === "number" ? { dim_value: d } : typeof d === "string" ? { dim_param: d } : {})) };
  return { name, type: { tensor_type: tensor } };
}

/**
 * Run one batch with `names` exposed as outputs and return their concrete shapes and types.
 * The model itself is not changed.
 */
export async function discoverShapes(
  model: OnnxModel,
  names: readonly string[],
  feeds: Record<string, ort.Tensor>,
  settings: SessionSettings = {},
): Promise<Map<string, { elemType: number | undefined; dims: number[] }>> {
  const graph = model.proto.graph!;
  const existing = new Set((graph.output ?? []).map((o) => o.name));
  const view = new Graph(graph);
  const extra = names
    .filter((n) => !existing.has(n))
    .map((n): ValueInfoProto => {
      const declared = declaredInfo(view, n);
      return declared.elemType ? makeValueInfo(n, declared.elemType) : { name: n };
    });
  const original = graph.output;
  let bytes: Uint8Array;
  try {
    graph.output = [...(original ?? []), ...extra];
    bytes = runtimeBytes(model.proto, model.readExternal);
  } finally {
    if (original === undefined) delete graph.output;
    else graph.output = original;
  }
  const session = await createSession(bytes, { ...settings, optimization: "disabled" });
  try {
    const result = await runSession(session, feeds, names);
    const out = new Map<string, { elemType: number | undefined; dims: number[] }>();
    for (const n of names) {
      const t = result[n];
      if (t) out.set(n, { elemType: dataTypeFromOrt(t.type), dims: [...t.dims] });
    }
    return out;
  } finally {
    await session.release();
  }
}
