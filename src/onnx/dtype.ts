/** ONNX TensorProto.DataType: names, element sizes, and which typed *_data field holds them. */

export const DataType = {
  UNDEFINED: 0, FLOAT: 1, UINT8: 2, INT8: 3, UINT16: 4, INT16: 5, INT32: 6, INT64: 7, STRING: 8, BOOL: 9,
  FLOAT16: 10, DOUBLE: 11, UINT32: 12, UINT64: 13, COMPLEX64: 14, COMPLEX128: 15, BFLOAT16: 16,
  FLOAT8E4M3FN: 17, FLOAT8E4M3FNUZ: 18, FLOAT8E5M2: 19, FLOAT8E5M2FNUZ: 20, UINT4: 21, INT4: 22,
  FLOAT4E2M1: 23, FLOAT8E8M0: 24,
} as const;

export type DataTypeName = keyof typeof DataType;

/** Which typed field of TensorProto stores a type when raw_data is not used (per onnx.proto). */
export type TypedField = "float_data" | "int32_data" | "string_data" | "int64_data" | "double_data" | "uint64_data";

interface DataTypeInfo {
  name: DataTypeName;
  /** Bits per element in raw_data (4 for the 4-bit types; 0 for strings). */
  bits: number;
  field: TypedField;
  /** onnxruntime-common's tensor type name, where it has one. */
  ort?: string;
}

const INFO: Record<number, DataTypeInfo> = {
  1: { name: "FLOAT", bits: 32, field: "float_data", ort: "float32" },
  2: { name: "UINT8", bits: 8, field: "int32_data", ort: "uint8" },
  3: { name: "INT8", bits: 8, field: "int32_data", ort: "int8" },
  4: { name: "UINT16", bits: 16, field: "int32_data", ort: "uint16" },
  5: { name: "INT16", bits: 16, field: "int32_data", ort: "int16" },
  6: { name: "INT32", bits: 32, field: "int32_data", ort: "int32" },
  7: { name: "INT64", bits: 64, field: "int64_data", ort: "int64" },
  8: { name: "STRING", bits: 0, field: "string_data", ort: "string" },
  9: { name: "BOOL", bits: 8, field: "int32_data", ort: "bool" },
  10: { name: "FLOAT16", bits: 16, field: "int32_data", ort: "float16" },
  11: { name: "DOUBLE", bits: 64, field: "double_data", ort: "float64" },
  12: { name: "UINT32", bits: 32, field: "uint64_data", ort: "uint32" },
  13: { name: "UINT64", bits: 64, field: "uint64_data", ort: "uint64" },
  14: { name: "COMPLEX64", bits: 64, field: "float_data" },
  15: { name: "COMPLEX128", bits: 128, field: "double_data" },
  16: { name: "BFLOAT16", bits: 16, field: "int32_data" },
  17: { name: "FLOAT8E4M3FN", bits: 8, field: "int32_data" },
  18: { name: "FLOAT8E4M3FNUZ", bits: 8, field: "int32_data" },
  19: { name: "FLOAT8E5M2", bits: 8, field: "int32_data" },
  20: { name: "FLOAT8E5M2FNUZ", bits: 8, field: "int32_data" },
  21: { name: "UINT4", bits: 4, field: "int32_data", ort: "uint4" },
  22: { name: "INT4", bits: 4, field: "int32_data", ort: "int4" },
  23: { name: "FLOAT4E2M1", bits: 4, field: "int32_data" },
  24: { name: "FLOAT8E8M0", bits: 8, field: "int32_data" },
};

export function dataTypeInfo(dt: number): DataTypeInfo | undefined {
  return INFO[dt];
}

export function dataTypeName(dt: number | undefined): string {
  if (dt === undefined) return "UNDEFINED";
  return INFO[dt]?.name ?? `UNKNOWN(${dt})`;
}

/** Bytes that `count` elements take in raw_data (4-bit types pack two per byte, rounded up). */
export function rawByteLength(dt: number, count: number): number | undefined {
  const info = INFO[dt];
  if (!info || info.bits === 0) return undefined;
  return Math.ceil((count * info.bits) / 8);
}

/** Map from onnxruntime's tensor type names to ONNX data types. */
export function dataTypeFromOrt(type: string): number | undefined {
  for (const [k, v] of Object.entries(INFO)) if (v.ort === type) return Number(k);
  return undefined;
}
