/**
 * The augmented model as onnxruntime optimises it on this machine, for the runtime and the
 * profile's stage timings.
 *
 * Why: at graph optimisation level "all" onnxruntime's CPU provider rewrites convolutions into its
 * blocked NCHWc layout and fuses each residual block's Add and Relu into them. A model cut into
 * pieces loses that at every cut (each piece converts back to NCHW at its edges: about 70 µs per cut
 * at batch 1 on the CNN fixture). Optimising the whole augmented model first, with its ramps in place
 * (so every exit tensor survives as a real tensor), and cutting the optimised graph keeps the layout
 * and the fusions across cuts; the pieces then load with optimisation off. The exit tensors are
 * found again through the ramps, whose output names survive.
 *
 * The optimised graph is specific to this machine and provider (onnxruntime warns about it when it
 * writes one), so it is made in a temporary directory each time and never shipped: emitted
 * artifacts (`plan --emit`) keep the portable graph.
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import type { ModelProto } from "../onnx/types.js";
import { loadModel, type OnnxModel } from "../onnx/model.js";
import { Graph } from "../ir/graph.js";
import { needed } from "./split.js";
import { METADATA_KEY, readRampMetadata, type RampMetadata } from "../ramps/metadata.js";
import { withRamps } from "../ramps/select.js";
import { ort, runtimeBytes, sessionOptions, type SessionSettings } from "../ort/ort.js";

/** Models larger than this are not re-serialised by onnxruntime (a protobuf holds at most 2 GB). */
const MAX_BYTES = 1_500_000_000;

export interface RuntimeModel {
  proto: ModelProto;
  meta: RampMetadata;
  /** True when `proto` is onnxruntime's optimised graph (load it with optimisation "disabled"). */
  optimized: boolean;
  readExternal: OnnxModel["readExternal"];
}

/** Settings for sessions over parts of a RuntimeModel. */
export function partSettings(m: RuntimeModel, settings: SessionSettings): SessionSettings {
  return m.optimized ? { ...settings, optimization: "disabled" } : settings;
}

/**
 * Optimise an augmented model with onnxruntime (cpu provider, the settings' level) and map its ramps
 * to the optimised graph. With `ramps`, only those ramps stay in the model (ramps/select.ts): every
 * other cut is then free to be fused across, as in the model without exits. Falls back to the
 * model as it is when the provider is not the CPU, the level is "disabled", the model is too large
 * to re-serialise, or an exit cannot be found again.
 */
export async function optimizeForRuntime(model: OnnxModel, settings: SessionSettings = {}, ramps?: readonly number[]): Promise<RuntimeModel> {
  if (ramps) model = { ...model, proto: withRamps(model.proto, ramps) };
  const meta = readRampMetadata(model.proto);
  const asIs: RuntimeModel = { proto: model.proto, meta: meta!, optimized: false, readExternal: model.readExternal };
  if (!meta || (settings.ep ?? "cpu") !== "cpu" || settings.optimization === "disabled" || process.env.EE_TOOL_NO_PREOPTIMIZE === "1") return asIs;
  const proto = await optimizedGraph(model, settings);
  const remapped = proto && remapRamps(proto, meta);
  if (!proto || !remapped) return asIs;
  proto.metadata_props = [...(proto.metadata_props ?? []).filter((p) => p.key !== METADATA_KEY), { key: METADATA_KEY, value: JSON.stringify(remapped) }];
  return { proto, meta: remapped, optimized: true, readExternal: model.readExternal };
}

/**
 * The model optimised with each of its ramps alone (as the runtime builds a plan with that one
 * exit), and with no ramp at all (a plan without exits).
 */
export async function eachRampAlone(model: OnnxModel, settings: SessionSettings = {}): Promise<{ alone: RuntimeModel[]; none: RuntimeModel }> {
  const alone: RuntimeModel[] = [];
  for (const r of readRampMetadata(model.proto)?.ramps ?? []) alone.push(await optimizeForRuntime(model, settings, [r.id]));
  return { alone, none: await optimizeForRuntime(model, settings, []) };
}

/**
 * onnxruntime's optimised graph of a model on the CPU provider at the settings' level (written by
 * onnxruntime to a temporary file, read back), or null when it cannot be had: a model too large to
 * re-serialise, or one onnxruntime fails to load.
 */
export async function optimizedGraph(model: OnnxModel, settings: SessionSettings = {}): Promise<ModelProto | null> {
  const bytes = runtimeBytes(model.proto, model.readExternal);
  if (bytes.byteLength > MAX_BYTES) return null;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "ee-tool-opt-"));
  try {
    const file = path.join(dir, "optimized.onnx");
    const session = await ort.InferenceSession.create(bytes, { ...sessionOptions({ ...settings, ep: "cpu" }), optimizedModelFilePath: file });
    await session.release();
    return loadModel(file).proto;
  } catch {
    return null;
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * Each ramp's exit tensor in an optimised graph: the backbone tensor its nodes read (the tensor
 * keeps its name when no rewrite touched it). Null when a ramp reads no or several backbone tensors.
 */
export function remapRamps(proto: ModelProto, meta: RampMetadata): RampMetadata | null {
  const g = new Graph(proto.graph!);
  const outputs = new Set(g.outputs.map((o) => o.name ?? ""));
  if (!outputs.has(meta.output) || meta.ramps.some((r) => !outputs.has(r.output))) return null;
  const backbone = needed(g, [meta.output], new Set());
  const produced = new Set([...backbone].flatMap((n) => n.output ?? []));
  const inputs = new Set(g.inputs.map((i) => i.name ?? ""));
  const ramps = [];
  for (const r of meta.ramps) {
    if (produced.has(r.tensor)) {
      ramps.push(r);
      continue;
    }
    const reads = new Set<string>();
    for (const n of needed(g, [r.output], new Set([...produced, ...inputs]))) for (const i of g.inputsOf(n)) if (produced.has(i)) reads.add(i);
    if (reads.size !== 1) return null;
    ramps.push({ ...r, tensor: [...reads][0]! });
  }
  return { ...meta, ramps };
}
