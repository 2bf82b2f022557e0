export * from "./errors.js";
export * from "./onnx/types.js";
export * from "./onnx/dtype.js";
export * from "./onnx/tensor.js";
export * from "./onnx/model.js";
export { decodeMessage, encodeMessage, encodeRope } from "./onnx/codec.js";
export { allGraphs, allTensors } from "./onnx/walk.js";
