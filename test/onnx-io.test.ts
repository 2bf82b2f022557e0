import { describe, expect, it } from "vitest";
import * as fs from "node:fs";
import * as path from "node:path";
import { loadModel, parseModel, saveModel, serializeModel } from "../src/onnx/model.js";
import { decodeMessage, encodeMessage } from "../src/onnx/codec.js";
import type { ModelProto, TensorProto } from "../src/onnx/types.js";
import { allTensors } from "../src/onnx/walk.js";
import { DataType } from "../src/onnx/dtype.js";
import { EeToolError } from "../src/errors.js";
import { isExternal, makeTensor, tensorToArray } from "../src/onnx/tensor.js";
import { createSession, runSession, runtimeBytes, ort } from "../src/ort/ort.js";
import { CNN, FIXTURE_MODELS, tmpDir } from "./helpers/fixtures.js";

function expectCode(fn: () => unknown, code: string, text?: RegExp): void {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(EeToolError);
    expect((e as EeToolError).code).toBe(code);
    if (text) expect((e as EeToolError).message).toMatch(text);
    return;
  }
  throw new Error(`expected EeToolError ${code}`);
}

/** A protobuf field with an unknown number: tag (field, wire type 2) + length + bytes. */
function unknownField(field: number, payload: number[]): Buffer {
  const tag: number[] = [];
  let v = field * 8 + 2;
  while (v >= 0x80) {
    tag.push((v & 0x7f) | 0x80);
    v >>>= 7;
  }
  tag.push(v);
  return Buffer.from([...tag, payload.length, ...payload]);
}

async function runFixtureCnn(bytes: Uint8Array): Promise<Float32Array> {
  const session = await createSession(bytes);
  const x = new Float32Array(2 * 28 * 28).map((_, i) => (i * 37) % 256);
  const out = await runSession(session, { image: new ort.Tensor("float32", x, [2, 1, 28, 28]) });
  await session.release();
  return out.logits!.data as Float32Array;
}

describe("lossless load and save", () => {
  it.each(FIXTURE_MODELS)("round-trips the PyTorch (opset 17) export %s byte-identically", (file) => {
    const original = fs.readFileSync(file);
    const model = loadModel(file);
    const dir = tmpDir();
    const out = path.join(dir, "copy.onnx");
    saveModel(model, out);
    expect(fs.readFileSync(out).equals(original)).toBe(true);
    expect(serializeModel(model.proto).equals(original)).toBe(true);
  });

  it("keeps tensor payloads as views into the file buffer, also at unaligned offsets", () => {
    const model = loadModel(CNN);
    const inits = model.proto.graph!.initializer!;
    const buffers = new Set(inits.map((t) => t.raw_data!.buffer));
    expect(buffers.size).toBe(1); // all views of the one buffer the file was read into
    const unaligned = inits.find((t) => t.raw_data!.byteOffset % 4 !== 0 && t.data_type === DataType.FLOAT);
    expect(unaligned).toBeDefined();
    const arr = tensorToArray(unaligned!) as Float32Array;
    const dv = new DataView(unaligned!.raw_data!.buffer, unaligned!.raw_data!.byteOffset);
    expect(arr[0]).toBe(dv.getFloat32(0, true));
  });

  it("keeps fields the schema does not know, in messages at every depth", () => {
    const original = fs.readFileSync(CNN);
    const model = decodeMessage<ModelProto>("ModelProto", original);
    const node = model.graph!.node![0]!;
    const withUnknown = (msg: object, typeName: string, field: number): Buffer => {
      return Buffer.concat([Buffer.from(encodeMessage(typeName, msg)), unknownField(field, [1, 2, 3])]);
    };
    const nodeBytes = withUnknown(node, "NodeProto", 99);
    const nodeAgain = decodeMessage<object>("NodeProto", nodeBytes);
    expect(Buffer.from(encodeMessage("NodeProto", nodeAgain)).equals(nodeBytes)).toBe(true);
    const modelBytes = Buffer.concat([original, unknownField(1000, [7, 7])]);
    const parsed = parseModel(modelBytes, path.dirname(CNN));
    expect(serializeModel(parsed.proto).equals(modelBytes)).toBe(true);
  });

  it("round-trips IR 10 fields: node metadata_props and overload, functions with attribute_proto, sparse initializers, training_info, float8 and 4-bit tensors", async () => {
    const f8 = { name: "f8", dims: [4], data_type: DataType.FLOAT8E4M3FN, raw_data: Uint8Array.from([0x38, 0x40, 0xb8, 0x00]) };
    const i4 = { name: "i4", dims: [3], data_type: DataType.INT4, int32_data: [0x21, 0x03] };
    const model: ModelProto = {
      ir_version: 10,
      opset_import: [{ domain: "", version: 21 }, { domain: "local", version: 1 }],
      producer_name: "ee-tool-test",
      graph: {
        name: "g",
        node: [
          { input: ["x"], output: ["y"], op_type: "Relu", name: "relu", metadata_props: [{ key: "origin", value: "test" }] },
          { input: ["y"], output: ["z"], op_type: "Twice", domain: "local", overload: "v1", name: "twice" },
        ],
        initializer: [f8, i4],
        sparse_initializer: [{ values: { name: "sp", dims: [2], data_type: DataType.FLOAT, float_data: [1, 2] }, indices: { name: "sp_idx", dims: [2], data_type: DataType.INT64, int64_data: [0, 3] }, dims: [4] }],
        input: [{ name: "x", type: { tensor_type: { elem_type: DataType.FLOAT, shape: { dim: [{ dim_param: "n" }, { dim_value: 4 }] } } } }],
        output: [{ name: "z", type: { tensor_type: { elem_type: DataType.FLOAT } } }],
        metadata_props: [{ key: "graph-level", value: "yes" }],
      },
      functions: [{
        name: "Twice", domain: "local", overload: "v1", input: ["a"], output: ["b"],
        attribute_proto: [{ name: "alpha", type: 1, f: 2 }],
        node: [{ input: ["a", "a"], output: ["b"], op_type: "Add" }],
        opset_import: [{ domain: "", version: 21 }],
      }],
      training_info: [{ update_binding: [{ key: "w", value: "w_new" }] }],
      metadata_props: [{ key: "k", value: "v" }],
    };
    const bytes = serializeModel(model);
    const again = parseModel(bytes, ".").proto;
    expect(serializeModel(again).equals(bytes)).toBe(true);
    expect(again.graph!.node![0]!.metadata_props![0]!.value).toBe("test");
    expect(again.graph!.node![1]!.overload).toBe("v1");
    expect(again.functions![0]!.attribute_proto![0]!.f).toBe(2);
    expect(Array.from(tensorToArray(again.graph!.initializer![1]!) as ArrayLike<number>)).toEqual([0x21, 0x03]);
    // onnxruntime loads and runs the IR 10 model, local function included (float8/int4 initializers unused).
    const ortModel = { ...model, graph: { ...model.graph!, initializer: [], sparse_initializer: [] }, training_info: [] };
    const s = await createSession(serializeModel(ortModel));
    const out = await runSession(s, { x: new ort.Tensor("float32", Float32Array.from([-1, 2, -3, 4]), [1, 4]) });
    expect(Array.from(out.z!.data as Float32Array)).toEqual([0, 4, 0, 8]);
  });
});

describe("tensor data helpers", () => {
  it("reads every storage form into typed arrays", () => {
    const half: TensorProto = { name: "h", dims: [3], data_type: DataType.FLOAT16, int32_data: [0x3c00, 0xc000, 0x7bff] };
    expect(Array.from(tensorToArray(half) as ArrayLike<number>)).toEqual([1, -2, 65504]);
    const bf: TensorProto = { name: "b", dims: [2], data_type: DataType.BFLOAT16, int32_data: [0x3f80, 0x4049] };
    expect(Array.from(tensorToArray(bf) as ArrayLike<number>)).toEqual([1, 3.140625]);
    const i64: TensorProto = { name: "i", dims: [2], data_type: DataType.INT64, int64_data: [-1, 5] };
    expect(Array.from(tensorToArray(i64) as BigInt64Array)).toEqual([-1n, 5n]);
    const f: TensorProto = { name: "f", dims: [2, 1], data_type: DataType.FLOAT, float_data: [0.5, 1.5] };
    expect(Array.from(tensorToArray(f) as ArrayLike<number>)).toEqual([0.5, 1.5]);
    const d: TensorProto = { name: "d", dims: [1], data_type: DataType.DOUBLE, double_data: [Math.PI] };
    expect(Array.from(tensorToArray(d) as ArrayLike<number>)).toEqual([Math.PI]);
    const u32: TensorProto = { name: "u", dims: [1], data_type: DataType.UINT32, uint64_data: [4294967295] };
    expect(Array.from(tensorToArray(u32) as ArrayLike<number>)).toEqual([4294967295]);
  });

  it("converts float16 and bfloat16 with round-to-nearest-even", () => {
    const values = Float32Array.from([1, -2, 0.1, 65504, 1e-8, 70000, 1 + 2 ** -11, 1 + 3 * 2 ** -11]);
    const h = tensorToArray(makeTensor("h", DataType.FLOAT16, [values.length], values));
    expect(Array.from(h as Float32Array)).toEqual([1, -2, 0.0999755859375, 65504, 0, Infinity, 1, 1 + 2 ** -9]);
    const b = tensorToArray(makeTensor("b", DataType.BFLOAT16, [2], Float32Array.from([1.00390625, 3.14159])));
    expect(Array.from(b as Float32Array)).toEqual([1, 3.140625]);
  });

  it("refuses data that does not match dims and type", () => {
    expectCode(() => tensorToArray({ name: "bad", dims: [3], data_type: DataType.FLOAT, float_data: [1] }), "TENSOR_INVALID", /'bad'/);
    expectCode(() => tensorToArray({ name: "bad2", dims: [3], data_type: DataType.FLOAT, raw_data: new Uint8Array(8) }), "TENSOR_INVALID", /8 bytes/);
  });
});

describe("external data", () => {
  it("moves tensors out and back in; inlining restores the original bytes; outputs are unchanged", async () => {
    const dir = tmpDir();
    const original = fs.readFileSync(CNN);
    const ext = path.join(dir, "ext.onnx");
    const r = saveModel(loadModel(CNN), ext, { externalData: "weights.bin" });
    expect(r.externalData!.tensors).toBeGreaterThan(10);
    expect(fs.statSync(ext).size).toBeLessThan(original.length / 5);
    const loaded = loadModel(ext);
    const externals = allTensors(loaded.proto).filter(isExternal);
    expect(externals.length).toBe(r.externalData!.tensors);
    // The same outputs from onnxruntime, given the file path (onnxruntime resolves the data itself)...
    const fromFile = await ort.InferenceSession.create(ext);
    const x = new Float32Array(2 * 28 * 28).map((_, i) => (i * 37) % 256);
    const viaPath = (await fromFile.run({ image: new ort.Tensor("float32", x, [2, 1, 28, 28]) })).logits!.data as Float32Array;
    await fromFile.release();
    expect(Array.from(viaPath)).toEqual(Array.from(await runFixtureCnn(original)));
    // ...and from our inlined bytes.
    expect(Array.from(await runFixtureCnn(runtimeBytes(loaded.proto, loaded.readExternal)))).toEqual(Array.from(viaPath));
    const back = path.join(dir, "back.onnx");
    saveModel(loaded, back, { inline: true });
    expect(fs.readFileSync(back).equals(original)).toBe(true);
    // Saving did not change the in-memory model.
    expect(allTensors(loaded.proto).filter(isExternal).length).toBe(externals.length);
  });

  it("rewrites external data next to an output in another directory", () => {
    const a = tmpDir();
    const b = tmpDir();
    saveModel(loadModel(CNN), path.join(a, "m.onnx"), { externalData: "m.data" });
    const r = saveModel(loadModel(path.join(a, "m.onnx")), path.join(b, "m.onnx"));
    expect(r.note).toMatch(/another directory/);
    expect(fs.existsSync(path.join(b, "m.onnx.data"))).toBe(true);
    fs.rmSync(a, { recursive: true });
    expect(() => loadModel(path.join(b, "m.onnx"))).not.toThrow();
  });

  it("writes external data automatically when the model would pass the protobuf limit", () => {
    const dir = tmpDir();
    const r = saveModel(loadModel(CNN), path.join(dir, "big.onnx"), { protobufLimit: 100_000 });
    expect(r.note).toMatch(/over protobuf's 2 GB limit/);
    expect(r.externalData).toBeDefined();
    expect(r.bytes).toBeLessThan(100_000);
    expect(() => loadModel(path.join(dir, "big.onnx"))).not.toThrow();
  });

  function externalModel(): { dir: string; file: string; model: ModelProto } {
    const dir = tmpDir();
    const file = path.join(dir, "m.onnx");
    saveModel(loadModel(CNN), file, { externalData: "w.bin" });
    return { dir, file, model: loadModel(file).proto };
  }

  function withLocation(location: string): { dir: string; file: string } {
    const { dir, file, model } = externalModel();
    const t = allTensors(model).find(isExternal)!;
    t.external_data!.find((e) => e.key === "location")!.value = location;
    fs.writeFileSync(file, serializeModel(model));
    return { dir, file };
  }

  it("refuses absolute locations, '..' and symlinks that leave the model directory", () => {
    expectCode(() => loadModel(withLocation("/etc/passwd").file), "EXTERNAL_DATA_PATH", /absolute/);
    expectCode(() => loadModel(withLocation("../w.bin").file), "EXTERNAL_DATA_PATH", /'\.\.'/);
    expectCode(() => loadModel(withLocation("sub/../../w.bin").file), "EXTERNAL_DATA_PATH", /'\.\.'/);
    const outside = tmpDir();
    fs.writeFileSync(path.join(outside, "secret.bin"), Buffer.alloc(1 << 20));
    const { dir, file } = withLocation("link.bin");
    fs.symlinkSync(path.join(outside, "secret.bin"), path.join(dir, "link.bin"));
    expectCode(() => loadModel(file), "EXTERNAL_DATA_PATH", /outside the model directory/);
  });

  it("names the tensor when its data file is missing or short", () => {
    const { dir, file, model } = externalModel();
    const last = allTensors(model).filter(isExternal).at(-1)!;
    fs.truncateSync(path.join(dir, "w.bin"), 1000);
    expectCode(() => loadModel(file), "EXTERNAL_DATA_SHORT", new RegExp(`'${last.name?.replace(/\./g, "\\.") ?? ""}'|tensor '`));
    fs.rmSync(path.join(dir, "w.bin"));
    expectCode(() => loadModel(file), "EXTERNAL_DATA_MISSING", /tensor '.*': external data file 'w\.bin' not found/);
  });
});

describe("bad model files", () => {
  it("gives typed errors for missing, directory, empty, non-ONNX and truncated input", () => {
    const dir = tmpDir();
    expectCode(() => loadModel(path.join(dir, "nope.onnx")), "FILE_NOT_FOUND");
    expectCode(() => loadModel(dir), "NOT_A_FILE");
    fs.writeFileSync(path.join(dir, "empty.onnx"), "");
    expectCode(() => loadModel(path.join(dir, "empty.onnx")), "NOT_ONNX", /empty/);
    fs.writeFileSync(path.join(dir, "text.onnx"), "hello, this is not a model\n");
    expectCode(() => loadModel(path.join(dir, "text.onnx")), "NOT_ONNX");
    fs.writeFileSync(path.join(dir, "cut.onnx"), fs.readFileSync(CNN).subarray(0, 300_000));
    expectCode(() => loadModel(path.join(dir, "cut.onnx")), "NOT_ONNX");
  });
});
