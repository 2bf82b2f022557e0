/**
 * Calibration (and evaluation) data: one array per model input, samples along the first axis.
 * Accepted forms: `name=file.npy,name2=file2.npy`, a single .npy for a single-input model, an .npz
 * keyed by input name, or a directory of ONNX test-data files (input_0.pb, ...).
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { createHash } from "node:crypto";
import type { ModelProto, TensorProto } from "../onnx/types.js";
import { EeToolError } from "../errors.js";
import { Graph } from "../ir/graph.js";
import { typeInfo, type Dim } from "../ir/shapes.js";
import { dataTypeInfo, dataTypeName } from "../onnx/dtype.js";
import { decodeMessage } from "../onnx/codec.js";
import { tensorDims, tensorRawBytes } from "../onnx/tensor.js";
import { openNpy, rowBytes, type ArraySource, type ElemType } from "./npy.js";
import { openNpz } from "./npz.js";
import { ort } from "../ort/ort.js";

export interface InputSpec {
  name: string;
  type: ElemType;
  shape: Dim[];
}

/** The model's fed inputs (not initializers), with types and declared shapes. */
export function inputSpecs(model: ModelProto): InputSpec[] {
  const g = new Graph(model.graph!);
  return g.inputs.map((vi) => {
    const info = typeInfo(vi.type);
    const t = dataTypeInfo(info.elemType ?? 0)?.ort;
    if (!t || t === "string" || t === "int4" || t === "uint4") {
      throw new EeToolError("UNSUPPORTED", `model input '${vi.name ?? ""}' has type ${dataTypeName(info.elemType)}, which ee-tool cannot feed`);
    }
    return { name: vi.name ?? "", type: t as ElemType, shape: info.shape ?? [] };
  });
}

function exists(p: string): void {
  if (!fs.existsSync(p)) throw new EeToolError("FILE_NOT_FOUND", `calibration data not found: ${p}`);
}

const ORT_TO_ELEM: Record<string, ElemType> = {
  float32: "float32", float64: "float64", float16: "float16", int8: "int8", uint8: "uint8", int16: "int16",
  uint16: "uint16", int32: "int32", uint32: "uint32", int64: "int64", uint64: "uint64", bool: "bool",
};

/** An in-memory array from a TensorProto (ONNX test-data .pb file). */
function protoArray(t: TensorProto, source: string): ArraySource {
  const type = ORT_TO_ELEM[dataTypeInfo(t.data_type ?? 0)?.ort ?? ""];
  if (!type) throw new EeToolError("CALIB_INVALID", `${source}: unsupported tensor type ${dataTypeName(t.data_type)}`);
  const shape = tensorDims(t);
  const bytes = Buffer.from(tensorRawBytes(t));
  const item = (dataTypeInfo(t.data_type ?? 0)!.bits) / 8;
  const rb = shape.slice(1).reduce((a, b) => a * b, 1) * item;
  return { source, type, shape, itemBytes: item, rows: (s, e) => bytes.subarray(s * rb, e * rb) };
}

function readPbDir(dir: string): ArraySource[] {
  const files = fs.readdirSync(dir).filter((f) => /^input_\d+\.pb$/.test(f)).sort((a, b) => parseInt(a.slice(6)) - parseInt(b.slice(6)));
  if (files.length === 0) throw new EeToolError("CALIB_INVALID", `${dir} holds no input_N.pb files`);
  return files.map((f) => {
    const src = path.join(dir, f);
    const t = decodeMessage<TensorProto>("TensorProto", fs.readFileSync(src));
    const a = protoArray(t, src);
    return Object.assign(a, { protoName: t.name ?? "" });
  });
}

/**
 * A --calib argument with each file it names passed through `move` (`name=a.npy,name2=b.npy`
 * keeps its names): how a profile stores its data relative to itself and plan finds it again.
 */
export function relocateDataArg(arg: string, move: (file: string) => string): string {
  if (!arg.includes("=")) return move(arg);
  return arg.split(",").map((part) => {
    const eq = part.indexOf("=");
    return eq <= 0 ? part : `${part.slice(0, eq)}=${move(part.slice(eq + 1))}`;
  }).join(",");
}

/** The files a --calib argument names, or those of them that are missing. */
export function missingDataFiles(arg: string): string[] {
  const files: string[] = [];
  relocateDataArg(arg, (f) => (files.push(f), f));
  return files.filter((f) => !fs.existsSync(f));
}

/** Parse a --calib argument into arrays keyed by model input name. */
export function openArrays(arg: string, specs: InputSpec[]): Map<string, ArraySource> {
  const names = specs.map((s) => s.name);
  const out = new Map<string, ArraySource>();
  if (arg.includes("=")) {
    for (const part of arg.split(",")) {
      const eq = part.indexOf("=");
      if (eq <= 0) throw new EeToolError("USAGE", `--calib entry '${part}' is not name=file`);
      const name = part.slice(0, eq);
      const file = part.slice(eq + 1);
      if (!names.includes(name)) throw new EeToolError("CALIB_MISMATCH", `calibration names input '${name}', but the model's inputs are ${names.join(", ")}`);
      exists(file);
      out.set(name, openNpy(file));
    }
  } else {
    exists(arg);
    const st = fs.statSync(arg);
    if (st.isDirectory()) {
      const arrays = readPbDir(arg);
      arrays.forEach((a, i) => {
        const pn = (a as ArraySource & { protoName: string }).protoName;
        const name = pn && names.includes(pn) ? pn : names[i];
        if (!name) throw new EeToolError("CALIB_MISMATCH", `${a.source}: the model has only ${names.length} inputs`);
        out.set(name, a);
      });
    } else if (arg.endsWith(".npz")) {
      const arrays = openNpz(arg);
      for (const [k, a] of arrays) {
        if (names.includes(k)) out.set(k, a);
        else if (arrays.size === 1 && names.length === 1) out.set(names[0]!, a);
        else throw new EeToolError("CALIB_MISMATCH", `${arg} holds array '${k}', which is not a model input (${names.join(", ")})`);
      }
    } else {
      if (names.length !== 1) {
        throw new EeToolError("CALIB_MISMATCH", `the model has ${names.length} inputs (${names.join(", ")}); give --calib ${names.map((n) => `${n}=file.npy`).join(",")} or an .npz`);
      }
      out.set(names[0]!, openNpy(arg));
    }
  }
  for (const n of names) if (!out.has(n)) throw new EeToolError("CALIB_MISMATCH", `no calibration data for model input '${n}'`);
  return out;
}

function shapeText(s: readonly Dim[]): string {
  return `[${s.map((d) => (d === null ? "?" : String(d))).join(",")}]`;
}

/** Copy bytes into an aligned typed array of the element type. */
export function typedArray(type: ElemType, bytes: Uint8Array): Float32Array | Float64Array | Int8Array | Uint8Array | Int16Array | Uint16Array | Int32Array | Uint32Array | BigInt64Array | BigUint64Array {
  const c = new Uint8Array(bytes.length);
  c.set(bytes);
  const b = c.buffer;
  switch (type) {
    case "float32": return new Float32Array(b);
    case "float64": return new Float64Array(b);
    case "float16": return new Uint16Array(b);
    case "int8": return new Int8Array(b);
    case "uint8": case "bool": return new Uint8Array(b);
    case "int16": return new Int16Array(b);
    case "uint16": return new Uint16Array(b);
    case "int32": return new Int32Array(b);
    case "uint32": return new Uint32Array(b);
    case "int64": return new BigInt64Array(b);
    case "uint64": return new BigUint64Array(b);
  }
}

/** An onnxruntime tensor of an element type from a matching typed array. */
export function ortTensor(type: ElemType, data: ReturnType<typeof typedArray>, dims: readonly number[]): ort.Tensor {
  return new ort.Tensor(type as ort.Tensor.Type, data, dims);
}

/**
 * The batch size the model fixes: the first dimension of its inputs when the export declares a
 * number there (torch.onnx.export without dynamic axes), or null when it is free.
 */
export function fixedBatch(specs: readonly InputSpec[]): { batch: number; input: string } | null {
  for (const s of specs) if (s.shape.length > 0 && typeof s.shape[0] === "number") return { batch: s.shape[0], input: s.name };
  return null;
}

/** Refuse up front a batch size the model's inputs cannot take (`what` names the option that asked for it). */
export function checkBatch(specs: readonly InputSpec[], batch: number, what: string): void {
  const fixed = fixedBatch(specs);
  if (fixed && fixed.batch !== batch) {
    throw new EeToolError("FIXED_BATCH", `input '${fixed.input}' has a fixed batch dimension of ${fixed.batch}, so ${what} ${batch} cannot run`, {
      hint: `Re-export with a dynamic batch axis (torch.onnx.export(..., dynamic_axes={'${fixed.input}': {0: 'batch'}}), or dynamo=True with dynamic_shapes), or use batch ${fixed.batch} (profile --batch ${fixed.batch}, plan --batch ${fixed.batch}).`,
    });
  }
}

export class CalibrationSet {
  readonly size: number;
  /** The batch size the model's inputs fix, or null (see fixedBatch). */
  readonly fixedBatch: number | null;

  constructor(readonly specs: InputSpec[], readonly arrays: Map<string, ArraySource>) {
    let n: number | undefined;
    for (const spec of specs) {
      const a = arrays.get(spec.name)!;
      if (a.type !== spec.type) {
        throw new EeToolError("CALIB_MISMATCH", `input '${spec.name}': the model expects ${spec.type}, ${a.source} holds ${a.type}`);
      }
      const ok = a.shape.length === spec.shape.length && spec.shape.every((d, i) => i === 0 || typeof d !== "number" || d === a.shape[i]);
      if (!ok) {
        throw new EeToolError("CALIB_MISMATCH", `input '${spec.name}': expected shape ${shapeText(spec.shape)}, ${a.source} has ${shapeText(a.shape)}`);
      }
      if (n !== undefined && a.shape[0] !== n) {
        throw new EeToolError("CALIB_MISMATCH", `inputs hold different sample counts: ${n} and ${a.shape[0]} ('${spec.name}')`);
      }
      n = a.shape[0]!;
    }
    if (!n) throw new EeToolError("CALIB_MISMATCH", "calibration data has zero samples");
    this.size = n;
    this.fixedBatch = fixedBatch(specs)?.batch ?? null;
  }

  /**
   * Rows per call of an internal pass (feature extraction, scoring, shape discovery): the batch the
   * model fixes, else `preferred`. Such passes feed `passFeeds`, which pads a short last batch.
   */
  passBatch(preferred: number): number {
    return this.fixedBatch ?? preferred;
  }

  /** Feeds for the given samples, padded to the model's fixed batch (if any) by repeating the last one; outputs beyond indices.length are padding. */
  passFeeds(indices: ArrayLike<number>): Record<string, ort.Tensor> {
    const want = this.fixedBatch;
    if (want === null || indices.length === want) return this.feedsFor(indices);
    if (indices.length > want) throw new Error(`internal: a pass of ${indices.length} rows for a fixed batch of ${want}`);
    const padded = Array.from({ length: want }, (_, i) => indices[Math.min(i, indices.length - 1)]!);
    return this.feedsFor(padded);
  }

  /** Feeds of a small batch for shape discovery: the first two samples, or the fixed batch. */
  probeFeeds(): Record<string, ort.Tensor> {
    const n = Math.min(this.size, this.passBatch(2));
    return this.passFeeds(Array.from({ length: n }, (_, i) => i));
  }

  /** Raw bytes of samples [start, end) of one input. */
  rows(name: string, start: number, end: number): Buffer {
    return this.arrays.get(name)!.rows(start, end);
  }

  /** onnxruntime feeds for samples [start, end); NaN or Inf in float inputs is an error naming the sample. */
  feeds(start: number, end: number): Record<string, ort.Tensor> {
    return this.buildFeeds((name) => this.rows(name, start, end), end - start, (i) => start + i);
  }

  /** onnxruntime feeds for the given samples, in the given order. */
  feedsFor(indices: ArrayLike<number>): Record<string, ort.Tensor> {
    const n = indices.length;
    return this.buildFeeds((name) => {
      const rb = rowBytes(this.arrays.get(name)!);
      const out = Buffer.allocUnsafe(n * rb);
      // Read runs of consecutive indices together.
      for (let i = 0; i < n; ) {
        let j = i + 1;
        while (j < n && indices[j] === indices[j - 1]! + 1) j++;
        this.rows(name, indices[i]!, indices[j - 1]! + 1).copy(out, i * rb);
        i = j;
      }
      return out;
    }, n, (i) => indices[i]!);
  }

  private buildFeeds(read: (name: string) => Buffer, n: number, sampleOf: (i: number) => number): Record<string, ort.Tensor> {
    const feeds: Record<string, ort.Tensor> = {};
    for (const spec of this.specs) {
      const a = this.arrays.get(spec.name)!;
      const data = typedArray(a.type, read(spec.name));
      if (data instanceof Float32Array || data instanceof Float64Array) {
        const per = data.length / n;
        for (let i = 0; i < data.length; i++) {
          if (!Number.isFinite(data[i]!)) {
            throw new EeToolError("CALIB_MISMATCH", `input '${spec.name}', sample ${sampleOf(Math.floor(i / per))}: value ${data[i]} is not finite (${a.source})`);
          }
        }
      }
      feeds[spec.name] = ortTensor(a.type, data, [n, ...a.shape.slice(1)]);
    }
    return feeds;
  }

  /** A content hash per sample (16 hex digits of SHA-256 over the sample's bytes, inputs in order). */
  sampleHashes(start = 0, end = this.size): string[] {
    const out: string[] = [];
    const CHUNK = 1024;
    for (let s = start; s < end; s += CHUNK) {
      const e = Math.min(end, s + CHUNK);
      const blocks = this.specs.map((spec) => ({ bytes: this.rows(spec.name, s, e), rb: rowBytes(this.arrays.get(spec.name)!) }));
      for (let i = 0; i < e - s; i++) {
        const h = createHash("sha256");
        for (const b of blocks) h.update(b.bytes.subarray(i * b.rb, (i + 1) * b.rb));
        out.push(h.digest("hex").slice(0, 16));
      }
    }
    return out;
  }
}

export function openCalibration(arg: string, model: ModelProto): CalibrationSet {
  const specs = inputSpecs(model);
  return new CalibrationSet(specs, openArrays(arg, specs));
}

/** Integer class labels from an .npy file, one per sample. */
export function openLabels(file: string, expected: number): Int32Array {
  exists(file);
  const a = openNpy(file);
  if (a.shape.length !== 1 && !(a.shape.length === 2 && a.shape[1] === 1)) {
    throw new EeToolError("CALIB_MISMATCH", `labels ${file} must be a 1-D array of class indices, got shape ${shapeText(a.shape)}`);
  }
  if (a.shape[0] !== expected) throw new EeToolError("CALIB_MISMATCH", `labels ${file} hold ${a.shape[0]} entries for ${expected} samples`);
  const raw = typedArray(a.type, a.rows(0, expected));
  if (raw instanceof Float32Array || raw instanceof Float64Array || raw instanceof Uint16Array && a.type === "float16") {
    throw new EeToolError("CALIB_MISMATCH", `labels ${file} must be integers, got ${a.type}`);
  }
  return Int32Array.from(raw as ArrayLike<number | bigint>, (v) => Number(v));
}
