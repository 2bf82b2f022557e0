/**
 * Synchronous onnxruntime calls. onnxruntime-node's public `run` wraps a synchronous native call
 * in setImmediate and a Promise, which costs several microseconds per call; an early-exit runtime
 * makes several calls per request, so it uses the native binding directly when it is there (the
 * version is pinned by package-lock.json) and falls back to the public API otherwise.
 */
import { createRequire } from "node:module";
import { ort, ortMessage, sessionOptions, type SessionSettings } from "./ort.js";
import { EeToolError, messageOf } from "../errors.js";

interface NativeSession {
  loadModel(buffer: ArrayBuffer, offset: number, length: number, options: object): void;
  run(feeds: Record<string, ort.Tensor>, fetches: Record<string, null>, options: object): Record<string, ort.Tensor>;
  dispose(): void;
}

interface NativeBinding {
  binding: { InferenceSession: new () => NativeSession };
  initOrt: () => void;
}

let native: NativeBinding | null | undefined;

function loadNative(): NativeBinding | null {
  if (native !== undefined) return native;
  try {
    const require = createRequire(import.meta.url);
    const b = require("onnxruntime-node/dist/binding.js") as NativeBinding;
    native = typeof b.binding?.InferenceSession === "function" && typeof b.initOrt === "function" ? b : null;
  } catch {
    native = null;
  }
  return native;
}

export interface RunnableSession {
  readonly outputNames: readonly string[];
  run(feeds: Record<string, ort.Tensor>, fetches: readonly string[]): Promise<Record<string, ort.Tensor>>;
  release(): Promise<void>;
  /** True when calls go straight to the native binding. */
  readonly direct: boolean;
}

export async function createRunnable(bytes: Uint8Array, settings: SessionSettings, outputNames: readonly string[]): Promise<RunnableSession> {
  const b = loadNative();
  const options = sessionOptions(settings);
  if (b) {
    try {
      b.initOrt();
      const s = new b.binding.InferenceSession();
      s.loadModel(bytes.buffer as ArrayBuffer, bytes.byteOffset, bytes.byteLength, options);
      return {
        outputNames, direct: true,
        run: (feeds, fetches) => {
          const f: Record<string, null> = {};
          for (const name of fetches) f[name] = null;
          try {
            return Promise.resolve(s.run(feeds, f, {}));
          } catch (e) {
            return Promise.reject(new EeToolError("RUNTIME_FAILED", `onnxruntime failed to run the model: ${ortMessage(messageOf(e))}`));
          }
        },
        release: async () => s.dispose(),
      };
    } catch (e) {
      throw new EeToolError("RUNTIME_FAILED", `onnxruntime could not load the model: ${ortMessage(messageOf(e))}`);
    }
  }
  let s: ort.InferenceSession;
  try {
    s = await ort.InferenceSession.create(bytes, options);
  } catch (e) {
    throw new EeToolError("RUNTIME_FAILED", `onnxruntime could not load the model: ${ortMessage(messageOf(e))}`);
  }
  return {
    outputNames, direct: false,
    run: async (feeds, fetches) => (await s.run(feeds, fetches)) as Record<string, ort.Tensor>,
    release: () => s.release(),
  };
}
