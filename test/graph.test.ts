import { describe, expect, it } from "vitest";
import { Graph, outerScopeReads } from "../src/ir/graph.js";
import { discoverShapes, declaredInfo, makeValueInfo } from "../src/ir/shapes.js";
import { loadModel, serializeModel, parseModel } from "../src/onnx/model.js";
import { makeTensor } from "../src/onnx/tensor.js";
import type { GraphProto, ModelProto, NodeProto } from "../src/onnx/types.js";
import { DataType } from "../src/onnx/dtype.js";
import { createSession, runSession, ort } from "../src/ort/ort.js";
import { CNN } from "./helpers/fixtures.js";

const F = DataType.FLOAT;

function cnnInput(n = 2): ort.Tensor {
  return new ort.Tensor("float32", new Float32Array(n * 784).map((_, i) => (i * 31) % 256), [n, 1, 28, 28]);
}

async function run(proto: ModelProto, feeds: Record<string, ort.Tensor>): Promise<Record<string, ort.Tensor>> {
  const s = await createSession(serializeModel(proto));
  try {
    return await runSession(s, feeds);
  } finally {
    await s.release();
  }
}

/** x -> If(sum(x) > 0) { x + bias } else { x - bias }, where bias = 2 * x is used only inside the branches. */
function ifModel(): ModelProto {
  const branch = (op: string, name: string): GraphProto => ({
    name,
    node: [{ input: ["x", "bias"], output: [`${name}_y`], op_type: op }],
    output: [makeValueInfo(`${name}_y`, F, [2])],
  });
  return {
    ir_version: 8,
    opset_import: [{ domain: "", version: 17 }],
    graph: {
      name: "if",
      node: [
        { input: ["x", "two"], output: ["bias"], op_type: "Mul", name: "mul" },
        { input: ["x"], output: ["s"], op_type: "ReduceSum", name: "sum", attribute: [{ name: "keepdims", type: 2, i: 0 }] },
        { input: ["s", "zero"], output: ["c"], op_type: "Greater", name: "gt" },
        {
          input: ["c"], output: ["y"], op_type: "If", name: "if",
          attribute: [{ name: "then_branch", type: 5, g: branch("Add", "then") }, { name: "else_branch", type: 5, g: branch("Sub", "else") }],
        },
        { input: ["x"], output: ["dead"], op_type: "Neg", name: "dead_neg" },
      ],
      initializer: [makeTensor("two", F, [], Float32Array.of(2)), makeTensor("zero", F, [], Float32Array.of(0)), makeTensor("unused", F, [1], Float32Array.of(5))],
      input: [makeValueInfo("x", F, [2])],
      output: [makeValueInfo("y", F, [2])],
    },
  };
}

describe("graph view", () => {
  it("indexes producers, consumers, initializers and value infos of a real export", () => {
    const g = new Graph(loadModel(CNN).proto.graph!);
    expect(g.inputs.map((i) => i.name)).toEqual(["image"]);
    const gemm = g.nodes.find((n) => n.op_type === "Gemm")!;
    expect(g.producer(gemm.output![0]!)).toBe(gemm);
    expect(g.consumers("image").length).toBeGreaterThan(0);
    expect(g.isInitializer(gemm.input![1]!)).toBe(true);
    expect(declaredInfo(g, "logits").shape).toEqual(["batch", 10]);
  });

  it("sorts stably: a sorted export keeps its order, a shuffled one is put back in a valid order", async () => {
    const model = loadModel(CNN);
    const g = new Graph(model.proto.graph!);
    const before = [...g.nodes];
    g.toposort();
    expect(g.nodes).toEqual(before);
    const expected = (await run(model.proto, { image: cnnInput() })).logits!.data;
    model.proto.graph!.node = [...before].reverse();
    g.reindex();
    g.toposort();
    const pos = new Map(g.nodes.map((n, i) => [n, i]));
    for (const n of g.nodes) for (const i of n.input ?? []) {
      const p = g.producer(i);
      if (p) expect(pos.get(p)!).toBeLessThan(pos.get(n)!);
    }
    expect((await run(model.proto, { image: cnnInput() })).logits!.data).toEqual(expected);
  });

  it("detects cycles", () => {
    const proto: GraphProto = { node: [{ input: ["b"], output: ["a"], op_type: "Relu" }, { input: ["a"], output: ["b"], op_type: "Relu" }] };
    expect(() => new Graph(proto).sortedNodes()).toThrow(/cycle/);
  });

  it("knows the outer-scope names If branches read, and keeps their producers alive", async () => {
    const model = ifModel();
    const g = new Graph(model.graph!);
    const ifNode = g.nodes.find((n) => n.op_type === "If")!;
    expect(outerScopeReads(ifNode.attribute![0]!.g!)).toEqual(new Set(["x", "bias"]));
    expect(g.implicitInputsOf(ifNode).sort()).toEqual(["bias", "x"]);
    expect(g.consumers("bias")).toEqual([ifNode]);
    // Put the If first: the sort must move it after the node producing 'bias'.
    model.graph!.node = [ifNode, ...g.nodes.filter((n) => n !== ifNode)];
    g.reindex();
    g.toposort();
    expect(g.nodes.indexOf(ifNode)).toBeGreaterThan(g.nodes.findIndex((n) => n.name === "mul"));
    const removed = g.cleanup();
    expect(removed).toEqual({ nodes: 1, initializers: 1 });
    expect(g.nodes.map((n) => n.name)).toEqual(["mul", "sum", "gt", "if"]);
    const y = (await run(model, { x: new ort.Tensor("float32", Float32Array.of(1, 2), [2]) })).y!.data;
    expect(Array.from(y as Float32Array)).toEqual([3, 6]);
  });

  it("edits keep the graph valid: new nodes, initializers and outputs run in onnxruntime", async () => {
    const model = loadModel(CNN);
    const g = new Graph(model.proto.graph!);
    const relu = g.nodes.filter((n) => n.op_type === "Relu")[3]!;
    const scale = g.addInitializer(makeTensor(g.uniqueName("scale"), F, [1], Float32Array.of(0.5)));
    const node: NodeProto = { input: [relu.output![0]!, scale.name!], output: [g.uniqueName("halved")], op_type: "Mul", name: g.uniqueName("halve") };
    g.addNode(node);
    g.addOutput(makeValueInfo(node.output![0]!, F));
    g.toposort();
    const reparsed = parseModel(serializeModel(model.proto), model.dir).proto;
    const out = await run(reparsed, { image: cnnInput() });
    expect(out[node.output![0]!]!.dims).toEqual([2, 16, 28, 28]);
    expect(() => g.addNode({ input: ["image"], output: [node.output![0]!], op_type: "Relu" })).toThrow(/already defined/);
  });

  it("discovers shapes the graph does not declare by running one batch", async () => {
    const model = loadModel(CNN);
    const g = new Graph(model.proto.graph!);
    const names = g.nodes.filter((n) => n.op_type === "Relu").map((n) => n.output![0]!);
    expect(declaredInfo(g, names[0]!).shape).toBeUndefined();
    const shapes = await discoverShapes(model, names, { image: cnnInput(3) });
    expect(shapes.get(names[0]!)!.dims).toEqual([3, 16, 28, 28]);
    expect(shapes.get(names.at(-1)!)!.dims).toEqual([3, 64, 7, 7]);
    expect(shapes.get(names[0]!)!.elemType).toBe(F);
    expect(model.proto.graph!.output!.length).toBe(1); // the model itself is unchanged
  });
});
