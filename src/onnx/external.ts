/**
 * External data: tensors whose bytes live in a separate file named by `location`, relative to
 * the model's directory, at `offset` for `length` bytes. Locations that could reach outside the
 * model's directory are refused. Large files are read in pieces (Node cannot read 2 GiB at once).
 */
import * as fs from "node:fs";
import * as path from "node:path";
import type { StringStringEntryProto, TensorProto } from "./types.js";
import { EeToolError, messageOf } from "../errors.js";
import { rawByteLength } from "./dtype.js";
import { numElements, tensorDims } from "./tensor.js";

export interface ExternalRef {
  location: string;
  offset: number;
  length?: number;
  checksum?: string;
}

function entry(entries: StringStringEntryProto[] | undefined, key: string): string | undefined {
  return entries?.find((e) => e.key === key)?.value;
}

function parseInteger(tensor: string, key: string, v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  if (!/^\d+$/.test(v) || !Number.isSafeInteger(Number(v))) {
    throw new EeToolError("EXTERNAL_DATA_INVALID", `tensor '${tensor}': external data ${key} '${v}' is not a non-negative integer`);
  }
  return Number(v);
}

export function externalRef(t: TensorProto): ExternalRef {
  const name = t.name ?? "";
  const location = entry(t.external_data, "location");
  if (!location) throw new EeToolError("EXTERNAL_DATA_INVALID", `tensor '${name}' is marked external but has no location`);
  const checksum = entry(t.external_data, "checksum");
  const length = parseInteger(name, "length", entry(t.external_data, "length"));
  return {
    location,
    offset: parseInteger(name, "offset", entry(t.external_data, "offset")) ?? 0,
    ...(length === undefined ? {} : { length }),
    ...(checksum === undefined ? {} : { checksum }),
  };
}

/** Refuse locations that are absolute or contain '..' (checked before touching the filesystem). */
export function checkLocationSyntax(location: string, tensor: string): void {
  const parts = location.split(/[\\/]+/);
  if (path.isAbsolute(location) || path.win32.isAbsolute(location) || /^[a-zA-Z]:/.test(location)) {
    throw new EeToolError("EXTERNAL_DATA_PATH", `tensor '${tensor}': external data location '${location}' is an absolute path`);
  }
  if (parts.includes("..")) {
    throw new EeToolError("EXTERNAL_DATA_PATH", `tensor '${tensor}': external data location '${location}' contains '..'`);
  }
  if (location.includes("\0")) {
    throw new EeToolError("EXTERNAL_DATA_PATH", `tensor '${tensor}': external data location contains a NUL byte`);
  }
}

/** Resolve a location inside `modelDir`, symlinks included; refuse anything that escapes it. */
export function resolveLocation(modelDir: string, location: string, tensor: string): string {
  checkLocationSyntax(location, tensor);
  const joined = path.join(modelDir, location);
  let real: string;
  let realDir: string;
  try {
    realDir = fs.realpathSync(modelDir);
  } catch (e) {
    throw new EeToolError("EXTERNAL_DATA_MISSING", `tensor '${tensor}': model directory ${modelDir} is not readable: ${messageOf(e)}`);
  }
  try {
    real = fs.realpathSync(joined);
  } catch {
    throw new EeToolError("EXTERNAL_DATA_MISSING", `tensor '${tensor}': external data file '${location}' not found in ${modelDir}`);
  }
  const rel = path.relative(realDir, real);
  if (rel === "" || rel.startsWith("..") || path.isAbsolute(rel)) {
    throw new EeToolError("EXTERNAL_DATA_PATH", `tensor '${tensor}': external data location '${location}' resolves outside the model directory (to ${real})`);
  }
  return real;
}

/** Expected payload length of an external tensor: `length` when given, else from dims and type. */
function expectedLength(t: TensorProto, ref: ExternalRef): number | undefined {
  return ref.length ?? rawByteLength(t.data_type ?? 0, numElements(tensorDims(t)));
}

/** Check that the tensor's data file exists, lies inside the model directory and is long enough. */
export function validateExternal(t: TensorProto, modelDir: string): { file: string; ref: ExternalRef; length: number } {
  const name = t.name ?? "";
  const ref = externalRef(t);
  const file = resolveLocation(modelDir, ref.location, name);
  let size: number;
  try {
    const st = fs.statSync(file);
    if (!st.isFile()) throw new EeToolError("EXTERNAL_DATA_MISSING", `tensor '${name}': external data '${ref.location}' is not a file`);
    size = st.size;
  } catch (e) {
    if (e instanceof EeToolError) throw e;
    throw new EeToolError("EXTERNAL_DATA_MISSING", `tensor '${name}': cannot stat external data '${ref.location}': ${messageOf(e)}`);
  }
  const length = expectedLength(t, ref) ?? size - ref.offset;
  if (ref.offset + length > size) {
    throw new EeToolError(
      "EXTERNAL_DATA_SHORT",
      `tensor '${name}': external data '${ref.location}' has ${size} bytes, but the tensor needs bytes ${ref.offset}..${ref.offset + length}`,
    );
  }
  return { file, ref, length };
}

/** Read `length` bytes at `offset` of `file`, in pieces of at most 1 GiB. */
export function readRange(file: string, offset: number, length: number): Buffer {
  const out = Buffer.allocUnsafe(length);
  const fd = fs.openSync(file, "r");
  try {
    let done = 0;
    while (done < length) {
      const n = fs.readSync(fd, out, done, Math.min(length - done, 1 << 30), offset + done);
      if (n === 0) throw new EeToolError("EXTERNAL_DATA_SHORT", `${file} ended after ${offset + done} bytes`);
      done += n;
    }
  } finally {
    fs.closeSync(fd);
  }
  return out;
}

/** A reader for external tensors of a model stored in `modelDir`. */
export function externalReader(modelDir: string): (t: TensorProto) => Uint8Array {
  return (t) => {
    const { file, ref, length } = validateExternal(t, modelDir);
    return readRange(file, ref.offset, length);
  };
}
