/**
 * Execution providers: the `--ep` value (a name, with a device id where the provider has one:
 * `cuda:1`), the option onnxruntime-node takes for it, and which providers this onnxruntime build
 * can really run here (listed by the binding, then each tried on a one-node model).
 */
import * as ort from "onnxruntime-node";
import { DataType } from "../onnx/dtype.js";
import { serializeModel } from "../onnx/model.js";
import type { ModelProto } from "../onnx/types.js";
import { EeToolError, messageOf } from "../errors.js";

export const PROVIDERS = ["cpu", "webgpu", "cuda", "tensorrt"] as const;
/** Providers with a device id (`--ep cuda:1`). */
const WITH_DEVICE = new Set(["cuda", "tensorrt"]);

export interface Provider {
  name: string;
  deviceId: number | null;
}

/** `cpu`, `webgpu`, `cuda`, `cuda:1`, ... */
export function parseEp(ep: string | undefined): Provider {
  const text = (ep ?? "cpu").trim().toLowerCase();
  const m = /^([a-z]+)(?::(\d+))?$/.exec(text);
  if (!m || !(PROVIDERS as readonly string[]).includes(m[1]!)) {
    throw new EeToolError("USAGE", `--ep takes one of ${PROVIDERS.join(", ")} (cuda and tensorrt with an optional device id, e.g. cuda:1), got '${ep}'`, {
      hint: "`ee-tool inspect --providers` lists what this onnxruntime build can run here.",
    });
  }
  if (m[2] !== undefined && !WITH_DEVICE.has(m[1]!)) throw new EeToolError("USAGE", `--ep ${m[1]} takes no device id, got '${ep}'`);
  return { name: m[1]!, deviceId: m[2] === undefined ? null : Number(m[2]) };
}

/** The provider as onnxruntime-node's `executionProviders` entry. */
export function providerOption(ep: string | undefined): ort.InferenceSession.ExecutionProviderConfig {
  const p = parseEp(ep);
  return p.deviceId === null ? p.name : ({ name: p.name, deviceId: p.deviceId } as ort.InferenceSession.ExecutionProviderConfig);
}

/** onnxruntime's own name for a provider in its profiler's records (CPUExecutionProvider, ...). */
export function ortProviderName(ep: string | undefined): string {
  return { cpu: "CPUExecutionProvider", webgpu: "WebGpuExecutionProvider", cuda: "CUDAExecutionProvider", tensorrt: "TensorrtExecutionProvider" }[parseEp(ep).name]!;
}

/** Whether onnxruntime's message says WebGPU found no device (no Vulkan loader or driver). */
export function noWebGpuAdapter(message: string): boolean {
  return /adapter/i.test(message);
}

/** What to do when a provider cannot start, given onnxruntime's message. */
export function providerHint(message: string): string {
  return noWebGpuAdapter(message)
    ? "WebGPU runs over Vulkan: it needs the Vulkan loader (libvulkan.so.1, Debian's libvulkan1) and a driver; without a GPU, apt-get install libvulkan1 chromium and set VK_ICD_FILENAMES=/usr/lib/chromium/vk_swiftshader_icd.json and XDG_RUNTIME_DIR. Or use --ep cpu."
    : "Install an onnxruntime-node build with that provider (for cuda: the CUDA binaries and drivers), or use --ep cpu.";
}

/** A one-node model (y = x + x) to try a provider on. */
function probeModel(): Uint8Array {
  const vi = (name: string) => ({ name, type: { tensor_type: { elem_type: DataType.FLOAT, shape: { dim: [{ dim_value: 4 }] } } } });
  const proto: ModelProto = {
    ir_version: 8, opset_import: [{ domain: "", version: 17 }],
    graph: { name: "probe", node: [{ op_type: "Add", input: ["x", "x"], output: ["y"] }], input: [vi("x")], output: [vi("y")] },
  } as ModelProto;
  return serializeModel(proto);
}

export interface ProviderStatus {
  name: string;
  /** Whether the npm package ships the provider (else its install script downloads it). */
  bundled: boolean;
  /** A session on it ran and returned the right answer. */
  available: boolean;
  /** Why not, in onnxruntime's words. */
  reason: string | null;
}

/** Every provider this onnxruntime build lists, each tried on a one-node model. */
export async function providerStatus(): Promise<ProviderStatus[]> {
  const listed = ort.listSupportedBackends();
  const out: ProviderStatus[] = [];
  const model = probeModel();
  for (const b of listed) {
    let reason: string | null = null;
    try {
      const s = await ort.InferenceSession.create(model, { executionProviders: [b.name], logSeverityLevel: 4 });
      try {
        const y = (await s.run({ x: new ort.Tensor("float32", Float32Array.of(1, 2, 3, 4), [4]) })).y!.data as Float32Array;
        if (y[3] !== 8) reason = `wrong result ${Array.from(y).join(",")}`;
      } finally {
        await s.release();
      }
    } catch (e) {
      // onnxruntime prefixes its source location and the failed check: keep what it says after them.
      reason = messageOf(e).split("\n")[0]!.replace(/^\/\S+:\d+ .*? was false\.\s*/, "").slice(0, 300);
    }
    out.push({ name: b.name, bundled: b.bundled, available: reason === null, reason });
  }
  return out;
}
