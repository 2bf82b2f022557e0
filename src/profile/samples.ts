/**
 * Per-sample profile data: for every scored sample its index, content hash, the final model's
 * prediction and the label (or -1); for every ramp its prediction and confidence under three
 * measures. Stored as a binary sidecar of little-endian arrays next to the profile JSON.
 */
import * as fs from "node:fs";
import { createHash } from "node:crypto";
import { EeToolError } from "../errors.js";

export type ArrayType = "int32" | "float32" | "uint8";

export interface ArraySpec {
  name: string;
  type: ArrayType;
  /** Byte offset in the sidecar. */
  offset: number;
  /** Number of elements. */
  length: number;
}

export interface SampleData {
  count: number;
  /** Index of each sample in the calibration set. */
  index: Int32Array;
  /** 8-byte content hash per sample. */
  hash: Uint8Array;
  final: Int32Array;
  /** Label per sample, -1 when no labels were given. */
  label: Int32Array;
  ramps: Array<{ pred: Int32Array; maxprob: Float32Array; margin: Float32Array; entropy: Float32Array }>;
}

const BYTES: Record<ArrayType, number> = { int32: 4, float32: 4, uint8: 1 };

export function emptySamples(count: number, ramps: number): SampleData {
  return {
    count,
    index: new Int32Array(count),
    hash: new Uint8Array(count * 8),
    final: new Int32Array(count),
    label: new Int32Array(count).fill(-1),
    ramps: Array.from({ length: ramps }, () => ({
      pred: new Int32Array(count), maxprob: new Float32Array(count), margin: new Float32Array(count), entropy: new Float32Array(count),
    })),
  };
}

function entries(d: SampleData): Array<[string, ArrayType, Int32Array | Float32Array | Uint8Array]> {
  const out: Array<[string, ArrayType, Int32Array | Float32Array | Uint8Array]> = [
    ["index", "int32", d.index], ["hash", "uint8", d.hash], ["final", "int32", d.final], ["label", "int32", d.label],
  ];
  d.ramps.forEach((r, i) => {
    out.push([`ramp${i}.pred`, "int32", r.pred], [`ramp${i}.maxprob`, "float32", r.maxprob], [`ramp${i}.margin`, "float32", r.margin], [`ramp${i}.entropy`, "float32", r.entropy]);
  });
  return out;
}

/** Serialize to a sidecar buffer and its array directory. */
export function encodeSamples(d: SampleData): { bytes: Buffer; arrays: ArraySpec[]; sha256: string } {
  const arrays: ArraySpec[] = [];
  let offset = 0;
  for (const [name, type, data] of entries(d)) {
    offset = Math.ceil(offset / 8) * 8;
    arrays.push({ name, type, offset, length: data.length });
    offset += data.byteLength;
  }
  const bytes = Buffer.alloc(offset);
  entries(d).forEach(([, , data], i) => bytes.set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength), arrays[i]!.offset));
  return { bytes, arrays, sha256: createHash("sha256").update(bytes).digest("hex") };
}

/** Read a sidecar back: one file read, arrays are views (offsets are 8-aligned). */
export function decodeSamples(file: string, arrays: ArraySpec[], count: number, ramps: number, sha256?: string): SampleData {
  let bytes: Buffer;
  try {
    bytes = fs.readFileSync(file);
  } catch {
    throw new EeToolError("FILE_NOT_FOUND", `profile sidecar not found: ${file}`, { hint: "Keep the .bin file next to the profile JSON." });
  }
  if (sha256 && createHash("sha256").update(bytes).digest("hex") !== sha256) {
    throw new EeToolError("PROFILE_INVALID", `profile sidecar ${file} does not match its profile (sha256 differs)`);
  }
  const ab = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
  const get = (name: string): Int32Array | Float32Array | Uint8Array => {
    const spec = arrays.find((a) => a.name === name);
    if (!spec || spec.offset + spec.length * BYTES[spec.type] > bytes.length) throw new EeToolError("PROFILE_INVALID", `profile sidecar ${file} lacks array '${name}'`);
    if (spec.type === "int32") return new Int32Array(ab, spec.offset, spec.length);
    if (spec.type === "float32") return new Float32Array(ab, spec.offset, spec.length);
    return new Uint8Array(ab, spec.offset, spec.length);
  };
  return {
    count,
    index: get("index") as Int32Array,
    hash: get("hash") as Uint8Array,
    final: get("final") as Int32Array,
    label: get("label") as Int32Array,
    ramps: Array.from({ length: ramps }, (_, i) => ({
      pred: get(`ramp${i}.pred`) as Int32Array,
      maxprob: get(`ramp${i}.maxprob`) as Float32Array,
      margin: get(`ramp${i}.margin`) as Float32Array,
      entropy: get(`ramp${i}.entropy`) as Float32Array,
    })),
  };
}

/** Select and reorder samples. */
export function pickSamples(d: SampleData, order: ArrayLike<number>): SampleData {
  const n = order.length;
  const out = emptySamples(n, d.ramps.length);
  for (let i = 0; i < n; i++) {
    const s = order[i]!;
    out.index[i] = d.index[s]!;
    out.hash.set(d.hash.subarray(s * 8, s * 8 + 8), i * 8);
    out.final[i] = d.final[s]!;
    out.label[i] = d.label[s]!;
    d.ramps.forEach((r, j) => {
      const o = out.ramps[j]!;
      o.pred[i] = r.pred[s]!;
      o.maxprob[i] = r.maxprob[s]!;
      o.margin[i] = r.margin[s]!;
      o.entropy[i] = r.entropy[s]!;
    });
  }
  return out;
}
