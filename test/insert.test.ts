import { describe, expect, it } from "vitest";
import * as fs from "node:fs";
import * as path from "node:path";
import { CNN, TEXT, ROOT, runCli, tmpDir } from "./helpers/fixtures.js";
import { agreement, argmax, runAll } from "./helpers/run.js";
import { loadModel, saveModel, serializeModel } from "../src/onnx/model.js";
import { openCalibration } from "../src/data/calib.js";
import { readRampMetadata, unpackHashes } from "../src/ramps/metadata.js";
import { encodeNpy } from "../src/data/npy.js";
import { openNpz } from "../src/data/npz.js";
import { encodeMessage } from "../src/onnx/codec.js";
import { DataType } from "../src/onnx/dtype.js";
import { makeTensor } from "../src/onnx/tensor.js";
import { makeValueInfo } from "../src/ir/shapes.js";
import { gridWindow } from "../src/ramps/build.js";

const FIX = (p: string): string => path.join(ROOT, "fixtures", p);

interface Inserted {
  file: string;
  stderr: string;
}

function insert(model: string, calib: string, extra: string[] = []): Inserted {
  const dir = tmpDir();
  const file = path.join(dir, "model.ee.onnx");
  const r = runCli(["insert", model, "--calib", calib, "-o", file, ...extra]);
  expect(r.stderr).not.toMatch(/error/);
  expect(r.code).toBe(0);
  return { file, stderr: r.stderr };
}

/** Agreement of each ramp with the final prediction on the evaluation slice (never used for fitting). */
async function evalAgreement(eeFile: string, evalData: string): Promise<{ perRamp: number[]; fitted: number }> {
  const model = loadModel(eeFile);
  const meta = readRampMetadata(model.proto)!;
  const data = openCalibration(evalData, model.proto);
  const fitted = unpackHashes(meta.calibration.fitHashes);
  const overlap = data.sampleHashes().filter((h) => fitted.has(h)).length;
  const outs = await runAll(serializeModel(model.proto), data, [meta.output, ...meta.ramps.map((r) => r.output)]);
  const final = argmax(outs.get(meta.output)!, meta.classes);
  return { perRamp: meta.ramps.map((r) => agreement(argmax(outs.get(r.output)!, meta.classes), final)), fitted: overlap };
}

function expectRisingWithDepth(perRamp: number[]): void {
  // Agreement rises with depth overall: every ramp at least as good as any two steps earlier, the last the best.
  for (let i = 2; i < perRamp.length; i++) expect(perRamp[i]!).toBeGreaterThanOrEqual(perRamp[i - 2]! - 0.01);
  expect(perRamp.at(-1)!).toBeGreaterThanOrEqual(Math.max(...perRamp) - 0.01);
  expect(perRamp.at(-1)!).toBeGreaterThan(perRamp[0]! + 0.1);
}

describe("ee-tool insert on the fixtures", () => {
  it("CNN: original output unchanged, ramps agree with the model on unseen data, rising with depth", async () => {
    const { file, stderr } = insert(CNN, FIX("cnn/calib.npz"), ["--ramp", "linear"]);
    expect(stderr).toMatch(/ramps fitted on 1600 of 4000 calibration samples/);
    const model = loadModel(file);
    const meta = readRampMetadata(model.proto)!;
    expect(meta.classes).toBe(10);
    expect(meta.ramps.length).toBeGreaterThanOrEqual(5);
    expect(meta.ramps.every((r) => r.layout === "NCHW" && r.pooling === "gap")).toBe(true);
    // Every original output is unchanged: bit-identical without graph optimisations, 1e-5 with them.
    const original = loadModel(CNN);
    const data = openCalibration(FIX("cnn/eval.npz"), original.proto);
    for (const [optimization, tol] of [["disabled", 0], ["all", 1e-5]] as const) {
      const a = (await runAll(serializeModel(original.proto), data, ["logits"], { n: 300, settings: { optimization } })).get("logits")!;
      const b = (await runAll(serializeModel(model.proto), data, ["logits"], { n: 300, settings: { optimization } })).get("logits")!;
      if (tol === 0) expect(Buffer.from(b.buffer).equals(Buffer.from(a.buffer))).toBe(true);
      else for (let i = 0; i < a.length; i++) expect(Math.abs(b[i]! - a[i]!)).toBeLessThanOrEqual(tol * Math.max(1, Math.abs(a[i]!)));
    }
    const { perRamp, fitted } = await evalAgreement(file, FIX("cnn/eval.npz"));
    expect(fitted).toBe(0);
    console.log("CNN ramp agreement on eval slice:", perRamp.map((a) => a.toFixed(3)).join(" "));
    expect(perRamp.at(-1)!).toBeGreaterThanOrEqual(0.9);
    expectRisingWithDepth(perRamp);
  });

  it("CNN with mlp ramps: --pool auto takes grid pooling where it fits better, and shallow exits agree far better on unseen data", async () => {
    const mlp = insert(CNN, FIX("cnn/calib.npz"), ["--ramp", "mlp"]).file;
    const meta = readRampMetadata(loadModel(mlp).proto)!;
    expect(meta.ramps.every((r) => r.kind === "mlp" && r.hidden === Math.min(64, r.featureDim))).toBe(true);
    expect(meta.ramps.slice(0, 2).map((r) => r.pooling)).toEqual(["grid", "grid"]);
    // [16,28,28] on a 4x4 grid: 256 features.
    expect(meta.ramps[0]!.featureDim).toBe(256);
    const withGrid = (await evalAgreement(mlp, FIX("cnn/eval.npz"))).perRamp;
    const linear = (await evalAgreement(insert(CNN, FIX("cnn/calib.npz"), ["--ramp", "linear"]).file, FIX("cnn/eval.npz"))).perRamp;
    console.log("CNN mlp/grid ramp agreement on eval slice:", withGrid.map((a) => a.toFixed(3)).join(" "), "linear/gap:", linear.map((a) => a.toFixed(3)).join(" "));
    expect(withGrid[0]!).toBeGreaterThan(linear[0]! + 0.08);
    expect(withGrid[1]!).toBeGreaterThan(linear[1]! + 0.08);
    expect(withGrid.at(-1)!).toBeGreaterThanOrEqual(0.9);
  });

  it("--ramp auto (the default): an mlp only where it agrees clearly better than a linear ramp", () => {
    const cnn = readRampMetadata(loadModel(insert(CNN, FIX("cnn/calib.npz")).file).proto)!;
    // Shallow CNN exits: mlp on grid features agrees 10+ points better on held-out samples.
    expect(cnn.ramps.slice(0, 2).map((r) => `${r.kind}/${r.pooling}`)).toEqual(["mlp/grid", "mlp/grid"]);
    // Text exits: mlp and linear agree within a point on most, so most stay linear (cheaper).
    const text = readRampMetadata(loadModel(insert(TEXT, FIX("text/calib.npz"), ["--ramp", "auto"]).file).proto)!;
    expect(text.ramps.filter((r) => r.kind === "linear").length).toBeGreaterThanOrEqual(3);
    const r = runCli(["insert", CNN, "--calib", FIX("cnn/calib.npz"), "--ramp", "deep", "-o", path.join(tmpDir(), "x.onnx")]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/--ramp must be linear, mlp or auto, got 'deep'/);
  });

  it("grid pooling: 2x2 to 4x4 cells within 1,024 features", () => {
    expect(gridWindow([1, 16, 28, 28])).toEqual({ kernel: [7, 7], cells: [4, 4] });
    expect(gridWindow([1, 64, 7, 7])).toEqual({ kernel: [2, 2], cells: [3, 3] });
    expect(gridWindow([1, 256, 56, 56])).toEqual({ kernel: [19, 19], cells: [2, 2] });
    // 512 channels fit no grid of at least 2x2 cells (the 2x2 windows of a 7x7 map would be 4 wide: one cell).
    expect(gridWindow([1, 512, 7, 7])).toBeNull();
    expect(gridWindow([1, 128, 7, 7])).toEqual({ kernel: [3, 3], cells: [2, 2] });
    expect(gridWindow([1, 16, 1, 1])).toBeNull();
  });

  it("text (BERT-style, attention mask across every layer): ramps agree on unseen data, rising with depth", async () => {
    const { file } = insert(TEXT, FIX("text/calib.npz"));
    const meta = readRampMetadata(loadModel(file).proto)!;
    expect(meta.mainInput).toBe("input_ids");
    expect(meta.ramps.every((r) => r.layout === "NSD")).toBe(true);
    // The additive mask built from attention_mask crosses the cuts and is passed along.
    expect(meta.ramps[0]!.crossing.length).toBe(1);
    const { perRamp, fitted } = await evalAgreement(file, FIX("text/eval.npz"));
    expect(fitted).toBe(0);
    console.log("text ramp agreement on eval slice:", perRamp.map((a) => a.toFixed(3)).join(" "));
    expect(perRamp.at(-1)!).toBeGreaterThanOrEqual(0.9);
    expectRisingWithDepth(perRamp);
  });

  it("is deterministic: same inputs and seed give a byte-identical model; calibration formats are equivalent", () => {
    const a = insert(TEXT, FIX("text/calib.npz"), ["--exits", "2", "--seed", "5"]).file;
    const b = insert(TEXT, FIX("text/calib.npz"), ["--exits", "2", "--seed", "5"]).file;
    expect(fs.readFileSync(a).equals(fs.readFileSync(b))).toBe(true);
    // The same samples as one .npy per input, and as an ONNX test-data directory.
    const dir = tmpDir();
    const arrays = openNpz(FIX("text/calib.npz"));
    const pbDir = path.join(dir, "pb");
    fs.mkdirSync(pbDir);
    let i = 0;
    for (const [name, arr] of arrays) {
      fs.writeFileSync(path.join(dir, `${name}.npy`), encodeNpy(arr.type, arr.shape, arr.rows(0, arr.shape[0]!)));
      const t = makeTensor(name, DataType.INT64, arr.shape, new BigInt64Array(new Uint8Array(arr.rows(0, arr.shape[0]!)).buffer));
      fs.writeFileSync(path.join(pbDir, `input_${i++}.pb`), encodeMessage("TensorProto", t));
    }
    const c = insert(TEXT, `input_ids=${dir}/input_ids.npy,attention_mask=${dir}/attention_mask.npy`, ["--exits", "2", "--seed", "5"]).file;
    const d = insert(TEXT, pbDir, ["--exits", "2", "--seed", "5"]).file;
    expect(fs.readFileSync(c).equals(fs.readFileSync(a))).toBe(true);
    expect(fs.readFileSync(d).equals(fs.readFileSync(a))).toBe(true);
    // A different seed fits on different samples.
    const e = insert(TEXT, FIX("text/calib.npz"), ["--exits", "2", "--seed", "6"]).file;
    expect(fs.readFileSync(e).equals(fs.readFileSync(a))).toBe(false);
  });

  it("takes exits by count, ids and names; mlp ramps and labels", () => {
    const all = JSON.parse(runCli(["inspect", CNN, "--json"]).stdout).exits.candidates as Array<{ id: number; tensor: string }>;
    const picked = insert(CNN, FIX("cnn/calib.npz"), ["--exits", `1,${all[4]!.tensor}`, "--ramp", "mlp", "--labels", FIX("cnn/calib_labels.npy"), "--output", "logits"]);
    const meta = readRampMetadata(loadModel(picked.file).proto)!;
    expect(meta.ramps.map((r) => r.exit)).toEqual([1, 4]);
    expect(meta.ramps.every((r) => r.kind === "mlp" && r.hidden > 0)).toBe(true);
    expect(meta.calibration.targets).toBe("model+labels");
    const three = readRampMetadata(loadModel(insert(CNN, FIX("cnn/calib.npz"), ["--exits", "3"]).file).proto)!;
    expect(three.ramps.length).toBe(3);
  });
});

/** A one-Relu model x -> output of this element type and shape, written to file. */
function reluModel(file: string, elemType: number, dims: Array<string | number>, output: string): string {
  fs.writeFileSync(file, serializeModel({
    ir_version: 8, opset_import: [{ domain: "", version: 17 }],
    graph: {
      name: "g", node: [{ op_type: "Relu", input: ["x"], output: [output] }],
      input: [makeValueInfo("x", elemType, dims)], output: [makeValueInfo(output, elemType, dims)],
    },
  }));
  return file;
}

describe("ee-tool insert: bad input", () => {
  function expectFails(args: string[], code: string, pattern?: RegExp): void {
    const dir = tmpDir();
    const out = path.join(dir, "out.onnx");
    const r = runCli(["insert", ...args, "-o", out]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(new RegExp(`^ee-tool: error \\[${code}\\]`));
    if (pattern) expect(r.stderr).toMatch(pattern);
    expect(r.stderr.trim().split("\n").length).toBe(2);
    expect(fs.readdirSync(dir)).toEqual([]);
  }

  it("refuses float16 models, classifiers and decoders, in one line with how to get a float32 one", () => {
    const dir = tmpDir();
    const half = reluModel(path.join(dir, "half.onnx"), DataType.FLOAT16, ["n", 10], "logits");
    const x = path.join(dir, "x.npy");
    fs.writeFileSync(x, encodeNpy("float32", [12, 10], new Uint8Array(12 * 10 * 4)));
    expectFails([half, "--calib", x], "UNSUPPORTED", /output 'logits' is float16: ee-tool fits and runs exits on float32 models\n  hint: Export the model in float32/);
    const lm = loadModel(FIX("lm/model.onnx"));
    const proto = structuredClone(lm.proto);
    proto.graph!.output!.find((o) => o.name === "logits")!.type!.tensor_type!.elem_type = DataType.FLOAT16;
    const halfLm = path.join(dir, "half-lm.onnx");
    saveModel({ ...lm, proto }, halfLm);
    expectFails([halfLm, "--calib", FIX("lm/calib.npy")], "UNSUPPORTED", /output 'logits' is float16/);
  });

  it("refuses models that are not classifiers, bad calibration data and unknown exits, leaving no output", () => {
    const dir = tmpDir();
    // A model whose output is a feature map, not [N, classes].
    const conv = reluModel(path.join(dir, "conv.onnx"), DataType.FLOAT, ["n", 3, 4, 4], "y");
    const x = path.join(dir, "x.npy");
    fs.writeFileSync(x, encodeNpy("float32", [12, 3, 4, 4], new Uint8Array(12 * 48 * 4)));
    expectFails([conv, "--calib", x], "NOT_A_CLASSIFIER", /shape \[2,3,4,4\]/);
    const wrong = path.join(dir, "wrong.npy");
    fs.writeFileSync(wrong, encodeNpy("float32", [20, 1, 32, 32], new Uint8Array(20 * 1024 * 4)));
    expectFails([CNN, "--calib", wrong], "CALIB_MISMATCH", /input 'image': expected shape \[batch,1,28,28\], .* has \[20,1,32,32\]/);
    const empty = path.join(dir, "empty.npy");
    fs.writeFileSync(empty, encodeNpy("float32", [0, 1, 28, 28], new Uint8Array(0)));
    expectFails([CNN, "--calib", empty], "CALIB_MISMATCH", /zero samples/);
    const ints = path.join(dir, "ints.npy");
    fs.writeFileSync(ints, encodeNpy("int32", [20, 1, 28, 28], new Uint8Array(20 * 784 * 4)));
    expectFails([CNN, "--calib", ints], "CALIB_MISMATCH", /expects float32, .* holds int32/);
    expectFails([CNN, "--calib", FIX("cnn/calib.npz"), "--exits", "/no/such/tensor"], "EXIT_NOT_FOUND");
    expectFails([CNN, "--calib", FIX("cnn/calib.npz"), "--exits", "99"], "EXIT_NOT_FOUND", /asks for 99 exits/);
    expectFails([CNN, "--calib", FIX("cnn/calib.npz"), "--exits", "1,99"], "EXIT_NOT_FOUND", /exit '99' is not a candidate/);
    expectFails([TEXT, "--calib", FIX("text/calib.npz").replace("calib", "nope")], "FILE_NOT_FOUND");
    expectFails([TEXT, "--calib", `input_ids=${x}`], "CALIB_MISMATCH");
  });
});
