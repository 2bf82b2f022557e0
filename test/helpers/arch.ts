/** The stripped torchvision graphs under fixtures/arch, refilled with seeded random weights. */
import * as path from "node:path";
import { loadModel, type OnnxModel } from "../../src/onnx/model.js";
import { DataType } from "../../src/onnx/dtype.js";
import { numElements, tensorDims } from "../../src/onnx/tensor.js";
import { Rng } from "../../src/util/rng.js";
import { ROOT } from "./fixtures.js";

export const ARCH_DIR = path.join(ROOT, "fixtures/arch");

/**
 * Refill every stripped float initializer (no data) with seeded uniform values of variance
 * 1/fan_in (uniform rather than normal: a ViT-B has 86M weights, and Box-Muller took 6.7 s of them).
 */
export function loadArch(name: string, seed = 0): OnnxModel {
  const model = loadModel(path.join(ARCH_DIR, `${name}.onnx`));
  const rng = new Rng(seed);
  for (const t of model.proto.graph!.initializer ?? []) {
    const dims = tensorDims(t);
    const count = numElements(dims);
    const empty = !(t.raw_data && t.raw_data.length) && !(t.float_data && t.float_data.length);
    if (t.data_type !== DataType.FLOAT || count === 0 || !empty) continue;
    const fanIn = dims.length > 2 ? count / dims[0]! : Math.max(dims[0]!, dims[1]!);
    const half = Math.sqrt(3 / fanIn);
    const data = new Float32Array(count);
    for (let i = 0; i < count; i++) data[i] = (2 * rng.next() - 1) * half;
    t.raw_data = new Uint8Array(data.buffer);
  }
  return model;
}
