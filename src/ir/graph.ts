/**
 * A graph view over a GraphProto: producers, consumers, initializers, value infos, a stable
 * topological sort, and the outer-scope names that If/Loop/Scan subgraphs read.
 *
 * The view edits the GraphProto in place through a handful of verbs (addNode, addInitializer,
 * addOutput, cleanup, toposort), so an unedited model saves byte-identical and an edited one
 * stays a valid ONNX graph.
 */
import type { GraphProto, NodeProto, TensorProto, ValueInfoProto } from "../onnx/types.js";
import { EeToolError } from "../errors.js";

/** Names a graph defines itself: its inputs, initializers and node outputs. */
function definedNames(g: GraphProto): Set<string> {
  const s = new Set<string>();
  for (const i of g.input ?? []) if (i.name) s.add(i.name);
  for (const t of g.initializer ?? []) if (t.name) s.add(t.name);
  for (const sp of g.sparse_initializer ?? []) if (sp.values?.name) s.add(sp.values.name);
  for (const n of g.node ?? []) for (const o of n.output ?? []) if (o) s.add(o);
  return s;
}

function subgraphsOf(node: NodeProto): GraphProto[] {
  const out: GraphProto[] = [];
  for (const a of node.attribute ?? []) {
    if (a.g) out.push(a.g);
    for (const g of a.graphs ?? []) out.push(g);
  }
  return out;
}

/** Names a subgraph (and its own subgraphs) read from enclosing scopes. */
export function outerScopeReads(g: GraphProto): Set<string> {
  const defined = definedNames(g);
  const reads = new Set<string>();
  for (const n of g.node ?? []) {
    for (const i of n.input ?? []) if (i && !defined.has(i)) reads.add(i);
    for (const sub of subgraphsOf(n)) for (const r of outerScopeReads(sub)) if (!defined.has(r)) reads.add(r);
  }
  for (const o of g.output ?? []) if (o.name && !defined.has(o.name)) reads.add(o.name);
  return reads;
}

export class Graph {
  readonly proto: GraphProto;
  private producers = new Map<string, NodeProto>();
  private consumerMap = new Map<string, NodeProto[]>();
  private initializers = new Map<string, TensorProto>();
  private valueInfos = new Map<string, ValueInfoProto>();
  private implicit = new Map<NodeProto, string[]>();

  constructor(proto: GraphProto) {
    this.proto = proto;
    this.reindex();
  }

  /** Rebuild the indexes after the GraphProto was changed directly. */
  reindex(): void {
    this.producers.clear();
    this.consumerMap.clear();
    this.initializers.clear();
    this.valueInfos.clear();
    this.implicit.clear();
    const g = this.proto;
    for (const t of g.initializer ?? []) if (t.name) this.initializers.set(t.name, t);
    for (const list of [g.value_info, g.input, g.output]) for (const vi of list ?? []) if (vi.name) this.valueInfos.set(vi.name, vi);
    for (const n of g.node ?? []) {
      for (const o of n.output ?? []) if (o) this.producers.set(o, n);
      const implicit = new Set<string>();
      for (const sub of subgraphsOf(n)) for (const r of outerScopeReads(sub)) implicit.add(r);
      if (implicit.size) this.implicit.set(n, [...implicit]);
      for (const i of this.inputsOf(n)) {
        const list = this.consumerMap.get(i);
        if (list) {
          if (!list.includes(n)) list.push(n);
        } else this.consumerMap.set(i, [n]);
      }
    }
  }

  get nodes(): NodeProto[] {
    return this.proto.node ?? [];
  }

  /** Graph inputs that are not initializers (the values a caller feeds). */
  get inputs(): ValueInfoProto[] {
    return (this.proto.input ?? []).filter((i) => !this.initializers.has(i.name ?? ""));
  }

  get outputs(): ValueInfoProto[] {
    return this.proto.output ?? [];
  }

  /** Explicit inputs plus names the node's subgraphs read from this scope. */
  inputsOf(node: NodeProto): string[] {
    const explicit = (node.input ?? []).filter((i) => i !== "");
    const implicit = this.implicit.get(node) ?? [];
    return implicit.length ? [...new Set([...explicit, ...implicit])] : explicit;
  }

  /** Names that node's subgraphs read from the enclosing scope. */
  implicitInputsOf(node: NodeProto): string[] {
    return this.implicit.get(node) ?? [];
  }

  producer(name: string): NodeProto | undefined {
    return this.producers.get(name);
  }

  consumers(name: string): NodeProto[] {
    return this.consumerMap.get(name) ?? [];
  }

  initializer(name: string): TensorProto | undefined {
    return this.initializers.get(name);
  }

  isInitializer(name: string): boolean {
    return this.initializers.has(name);
  }

  isGraphInput(name: string): boolean {
    return this.inputs.some((i) => i.name === name);
  }

  valueInfo(name: string): ValueInfoProto | undefined {
    return this.valueInfos.get(name);
  }

  /** Every tensor name used or defined in this graph. */
  names(): Set<string> {
    const s = definedNames(this.proto);
    for (const n of this.nodes) for (const i of this.inputsOf(n)) s.add(i);
    return s;
  }

  /** A name not yet used in the graph, derived from `base`. */
  uniqueName(base: string): string {
    const used = this.names();
    for (const n of this.nodes) if (n.name) used.add(n.name);
    if (!used.has(base)) return base;
    for (let i = 1; ; i++) if (!used.has(`${base}_${i}`)) return `${base}_${i}`;
  }

  /**
   * Stable topological order: among ready nodes the one earliest in the current order goes first,
   * so an already sorted graph keeps its order exactly.
   */
  sortedNodes(): NodeProto[] {
    const nodes = this.nodes;
    const index = new Map(nodes.map((n, i) => [n, i] as const));
    const pending = new Map<NodeProto, number>();
    const dependents = new Map<NodeProto, NodeProto[]>();
    for (const n of nodes) {
      let count = 0;
      for (const i of new Set(this.inputsOf(n))) {
        const p = this.producers.get(i);
        if (p && p !== n) {
          count++;
          const d = dependents.get(p);
          if (d) d.push(n);
          else dependents.set(p, [n]);
        }
      }
      pending.set(n, count);
    }
    // A binary heap on original index keeps this O(n log n).
    const heap: NodeProto[] = [];
    const less = (a: NodeProto, b: NodeProto): boolean => index.get(a)! < index.get(b)!;
    const pushHeap = (n: NodeProto): void => {
      heap.push(n);
      let i = heap.length - 1;
      while (i > 0) {
        const p = (i - 1) >> 1;
        if (!less(heap[i]!, heap[p]!)) break;
        [heap[i], heap[p]] = [heap[p]!, heap[i]!];
        i = p;
      }
    };
    const popHeap = (): NodeProto => {
      const top = heap[0]!;
      const last = heap.pop()!;
      if (heap.length) {
        heap[0] = last;
        let i = 0;
        for (;;) {
          const l = 2 * i + 1;
          const r = l + 1;
          let m = i;
          if (l < heap.length && less(heap[l]!, heap[m]!)) m = l;
          if (r < heap.length && less(heap[r]!, heap[m]!)) m = r;
          if (m === i) break;
          [heap[i], heap[m]] = [heap[m]!, heap[i]!];
          i = m;
        }
      }
      return top;
    };
    for (const n of nodes) if (pending.get(n) === 0) pushHeap(n);
    const order: NodeProto[] = [];
    while (heap.length) {
      const n = popHeap();
      order.push(n);
      for (const d of dependents.get(n) ?? []) {
        const c = pending.get(d)! - 1;
        pending.set(d, c);
        if (c === 0) pushHeap(d);
      }
    }
    if (order.length !== nodes.length) {
      const stuck = nodes.find((n) => (pending.get(n) ?? 0) > 0);
      throw new EeToolError("MODEL_INVALID", `graph has a cycle (at node '${stuck?.name ?? stuck?.op_type ?? "?"}')`);
    }
    return order;
  }

  /** Reorder the GraphProto's nodes topologically (stable). */
  toposort(): this {
    const order = this.sortedNodes();
    if (order.some((n, i) => n !== this.nodes[i])) this.proto.node = order;
    return this;
  }

  addNode(node: NodeProto): NodeProto {
    for (const o of node.output ?? []) {
      if (o && (this.producers.has(o) || this.initializers.has(o) || this.isGraphInput(o))) {
        throw new EeToolError("INTERNAL", `node output '${o}' is already defined in the graph`);
      }
    }
    (this.proto.node ??= []).push(node);
    this.reindex();
    return node;
  }

  addInitializer(tensor: TensorProto): TensorProto {
    if (!tensor.name) throw new EeToolError("INTERNAL", "initializer without a name");
    if (this.initializers.has(tensor.name) || this.producers.has(tensor.name)) {
      throw new EeToolError("INTERNAL", `initializer '${tensor.name}' is already defined in the graph`);
    }
    (this.proto.initializer ??= []).push(tensor);
    this.initializers.set(tensor.name, tensor);
    return tensor;
  }

  addOutput(output: ValueInfoProto): void {
    if (!output.name) throw new EeToolError("INTERNAL", "output without a name");
    if (this.outputs.some((o) => o.name === output.name)) return;
    (this.proto.output ??= []).push(output);
    this.valueInfos.set(output.name, output);
  }

  /** Names the graph outputs (or the given roots) depend on, transitively, through explicit and implicit inputs. */
  liveNames(roots?: readonly string[]): Set<string> {
    const live = new Set<string>();
    const stack = roots ? [...roots] : this.outputs.map((o) => o.name ?? "").filter(Boolean);
    while (stack.length) {
      const name = stack.pop()!;
      if (live.has(name)) continue;
      live.add(name);
      const p = this.producers.get(name);
      if (p) for (const i of this.inputsOf(p)) if (!live.has(i)) stack.push(i);
    }
    return live;
  }

  /**
   * Remove nodes no output depends on, then initializers and value_info entries nothing uses.
   * Graph inputs are kept (removing them would change the model's signature).
   */
  cleanup(): { nodes: number; initializers: number } {
    const live = this.liveNames();
    const before = this.nodes.length;
    const keep = this.nodes.filter((n) => (n.output ?? []).some((o) => o && live.has(o)));
    const removedNodes = before - keep.length;
    if (removedNodes) this.proto.node = keep;
    const used = new Set<string>();
    for (const n of keep) for (const i of this.inputsOf(n)) used.add(i);
    for (const o of this.outputs) if (o.name) used.add(o.name);
    const inits = this.proto.initializer ?? [];
    const keptInits = inits.filter((t) => used.has(t.name ?? "") || this.isGraphInputName(t.name ?? ""));
    const removedInits = inits.length - keptInits.length;
    if (removedInits) this.proto.initializer = keptInits;
    if (this.proto.value_info && (removedNodes || removedInits)) {
      const defined = definedNames(this.proto);
      this.proto.value_info = this.proto.value_info.filter((v) => defined.has(v.name ?? ""));
    }
    if (removedNodes || removedInits) this.reindex();
    return { nodes: removedNodes, initializers: removedInits };
  }

  private isGraphInputName(name: string): boolean {
    return (this.proto.input ?? []).some((i) => i.name === name);
  }
}
