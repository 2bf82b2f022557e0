/**
 * Tensor data as typed arrays, whatever the storage: raw_data, the typed *_data fields, or
 * external data. float16 and bfloat16 convert to and from Float32Array.
 */
import type { TensorProto } from "./types.js";
import { DataType, dataTypeInfo, dataTypeName, rawByteLength } from "./dtype.js";
import { toBigInt, toNumber } from "./int64.js";
import { EeToolError } from "../errors.js";

export type TypedArray =
  | Float32Array | Float64Array | Int8Array | Uint8Array | Int16Array | Uint16Array | Int32Array | Uint32Array
  | BigInt64Array | BigUint64Array;

/** Reads a tensor's external data; supplied by the model loader (see external.ts). */
export type ExternalReader = (tensor: TensorProto) => Uint8Array;

export function tensorDims(t: TensorProto): number[] {
  return (t.dims ?? []).map((d) => toNumber(d, `dimension of tensor '${t.name ?? ""}'`));
}

export function numElements(dims: readonly number[]): number {
  return dims.reduce((a, b) => a * b, 1);
}

export function isExternal(t: TensorProto): boolean {
  return t.data_location === 1;
}

// ---- float16 / bfloat16 -------------------------------------------------------------------

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

export function float16ToFloat32(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24;
  if (exp === 31) return frac ? NaN : sign * Infinity;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}

/** Round to nearest even, as numpy's astype(float16). */
export function float32ToFloat16(v: number): number {
  f32[0] = v;
  const x = u32[0]!;
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  let mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  let e = exp - 127 + 15;
  if (e >= 31) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    const half = 1 << (shift - 1);
    let r = mant >> shift;
    const rest = mant & ((1 << shift) - 1);
    if (rest > half || (rest === half && r & 1)) r++;
    return sign | r;
  }
  let r = mant >> 13;
  const rest = mant & 0x1fff;
  if (rest > 0x1000 || (rest === 0x1000 && r & 1)) {
    r++;
    if (r === 0x400) {
      r = 0;
      e++;
      if (e >= 31) return sign | 0x7c00;
    }
  }
  return sign | (e << 10) | r;
}

export function bfloat16ToFloat32(b: number): number {
  u32[0] = (b & 0xffff) << 16;
  return f32[0]!;
}

/** Round to nearest even. */
export function float32ToBfloat16(v: number): number {
  f32[0] = v;
  const x = u32[0]!;
  if (Number.isNaN(v)) return ((x >>> 16) | 0x40) & 0xffff;
  return ((x + 0x7fff + ((x >>> 16) & 1)) >>> 16) & 0xffff;
}

// ---- raw bytes -----------------------------------------------------------------------------

/** A copy of `bytes` in a fresh, aligned ArrayBuffer (views into a file are rarely aligned). */
function aligned(bytes: Uint8Array): ArrayBuffer {
  const copy = new Uint8Array(bytes.length);
  copy.set(bytes);
  return copy.buffer;
}

/** The tensor's data as little-endian raw bytes, as raw_data would hold them. */
export function tensorRawBytes(t: TensorProto, readExternal?: ExternalReader): Uint8Array {
  const dt = t.data_type ?? 0;
  const name = t.name ?? "";
  if (dt === DataType.STRING) throw new EeToolError("UNSUPPORTED", `tensor '${name}' holds strings, which have no raw form`);
  if (isExternal(t)) {
    if (!readExternal) throw new EeToolError("INTERNAL", `tensor '${name}' is external but no reader was given`);
    return readExternal(t);
  }
  if (t.raw_data && t.raw_data.length > 0) return t.raw_data;
  const count = numElements(tensorDims(t));
  const info = dataTypeInfo(dt);
  if (!info) throw new EeToolError("TENSOR_INVALID", `tensor '${name}' has unknown data_type ${dt}`);
  const byteLength = rawByteLength(dt, count) ?? 0;
  const out = new Uint8Array(byteLength);
  const view = new DataView(out.buffer);
  const need = (field: unknown[] | undefined, n: number): unknown[] => {
    if (!field || field.length < n) {
      throw new EeToolError("TENSOR_INVALID", `tensor '${name}' (${dataTypeName(dt)}, ${count} elements) has ${field?.length ?? 0} values in ${info.field}`);
    }
    return field;
  };
  switch (dt) {
    case DataType.FLOAT:
      need(t.float_data, count).forEach((v, i) => view.setFloat32(i * 4, v as number, true));
      break;
    case DataType.COMPLEX64:
      need(t.float_data, 2 * count).forEach((v, i) => view.setFloat32(i * 4, v as number, true));
      break;
    case DataType.DOUBLE:
      need(t.double_data, count).forEach((v, i) => view.setFloat64(i * 8, v as number, true));
      break;
    case DataType.COMPLEX128:
      need(t.double_data, 2 * count).forEach((v, i) => view.setFloat64(i * 8, v as number, true));
      break;
    case DataType.INT64:
      need(t.int64_data, count).forEach((v, i) => view.setBigInt64(i * 8, toBigInt(v as number), true));
      break;
    case DataType.UINT64:
      need(t.uint64_data, count).forEach((v, i) => view.setBigUint64(i * 8, BigInt.asUintN(64, toBigInt(v as number)), true));
      break;
    case DataType.UINT32:
      need(t.uint64_data, count).forEach((v, i) => view.setUint32(i * 4, toNumber(v as number), true));
      break;
    case DataType.INT32:
      need(t.int32_data, count).forEach((v, i) => view.setInt32(i * 4, v as number, true));
      break;
    default: {
      // int32_data holds one element per entry, except the 4-bit types: one byte (two nibbles) per entry.
      const bits = info.bits;
      const entries = bits === 4 ? byteLength : count;
      const data = need(t.int32_data, entries) as number[];
      for (let i = 0; i < entries; i++) {
        if (bits === 16) view.setUint16(i * 2, data[i]! & 0xffff, true);
        else out[i] = data[i]! & 0xff;
      }
    }
  }
  return out;
}

/**
 * The tensor's values as a typed array: Float32Array for FLOAT, FLOAT16 and BFLOAT16 (converted),
 * the matching array type otherwise (BOOL, 8-bit floats and 4-bit types as their raw bytes).
 */
export function tensorToArray(t: TensorProto, readExternal?: ExternalReader): TypedArray {
  const dt = t.data_type ?? 0;
  const raw = tensorRawBytes(t, readExternal);
  const count = numElements(tensorDims(t));
  const expected = rawByteLength(dt, count);
  if (expected !== undefined && raw.length !== expected) {
    throw new EeToolError("TENSOR_INVALID", `tensor '${t.name ?? ""}' has ${raw.length} bytes of data, expected ${expected} for ${dataTypeName(dt)} ${JSON.stringify(tensorDims(t))}`);
  }
  const buf = aligned(raw);
  switch (dt) {
    case DataType.FLOAT: return new Float32Array(buf);
    case DataType.DOUBLE: return new Float64Array(buf);
    case DataType.INT8: return new Int8Array(buf);
    case DataType.INT16: return new Int16Array(buf);
    case DataType.UINT16: return new Uint16Array(buf);
    case DataType.INT32: return new Int32Array(buf);
    case DataType.UINT32: return new Uint32Array(buf);
    case DataType.INT64: return new BigInt64Array(buf);
    case DataType.UINT64: return new BigUint64Array(buf);
    case DataType.FLOAT16: {
      const h = new Uint16Array(buf);
      return Float32Array.from(h, float16ToFloat32);
    }
    case DataType.BFLOAT16: {
      const h = new Uint16Array(buf);
      return Float32Array.from(h, bfloat16ToFloat32);
    }
    case DataType.COMPLEX64: return new Float32Array(buf);
    case DataType.COMPLEX128: return new Float64Array(buf);
    default: return new Uint8Array(buf);
  }
}

/** Build a TensorProto holding `data` in raw_data. FLOAT16/BFLOAT16 take a Float32Array and convert. */
export function makeTensor(name: string, dataType: number, dims: readonly number[], data: TypedArray): TensorProto {
  let bytes: Uint8Array;
  if (dataType === DataType.FLOAT16 || dataType === DataType.BFLOAT16) {
    const conv = dataType === DataType.FLOAT16 ? float32ToFloat16 : float32ToBfloat16;
    const h = new Uint16Array(data.length);
    for (let i = 0; i < data.length; i++) h[i] = conv(Number(data[i]));
    bytes = new Uint8Array(h.buffer);
  } else {
    bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  }
  const expected = rawByteLength(dataType, numElements(dims));
  if (expected !== bytes.length) {
    throw new EeToolError("TENSOR_INVALID", `tensor '${name}': ${bytes.length} bytes of data for ${dataTypeName(dataType)} ${JSON.stringify(dims)} (expected ${expected})`);
  }
  return { dims: dims.map((d) => d), data_type: dataType, name, raw_data: bytes };
}

/** Total bytes of a tensor's payload (without reading external data). */
export function tensorByteSize(t: TensorProto): number {
  const dt = t.data_type ?? 0;
  if (dt === DataType.STRING) return (t.string_data ?? []).reduce((a, s) => a + s.length, 0);
  return rawByteLength(dt, numElements(tensorDims(t))) ?? 0;
}

