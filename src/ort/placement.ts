/**
 * Where onnxruntime ran a model's nodes. A provider takes the nodes it can run and onnxruntime
 * silently puts the rest on the CPU, with copy nodes between; its profiler records the provider of
 * every node it runs (If branches included, when they run). One profiled call tells.
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { ort, sessionOptions, type SessionSettings } from "./ort.js";
import { EeToolError, messageOf } from "../errors.js";
import { ortMessage } from "./ort.js";

export interface Placement {
  /** onnxruntime's provider name (CPUExecutionProvider, ...) -> nodes it ran. */
  nodes: Record<string, number>;
  /** Copy nodes onnxruntime added between providers (MemcpyToHost, MemcpyFromHost). */
  copies: number;
  /** Op types that ran on another provider than the chosen one, with counts. */
  fallback: Record<string, number>;
}

interface TraceEvent {
  cat?: string;
  name?: string;
  args?: { op_name?: string; provider?: string };
}

/** Run the model once with onnxruntime's profiler on and count the nodes per provider. */
export async function measurePlacement(bytes: Uint8Array, settings: SessionSettings, feeds: Record<string, ort.Tensor>, fetches: readonly string[], chosen: string): Promise<Placement> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "ee-tool-placement-"));
  try {
    const prefix = path.join(dir, "trace");
    let session: ort.InferenceSession;
    try {
      session = await ort.InferenceSession.create(bytes, { ...sessionOptions(settings), enableProfiling: true, profileFilePrefix: prefix });
    } catch (e) {
      throw new EeToolError("RUNTIME_FAILED", `onnxruntime could not load the model to see where its nodes run: ${ortMessage(messageOf(e))}`);
    }
    try {
      await session.run(feeds, fetches as string[]);
    } finally {
      await session.release(); // writes the trace
    }
    const file = fs.readdirSync(dir).find((f) => f.startsWith("trace") && f.endsWith(".json"));
    if (!file) throw new EeToolError("RUNTIME_FAILED", "onnxruntime wrote no profiler trace: cannot tell where the model's nodes ran");
    return countPlacement(JSON.parse(fs.readFileSync(path.join(dir, file), "utf8")) as TraceEvent[], chosen);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** Placement from onnxruntime profiler events: each node counted once. */
export function countPlacement(events: readonly TraceEvent[], chosen: string): Placement {
  const seen = new Map<string, { op: string; provider: string }>();
  for (const e of events) {
    if (e.cat !== "Node" || !e.name?.endsWith("_kernel_time") || !e.args?.provider) continue;
    seen.set(e.name, { op: e.args.op_name ?? "?", provider: e.args.provider });
  }
  const nodes: Record<string, number> = {};
  const fallback: Record<string, number> = {};
  let copies = 0;
  for (const { op, provider } of seen.values()) {
    nodes[provider] = (nodes[provider] ?? 0) + 1;
    if (/^Memcpy(To|From)Host$/.test(op)) copies++;
    else if (provider !== chosen) fallback[op] = (fallback[op] ?? 0) + 1;
  }
  return { nodes, copies, fallback };
}
