/** Conversions between TensorProto and onnxruntime tensors. */
import type { TensorProto } from "../onnx/types.js";
import { DataType, dataTypeInfo, dataTypeName } from "../onnx/dtype.js";
import { tensorDims, tensorRawBytes, type ExternalReader } from "../onnx/tensor.js";
import { ort } from "./ort.js";
import { EeToolError } from "../errors.js";

function copyAligned(bytes: Uint8Array): ArrayBuffer {
  const c = new Uint8Array(bytes.length);
  c.set(bytes);
  return c.buffer;
}

/** The TensorProto as an onnxruntime tensor (raw bit patterns for float16). */
export function ortTensorFromProto(t: TensorProto, readExternal?: ExternalReader): ort.Tensor {
  const dt = t.data_type ?? 0;
  const dims = tensorDims(t);
  if (dt === DataType.STRING) {
    const decoder = new TextDecoder();
    return new ort.Tensor("string", (t.string_data ?? []).map((s) => decoder.decode(s)), dims);
  }
  const type = dataTypeInfo(dt)?.ort;
  if (!type) throw new EeToolError("UNSUPPORTED", `tensor '${t.name ?? ""}' has type ${dataTypeName(dt)}, which onnxruntime-node cannot take as an input`);
  const buf = copyAligned(tensorRawBytes(t, readExternal));
  switch (type) {
    case "float32": return new ort.Tensor(type, new Float32Array(buf), dims);
    case "float64": return new ort.Tensor(type, new Float64Array(buf), dims);
    case "int8": return new ort.Tensor(type, new Int8Array(buf), dims);
    case "uint8": return new ort.Tensor(type, new Uint8Array(buf), dims);
    case "bool": return new ort.Tensor(type, new Uint8Array(buf), dims);
    case "int16": return new ort.Tensor(type, new Int16Array(buf), dims);
    case "uint16": return new ort.Tensor(type, new Uint16Array(buf), dims);
    case "float16": return new ort.Tensor(type, new Uint16Array(buf), dims);
    case "int32": return new ort.Tensor(type, new Int32Array(buf), dims);
    case "uint32": return new ort.Tensor(type, new Uint32Array(buf), dims);
    case "int64": return new ort.Tensor(type, new BigInt64Array(buf), dims);
    case "uint64": return new ort.Tensor(type, new BigUint64Array(buf), dims);
    default:
      throw new EeToolError("UNSUPPORTED", `tensor '${t.name ?? ""}' has type ${dataTypeName(dt)}, which onnxruntime-node cannot take as an input`);
  }
}
