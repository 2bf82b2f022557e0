/** Exit-point analysis of a model: shapes from one batch, then the candidates. */
import type { OnnxModel } from "../onnx/model.js";
import { Graph } from "../ir/graph.js";
import { discoverShapes } from "../ir/shapes.js";
import { findExitCandidates, type ExitAnalysis, type ShapeFacts } from "./exits.js";
import { ort, type SessionSettings } from "../ort/ort.js";
import type { InputSpec } from "../data/calib.js";
import { ortTensor, typedArray } from "../data/calib.js";
import { DataType, dataTypeName } from "../onnx/dtype.js";
import { EeToolError } from "../errors.js";

/** A batch of zeros shaped like the model's inputs (symbolic dims: batch 2, others 8). */
export function syntheticFeeds(specs: InputSpec[], batch = 2): Record<string, ort.Tensor> {
  const feeds: Record<string, ort.Tensor> = {};
  for (const s of specs) {
    const dims = s.shape.map((d, i) => (typeof d === "number" ? d : i === 0 ? batch : 8));
    const count = dims.reduce((a, b) => a * b, 1);
    const bytes = { float32: 4, float64: 8, float16: 2, int8: 1, uint8: 1, int16: 2, uint16: 2, int32: 4, uint32: 4, int64: 8, uint64: 8, bool: 1 }[s.type];
    const data = typedArray(s.type, new Uint8Array(count * bytes));
    if (/mask/i.test(s.name)) {
      if (data instanceof BigInt64Array || data instanceof BigUint64Array) data.fill(1n);
      else data.fill(1);
    }
    feeds[s.name] = ortTensor(s.type, data, dims);
  }
  return feeds;
}

export interface AnalyzeOptions {
  output?: string;
  mainInput?: string;
  /** Keep every point on all main paths (decoders: the residual stream before the final norm too). */
  everyPoint?: boolean;
  settings?: SessionSettings;
}

/** Run one batch to learn every tensor's shape, then find the candidate exit points. */
export async function analyzeExits(model: OnnxModel, feeds: Record<string, ort.Tensor>, options: AnalyzeOptions = {}): Promise<ExitAnalysis> {
  const graph = new Graph(model.proto.graph!);
  const live = graph.liveNames();
  const names: string[] = [];
  for (const n of graph.nodes) for (const o of n.output ?? []) if (o && live.has(o)) names.push(o);
  const shapes = await discoverShapes(model, names, feeds, options.settings);
  for (const [name, t] of Object.entries(feeds)) shapes.set(name, { dims: [...t.dims], elemType: undefined });
  const batch = Object.values(feeds)[0]!.dims[0]!;
  return findExitCandidates(graph, shapes as Map<string, ShapeFacts>, {
    batch,
    ...(options.output ? { output: options.output } : {}),
    ...(options.mainInput ? { mainInput: options.mainInput } : {}),
    ...(options.everyPoint ? { minRemaining: 0, sameBoundary: 0 } : {}),
  });
}

/**
 * Exit heads are fitted and run in float32: a model whose logits are another float type fails
 * here in one line (before any pass), with how to get a float32 model.
 */
export function requireFloat32Logits(output: string, elemType: number | undefined): void {
  if (elemType === undefined || elemType === DataType.FLOAT) return;
  const name = dataTypeName(elemType);
  if (!([DataType.FLOAT16, DataType.BFLOAT16, DataType.DOUBLE] as number[]).includes(elemType)) return;
  throw new EeToolError("UNSUPPORTED", `output '${output}' is ${name.toLowerCase()}: ee-tool fits and runs exits on float32 models`, {
    hint: "Export the model in float32 (in torch, without .half() or autocast); the models ee-tool emits are ordinary ONNX and can be converted to float16 afterwards.",
  });
}
