import { describe, expect, it } from "vitest";
import { parseEp, providerHint, providerOption, ortProviderName } from "../src/ort/providers.js";
import { countPlacement } from "../src/ort/placement.js";
import { describeFusion } from "../src/cli/format.js";
import { renderProviders } from "../src/cli/inspect.js";
import { runtimeForms, SEGMENTS_MARGIN } from "../src/profile/profile.js";
import { EeToolError } from "../src/errors.js";
import { loadModel } from "../src/onnx/model.js";
import { readRampMetadata } from "../src/ramps/metadata.js";
import { withRamps } from "../src/ramps/select.js";
import { Graph } from "../src/ir/graph.js";
import { CNN, runCli, tmpDir } from "./helpers/fixtures.js";
import * as path from "node:path";
import * as fs from "node:fs";

describe("execution providers", () => {
  it("--ep: names, device ids where the provider has them, one-line errors otherwise", () => {
    expect(parseEp(undefined)).toEqual({ name: "cpu", deviceId: null });
    expect(parseEp("CUDA:1")).toEqual({ name: "cuda", deviceId: 1 });
    expect(providerOption("cuda:1")).toEqual({ name: "cuda", deviceId: 1 });
    expect(providerOption("webgpu")).toBe("webgpu");
    expect(ortProviderName("tensorrt")).toBe("TensorrtExecutionProvider");
    expect(() => parseEp("rocm")).toThrow(EeToolError);
    expect(() => parseEp("rocm")).toThrow(/--ep takes one of cpu, webgpu, cuda, tensorrt/);
    expect(() => parseEp("cpu:1")).toThrow(/--ep cpu takes no device id/);
    // WebGPU without a Vulkan loader or driver says "No supported adapters": the hint names both.
    expect(providerHint("Failed to get a WebGPU adapter: No supported adapters")).toMatch(/libvulkan1.*VK_ICD_FILENAMES/);
    expect(providerHint("Failed to load shared library")).toMatch(/CUDA binaries/);
    // inspect --providers adds that hint only where WebGPU found no adapter.
    const row = (available: boolean, reason: string | null) => [{ name: "cpu", bundled: true, available: true, reason: null }, { name: "webgpu", bundled: true, available, reason }];
    expect(renderProviders(row(false, "Failed to get a WebGPU adapter: No supported adapters"))).toMatch(/\n  hint \(webgpu\): .*libvulkan1/);
    expect(renderProviders(row(true, null))).not.toMatch(/hint/);
    // The commands check --ep before any work, in one line with a hint.
    const r = runCli(["eval", "x.plan.json", "--data", "y.npz", "--ep", "gpu"]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^ee-tool: error \[USAGE\]: --ep takes one of cpu, webgpu, cuda, tensorrt .*got 'gpu'\n  hint: `ee-tool inspect --providers` lists what this onnxruntime build can run here\.\n$/);
  });

  it("placement from onnxruntime's profiler trace: each node once, copies counted, fallbacks by op type", () => {
    const ev = (name: string, op: string, provider: string) => ({ cat: "Node", name: `${name}_kernel_time`, args: { op_name: op, provider } });
    const p = countPlacement([
      ev("conv", "Conv", "WebGpuExecutionProvider"), ev("conv", "Conv", "WebGpuExecutionProvider"),
      ev("if", "If", "CPUExecutionProvider"), ev("copy", "MemcpyToHost", "WebGpuExecutionProvider"),
      { cat: "Session", name: "model_run" }, ev("topk", "TopK", "CPUExecutionProvider"), ev("topk2", "TopK", "CPUExecutionProvider"),
    ], "WebGpuExecutionProvider");
    expect(p).toEqual({ nodes: { WebGpuExecutionProvider: 2, CPUExecutionProvider: 3 }, copies: 1, fallback: { If: 1, TopK: 2 } });
  });

  it("the runtime form: segments only when measured clearly faster than the one-call model", () => {
    // stages 1+1, ramps 0.3 and 0.3 less a 0.1 call each: the parts add up to 2.4.
    expect(runtimeForms(2.5, 2.45, [1, 1], [0.3, 0.3], 0.1).faster).toBe("one-call");
    expect(runtimeForms(2.6 / (1 - SEGMENTS_MARGIN) + 0.01, 2.6, [1, 1], [0.3, 0.3], 0.1)).toEqual({ oneCall: expect.any(Number) as number, segments: 2.6, segmentsParts: expect.closeTo(2.4, 9) as number, faster: "segments" });
    // The parts alone would have chosen segments; measured, the hand-offs make them slower.
    expect(runtimeForms(2.6, 2.9, [1, 1], [0.3, 0.3], 0.1).faster).toBe("one-call");
  });

  it("fusion changes in words", () => {
    expect(describeFusion(null)).toBe("-");
    expect(describeFusion({})).toBe("fuses as without the exit");
    expect(describeFusion({ "com.microsoft.SkipLayerNormalization": -1, Add: 1, LayerNormalization: 1 })).toBe("breaks a fusion: com.microsoft.SkipLayerNormalization -1, Add +1, LayerNormalization +1");
    expect(describeFusion({ Relu: 1 })).toBe("breaks a fusion: Relu +1"); // a Relu fused into a Conv as its attribute
    expect(describeFusion({ Gelu: -1 })).toBe("changes Gelu -1");
  });
});

describe("ramps kept for a plan", () => {
  it("withRamps keeps the listed ramps' outputs, nodes and metadata, and drops the others'", () => {
    const dir = tmpDir();
    const ee = path.join(dir, "cnn.ee.onnx");
    expect(runCli(["insert", CNN, "--calib", path.join(path.dirname(CNN), "calib.npz"), "--ramp", "linear", "--pool", "gap", "-o", ee, "-q"]).code).toBe(0);
    const model = loadModel(ee);
    const meta = readRampMetadata(model.proto)!;
    const keep = [meta.ramps[1]!.id, meta.ramps[3]!.id];
    const kept = withRamps(model.proto, keep);
    expect(readRampMetadata(kept)!.ramps.map((r) => r.id)).toEqual(keep);
    const outs = (kept.graph!.output ?? []).map((o) => o.name);
    expect(outs).toEqual([meta.output, ...keep.map((id) => meta.ramps.find((r) => r.id === id)!.output)]);
    // Nothing left that no output needs, and the original model untouched.
    const g = new Graph(kept.graph!);
    const live = g.liveNames();
    expect(g.nodes.every((n) => (n.output ?? []).some((o) => live.has(o)))).toBe(true);
    expect(g.nodes.length).toBeLessThan((model.proto.graph!.node ?? []).length);
    expect(readRampMetadata(model.proto)!.ramps.length).toBe(meta.ramps.length);
    expect(() => withRamps(model.proto, [999])).toThrow(/no ramp 999/);
    fs.rmSync(dir, { recursive: true, force: true });
  });
});
