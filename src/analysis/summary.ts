/** What `ee-tool inspect` reports about a model. */
import type { OnnxModel } from "../onnx/model.js";
import { Graph } from "../ir/graph.js";
import { declaredInfo, type Dim } from "../ir/shapes.js";
import { dataTypeName } from "../onnx/dtype.js";
import { toNumber } from "../onnx/int64.js";
import { allGraphs, allTensors } from "../onnx/walk.js";
import { isExternal, numElements, tensorByteSize, tensorDims } from "../onnx/tensor.js";
import { externalRef } from "../onnx/external.js";

export interface ValueSummary {
  name: string;
  type: string;
  shape: Dim[] | null;
}

export interface ModelSummary {
  path: string | null;
  fileBytes: number;
  irVersion: number;
  opsets: Array<{ domain: string; version: number }>;
  producer: { name: string; version: string };
  domain: string;
  modelVersion: number;
  graphName: string;
  inputs: ValueSummary[];
  outputs: ValueSummary[];
  parameters: { count: number; bytes: number; initializers: number };
  nodes: number;
  subgraphs: number;
  functions: number;
  ops: Array<{ op: string; count: number }>;
  externalData: Array<{ location: string; tensors: number; bytes: number }>;
  metadata: Record<string, string>;
}

export function summarizeModel(model: OnnxModel): ModelSummary {
  const proto = model.proto;
  const graph = new Graph(proto.graph!);
  const describe = (name: string): ValueSummary => {
    const info = declaredInfo(graph, name);
    return { name, type: dataTypeName(info.elemType).toLowerCase(), shape: info.shape ?? null };
  };
  const graphs = allGraphs(proto);
  let count = 0;
  let bytes = 0;
  let initializers = 0;
  for (const g of graphs) {
    for (const t of g.initializer ?? []) {
      initializers++;
      count += numElements(tensorDims(t));
      bytes += tensorByteSize(t);
    }
  }
  const ops = new Map<string, number>();
  let nodes = 0;
  for (const g of graphs) {
    for (const n of g.node ?? []) {
      nodes++;
      const key = n.domain && n.domain !== "ai.onnx" ? `${n.domain}.${n.op_type ?? ""}` : (n.op_type ?? "");
      ops.set(key, (ops.get(key) ?? 0) + 1);
    }
  }
  const external = new Map<string, { tensors: number; bytes: number }>();
  for (const t of allTensors(proto)) {
    if (!isExternal(t)) continue;
    const ref = externalRef(t);
    const e = external.get(ref.location) ?? { tensors: 0, bytes: 0 };
    e.tensors++;
    e.bytes += ref.length ?? tensorByteSize(t);
    external.set(ref.location, e);
  }
  const metadata: Record<string, string> = {};
  for (const m of proto.metadata_props ?? []) if (m.key !== undefined) metadata[m.key] = m.value ?? "";
  return {
    path: model.path ?? null,
    fileBytes: model.byteLength,
    irVersion: toNumber(proto.ir_version),
    opsets: (proto.opset_import ?? []).map((o) => ({ domain: o.domain || "ai.onnx", version: toNumber(o.version) })),
    producer: { name: proto.producer_name ?? "", version: proto.producer_version ?? "" },
    domain: proto.domain ?? "",
    modelVersion: toNumber(proto.model_version),
    graphName: proto.graph?.name ?? "",
    inputs: graph.inputs.map((i) => describe(i.name ?? "")),
    outputs: graph.outputs.map((o) => describe(o.name ?? "")),
    parameters: { count, bytes, initializers },
    nodes,
    subgraphs: graphs.length - 1,
    functions: proto.functions?.length ?? 0,
    ops: [...ops.entries()].sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0])).map(([op, c]) => ({ op, count: c })),
    externalData: [...external.entries()].map(([location, e]) => ({ location, ...e })),
    metadata,
  };
}
