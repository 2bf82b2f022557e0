/** Visit every graph and every tensor of a model, nested subgraphs and functions included. */
import type { AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto } from "./types.js";

function nodeGraphs(node: NodeProto): GraphProto[] {
  const out: GraphProto[] = [];
  for (const a of node.attribute ?? []) {
    if (a.g) out.push(a.g);
    for (const g of a.graphs ?? []) out.push(g);
  }
  return out;
}

function attributeTensors(a: AttributeProto): TensorProto[] {
  const out: TensorProto[] = [];
  if (a.t) out.push(a.t);
  for (const t of a.tensors ?? []) out.push(t);
  for (const s of [...(a.sparse_tensor ? [a.sparse_tensor] : []), ...(a.sparse_tensors ?? [])]) {
    if (s.values) out.push(s.values);
    if (s.indices) out.push(s.indices);
  }
  return out;
}

/** Every graph in the model: the main graph, subgraphs (If/Loop/Scan bodies), training graphs. */
export function allGraphs(model: ModelProto): GraphProto[] {
  const out: GraphProto[] = [];
  const visit = (g: GraphProto): void => {
    out.push(g);
    for (const n of g.node ?? []) for (const sub of nodeGraphs(n)) visit(sub);
  };
  if (model.graph) visit(model.graph);
  for (const ti of model.training_info ?? []) {
    if (ti.initialization) visit(ti.initialization);
    if (ti.algorithm) visit(ti.algorithm);
  }
  for (const f of model.functions ?? []) for (const n of f.node ?? []) for (const sub of nodeGraphs(n)) visit(sub);
  return out;
}

/** Every TensorProto in the model: initializers, sparse initializers and tensor attributes. */
export function allTensors(model: ModelProto): TensorProto[] {
  const out: TensorProto[] = [];
  const fromNodes = (nodes: NodeProto[] | undefined): void => {
    for (const n of nodes ?? []) for (const a of n.attribute ?? []) out.push(...attributeTensors(a));
  };
  for (const g of allGraphs(model)) {
    out.push(...(g.initializer ?? []));
    for (const s of g.sparse_initializer ?? []) {
      if (s.values) out.push(s.values);
      if (s.indices) out.push(s.indices);
    }
    fromNodes(g.node);
  }
  for (const f of model.functions ?? []) fromNodes(f.node);
  return out;
}
