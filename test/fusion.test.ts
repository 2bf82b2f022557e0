/**
 * What a cut does to onnxruntime's fused CPU graph (stages/fusion.ts, `inspect --fusion`): on the
 * CNN fixture a convolution's output, read before its Relu, keeps the two from fusing; a Relu's
 * output (every candidate insert offers there) fuses as the model does.
 */
import { describe, expect, it } from "vitest";
import * as path from "node:path";
import { loadModel } from "../src/onnx/model.js";
import { Graph } from "../src/ir/graph.js";
import { tensorFusion } from "../src/stages/fusion.js";
import { describeFusion } from "../src/cli/format.js";
import { CNN, runCli, tmpDir } from "./helpers/fixtures.js";

describe("fusion at a cut", () => {
  const model = loadModel(CNN);
  const g = new Graph(model.proto.graph!);
  // The first convolution whose output only a Relu reads (onnxruntime fuses the two), and that Relu.
  const conv = g.nodes.find((n) => n.op_type === "Conv" && g.consumers(n.output![0]!).every((c) => c.op_type === "Relu"))!;
  const relu = g.consumers(conv.output![0]!)[0]!;

  it("a tensor read inside a fused pair breaks the fusion; one at a block's end does not", async () => {
    const f = await tensorFusion(model, "logits", [conv.output![0]!, relu.output![0]!]);
    // onnxruntime's NCHWc Conv takes its Relu in as an attribute: with the Conv's output read, the
    // Relu runs on its own, and the Conv count stays.
    const inside = f.get(conv.output![0]!)!;
    expect(inside).toEqual({ Relu: 1 });
    expect(describeFusion(inside)).toBe("breaks a fusion: Relu +1");
    expect(f.get(relu.output![0]!)).toEqual({});
    const lastRelu = g.nodes.filter((n) => n.op_type === "Relu").at(-1)!;
    const end = (await tensorFusion(model, "logits", [lastRelu.output![0]!])).get(lastRelu.output![0]!);
    expect(end).toEqual({});
  });

  it("inspect --fusion shows it per candidate, and per ramp in a model from insert", () => {
    const j = JSON.parse(runCli(["inspect", CNN, "--fusion", "--json"]).stdout) as { exits: { candidates: Array<{ tensor: string; fusion: Record<string, number> | null }> } };
    expect(j.exits.candidates.length).toBeGreaterThan(0);
    for (const c of j.exits.candidates) expect(c.fusion).toEqual(expect.any(Object));
    const text = runCli(["inspect", CNN, "--fusion"]).stdout;
    expect(text).toMatch(/cut in onnxruntime's CPU graph/);
    expect(text).toMatch(/fuses as without the exit|breaks a fusion/);

    const dir = tmpDir();
    const ee = path.join(dir, "cnn.ee.onnx");
    expect(runCli(["insert", CNN, "--calib", path.join(path.dirname(CNN), "calib.npz"), "--ramp", "linear", "--exits", "2", "-o", ee, "-q"]).code).toBe(0);
    const r = JSON.parse(runCli(["inspect", ee, "--fusion", "--json", "--no-exits"]).stdout) as { ramps: Array<{ fusion: Record<string, number> | null }> };
    expect(r.ramps.length).toBe(2);
    for (const x of r.ramps) expect(x.fusion).toEqual({}); // insert's cuts are block ends
    const bad = runCli(["inspect", CNN, "--fusion", "--no-exits"]);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/--fusion needs the exit-point analysis/);
  });
});
