/**
 * Loading and saving ONNX models: the file, its external data, and the size rules.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import type { ModelProto, TensorProto } from "./types.js";
import { decodeMessage, encodeRope, type Rope } from "./codec.js";
import { allTensors } from "./walk.js";
import { externalReader, checkLocationSyntax, validateExternal } from "./external.js";
import { isExternal, tensorByteSize, tensorRawBytes, type ExternalReader } from "./tensor.js";
import { writeFileAtomic } from "../util/atomic.js";
import { EeToolError, messageOf } from "../errors.js";
import { DataType } from "./dtype.js";

/** Protobuf's hard limit for one message. */
export const PROTOBUF_LIMIT = 2 ** 31 - 1;

export interface OnnxModel {
  proto: ModelProto;
  /** Directory that external data locations are relative to. */
  dir: string;
  /** Source file, when loaded from one. */
  path?: string;
  /** Size of the serialized ModelProto. */
  byteLength: number;
  /** Reads the bytes of an external tensor of this model. */
  readExternal: ExternalReader;
}

/** Read a file that must exist and be a regular file. */
export function readInputFile(file: string, what = "file"): Buffer {
  let st: fs.Stats;
  try {
    st = fs.statSync(file);
  } catch {
    throw new EeToolError("FILE_NOT_FOUND", `${what} not found: ${file}`);
  }
  if (!st.isFile()) throw new EeToolError("NOT_A_FILE", `${what} is not a file: ${file}`);
  if (st.size > PROTOBUF_LIMIT && what === "model") {
    throw new EeToolError("NOT_ONNX", `${file} is ${st.size} bytes, over protobuf's 2 GB limit: it cannot be an ONNX ModelProto`, {
      hint: "Large models keep their weights in external data files; load the .onnx file that references them.",
    });
  }
  try {
    return fs.readFileSync(file);
  } catch (e) {
    throw new EeToolError("READ_FAILED", `cannot read ${file}: ${messageOf(e)}`);
  }
}

export interface LoadOptions {
  /** Check every external tensor's file (exists, inside the model dir, long enough). Default true. */
  checkExternal?: boolean;
}

/** Decode a ModelProto and check that it looks like a model. */
export function parseModel(bytes: Uint8Array, dir: string, options: LoadOptions = {}, source?: string): OnnxModel {
  const where = source ?? "input";
  if (bytes.length === 0) throw new EeToolError("NOT_ONNX", `${where} is empty`);
  let proto: ModelProto;
  try {
    proto = decodeMessage<ModelProto>("ModelProto", bytes);
  } catch (e) {
    throw new EeToolError("NOT_ONNX", `${where} is not an ONNX model (${messageOf(e).replace(/^not a valid ModelProto: /, "")})`);
  }
  if (!Object.prototype.hasOwnProperty.call(proto, "graph") || !proto.graph) {
    throw new EeToolError("NOT_ONNX", `${where} is not an ONNX model: it has no graph`);
  }
  if (!Object.prototype.hasOwnProperty.call(proto, "ir_version")) {
    throw new EeToolError("NOT_ONNX", `${where} is not an ONNX model: it has no ir_version`);
  }
  if (options.checkExternal !== false) {
    for (const t of allTensors(proto)) if (isExternal(t)) validateExternal(t, dir);
  }
  return {
    proto,
    dir,
    byteLength: bytes.length,
    readExternal: externalReader(dir),
    ...(source === undefined ? {} : { path: source }),
  };
}

/** Load an ONNX model file. Tensor payloads stay views into the file's buffer. */
export function loadModel(file: string, options: LoadOptions = {}): OnnxModel {
  const bytes = readInputFile(file, "model");
  return parseModel(bytes, path.dirname(path.resolve(file)), options, file);
}

export interface SaveOptions {
  /** Move every tensor of at least `sizeThreshold` bytes into this file (relative to the output's directory). */
  externalData?: string;
  /** Store every tensor inline (read external data back into raw_data). */
  inline?: boolean;
  /** Smallest tensor moved to external data, in bytes (default 1024, as onnx). */
  sizeThreshold?: number;
  /** Largest ModelProto written inline (protobuf's 2 GB limit; lower only to test the fallback). */
  protobufLimit?: number;
}

export interface SaveResult {
  path: string;
  bytes: number;
  externalData?: { path: string; bytes: number; tensors: number };
  /** Why external data was written when the caller did not ask for it. */
  note?: string;
}

type TensorState = Pick<TensorProto, "raw_data" | "external_data" | "data_location" | "float_data" | "int32_data" | "int64_data" | "double_data" | "uint64_data">;
const STATE_KEYS = ["raw_data", "external_data", "data_location", "float_data", "int32_data", "int64_data", "double_data", "uint64_data"] as const;

function snapshot(t: TensorProto): TensorState {
  const s: Record<string, unknown> = {};
  for (const k of STATE_KEYS) if (Object.prototype.hasOwnProperty.call(t, k)) s[k] = t[k];
  return s as TensorState;
}

function restore(t: TensorProto, s: TensorState): void {
  for (const k of STATE_KEYS) delete t[k];
  Object.assign(t, s);
}

function clearData(t: TensorProto): void {
  for (const k of STATE_KEYS) delete t[k];
}

/** Round `n` up to a multiple of `a`. */
const alignUp = (n: number, a: number): number => Math.ceil(n / a) * a;

function movableToExternal(t: TensorProto, threshold: number): boolean {
  return (t.data_type ?? 0) !== DataType.STRING && !!t.name && tensorByteSize(t) >= threshold;
}

/** Save `model` to `file` atomically, with its tensors inline or in one external data file. */
export function saveModel(model: OnnxModel, file: string, options: SaveOptions = {}): SaveResult {
  if (options.externalData && options.inline) {
    throw new EeToolError("USAGE", "choose either external data or inline storage, not both");
  }
  const outDir = path.dirname(path.resolve(file));
  const limit = options.protobufLimit ?? PROTOBUF_LIMIT;
  const tensors = allTensors(model.proto);
  const externals = tensors.filter(isExternal);
  const saved = new Map<TensorProto, TensorState>();
  const edit = (t: TensorProto): void => {
    if (!saved.has(t)) saved.set(t, snapshot(t));
  };
  let location = options.externalData;
  let note: string | undefined;
  const sameDir = fs.existsSync(outDir) && fs.realpathSync(outDir) === safeRealpath(model.dir);
  if (!location && !options.inline && externals.length > 0 && !sameDir) {
    // References are relative to the model's directory; a model saved elsewhere gets its own data file.
    location = `${path.basename(file)}.data`;
    note = `external data rewritten to ${location} because the output is in another directory`;
  }
  try {
    if (options.inline) {
      for (const t of externals) {
        const bytes = tensorRawBytes(t, model.readExternal);
        edit(t);
        clearData(t);
        t.raw_data = bytes;
      }
    }
    let rope: Rope = encodeRope("ModelProto", model.proto);
    if (!location && rope.length > limit) {
      location = `${path.basename(file)}.data`;
      note = `model is ${rope.length} bytes, over protobuf's 2 GB limit: tensors written to external data ${location}`;
    }
    let externalResult: SaveResult["externalData"];
    if (location) {
      checkLocationSyntax(location, "(output)");
      const threshold = options.sizeThreshold ?? 1024;
      const moved = tensors.filter((t) => isExternal(t) || movableToExternal(t, threshold));
      const dataPath = path.join(outDir, location);
      let offset = 0;
      writeFileAtomic(dataPath, (out) => {
        for (const t of moved) {
          const bytes = tensorRawBytes(t, model.readExternal);
          const start = alignUp(offset, bytes.length >= 1 << 20 ? 4096 : 64);
          if (start > offset) out.write(new Uint8Array(start - offset));
          out.write(bytes);
          offset = start + bytes.length;
          edit(t);
          clearData(t);
          t.external_data = [
            { key: "location", value: location },
            { key: "offset", value: String(start) },
            { key: "length", value: String(bytes.length) },
          ];
          t.data_location = 1;
        }
      });
      externalResult = { path: dataPath, bytes: offset, tensors: moved.length };
      rope = encodeRope("ModelProto", model.proto);
    }
    if (rope.length > limit) {
      throw new EeToolError("MODEL_TOO_LARGE", `model graph alone is ${rope.length} bytes, over protobuf's 2 GB limit`);
    }
    writeFileAtomic(file, (out) => {
      for (const p of rope.pieces) out.write(p);
    });
    return { path: file, bytes: rope.length, ...(externalResult ? { externalData: externalResult } : {}), ...(note ? { note } : {}) };
  } finally {
    for (const [t, s] of saved) restore(t, s);
  }
}

function safeRealpath(p: string): string {
  try {
    return fs.realpathSync(p);
  } catch {
    return path.resolve(p);
  }
}

/** Serialize a model to one buffer (small models; tests and in-memory sessions). */
export function serializeModel(proto: ModelProto): Buffer {
  const rope = encodeRope("ModelProto", proto);
  if (rope.length > PROTOBUF_LIMIT) throw new EeToolError("MODEL_TOO_LARGE", `model is ${rope.length} bytes, over protobuf's 2 GB limit`);
  return Buffer.concat(rope.pieces, rope.length);
}
