/**
 * onnxruntime-node sessions for models held in memory. External tensors are inlined into the
 * serialized copy handed to onnxruntime (which, given a buffer, cannot resolve relative paths).
 */
import * as os from "node:os";
import * as ort from "onnxruntime-node";
import type { ModelProto, TensorProto } from "../onnx/types.js";
import { type OnnxModel, serializeModel } from "../onnx/model.js";
import { allTensors } from "../onnx/walk.js";
import { isExternal, tensorRawBytes } from "../onnx/tensor.js";
import { EeToolError, messageOf } from "../errors.js";
import { providerHint, providerOption } from "./providers.js";

export { ort };

// onnxruntime's own log lines (for example a missing CUDA library) would precede ee-tool's one-line
// errors on stderr; keep only fatal ones. ee-tool reports every failure itself.
ort.env.logLevel = "fatal";

export interface SessionSettings {
  /** Execution provider: cpu (default), webgpu, cuda, tensorrt; cuda:1 picks a device (providers.ts). */
  ep?: string;
  /** Intra-op threads (0 or unset: onnxruntime's default). */
  threads?: number;
  /** Graph optimisation level (default "all"). */
  optimization?: "disabled" | "basic" | "extended" | "all";
  /**
   * Let idle intra-op threads spin waiting for work (onnxruntime's default). Off for the
   * multi-session runtime and its profiles: each session has its own thread pool, and spinning
   * pools of the other sessions steal the cores the running one needs.
   */
  spinning?: boolean;
}

export function sessionOptions(s: SessionSettings = {}): ort.InferenceSession.SessionOptions {
  return {
    executionProviders: [providerOption(s.ep)],
    graphOptimizationLevel: s.optimization ?? "all",
    ...(s.threads ? { intraOpNumThreads: s.threads, interOpNumThreads: 1 } : {}),
    logSeverityLevel: 4,
    ...(s.spinning === false ? { extra: { session: { intra_op: { allow_spinning: "0" }, inter_op: { allow_spinning: "0" } } } } : {}),
  };
}

/**
 * How many sets of sessions to open (at least one, at most `wanted`): a session holds about twice
 * its graph's bytes (the weights and onnxruntime's copies of them), and all sets together take at
 * most half the free memory. `bytesPerSet`: what one set's sessions hold together.
 */
export function sessionsThatFit(wanted: number, bytesPerSet: number, freeBytes = os.freemem()): number {
  return Math.max(1, Math.min(wanted, Math.floor(freeBytes / 2 / Math.max(1, bytesPerSet))));
}

/** Serialize a ModelProto for onnxruntime, reading external tensors back inline. */
export function runtimeBytes(proto: ModelProto, readExternal?: OnnxModel["readExternal"]): Uint8Array {
  const externals = allTensors(proto).filter(isExternal);
  if (externals.length === 0) return serializeModel(proto);
  const saved: Array<[TensorProto, TensorProto]> = [];
  try {
    for (const t of externals) {
      const raw = tensorRawBytes(t, readExternal);
      saved.push([t, { ...t }]);
      delete t.external_data;
      delete t.data_location;
      t.raw_data = raw;
    }
    return serializeModel(proto);
  } finally {
    for (const [t, s] of saved) {
      delete t.raw_data;
      Object.assign(t, s);
    }
  }
}

export async function createSession(bytes: Uint8Array, settings: SessionSettings = {}): Promise<ort.InferenceSession> {
  try {
    return await ort.InferenceSession.create(bytes, sessionOptions(settings));
  } catch (e) {
    const msg = messageOf(e);
    if (settings.ep && settings.ep !== "cpu" && /provider|backend|not (found|supported|available)|cuda|registered/i.test(msg)) {
      throw new EeToolError("RUNTIME_FAILED", `execution provider '${settings.ep}' is not available: ${ortMessage(msg)}`, {
        hint: providerHint(msg),
      });
    }
    throw new EeToolError("RUNTIME_FAILED", `onnxruntime could not load the model: ${ortMessage(msg)}`);
  }
}

export async function runSession(
  session: ort.InferenceSession,
  feeds: Record<string, ort.Tensor>,
  fetches?: readonly string[],
): Promise<Record<string, ort.Tensor>> {
  try {
    return (await (fetches ? session.run(feeds, fetches) : session.run(feeds))) as Record<string, ort.Tensor>;
  } catch (e) {
    throw new EeToolError("RUNTIME_FAILED", `onnxruntime failed to run the model: ${ortMessage(messageOf(e))}`);
  }
}

/**
 * onnxruntime's message on one line, with the detail kept: it often puts what is wrong on later
 * lines ("Got invalid dimensions for input: x for the following indices" / "index: 0 Got: 8
 * Expected: 4"), and ends with advice that says nothing about this model.
 */
export function ortMessage(s: string): string {
  const lines = s
    .split("\n")
    .map((l) => l.replace(/\s*Please fix either the inputs\/outputs or the model\.?/g, "").trim())
    .filter((l) => l.length > 0 && !/^at\s/.test(l));
  const text = lines.reduce((acc, l) => (acc ? `${acc}${/[:;,]$/.test(acc) ? " " : /\bindices$/.test(acc) ? ": " : "; "}${l}` : l), "");
  return text.length > 600 ? `${text.slice(0, 597)}...` : text;
}
