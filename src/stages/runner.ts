/** Running split models: types at the boundaries, sessions for every part, and chaining. */
import type { OnnxModel } from "../onnx/model.js";
import { discoverShapes } from "../ir/shapes.js";
import { boundaryTensors, splitModel, type SplitModel, type SplitOptions, type StagePart } from "./split.js";
import { createSession, runSession, runtimeBytes, type SessionSettings, ort } from "../ort/ort.js";
import { Graph } from "../ir/graph.js";
import { typeInfo } from "../ir/shapes.js";

/** Split a model, learning the element types of boundary tensors from one batch where the graph is silent. */
export async function splitWithTypes(model: OnnxModel, feeds: Record<string, ort.Tensor>, settings: SessionSettings = {}, options: SplitOptions = {}): Promise<SplitModel> {
  const names = boundaryTensors(model.proto, options);
  const view = new Graph(model.proto.graph!);
  const unknown = names.filter((n) => !typeInfo(view.valueInfo(n)?.type).elemType && !view.isInitializer(n));
  const found = unknown.length ? await discoverShapes(model, unknown, feeds, settings) : new Map();
  return splitModel(model.proto, (n) => typeInfo(view.valueInfo(n)?.type).elemType ?? found.get(n)?.elemType, options);
}

export interface PartSession {
  part: StagePart;
  session: ort.InferenceSession;
}

export async function openParts(parts: StagePart[], readExternal: OnnxModel["readExternal"], settings: SessionSettings): Promise<PartSession[]> {
  const out: PartSession[] = [];
  for (const part of parts) out.push({ part, session: await createSession(runtimeBytes(part.proto, readExternal), settings) });
  return out;
}

export async function releaseParts(parts: PartSession[]): Promise<void> {
  for (const p of parts) await p.session.release();
}

/** Feeds for a part from a pool of named tensors. */
export function partFeeds(part: StagePart, pool: Map<string, ort.Tensor>): Record<string, ort.Tensor> {
  const feeds: Record<string, ort.Tensor> = {};
  for (const i of part.inputs) feeds[i] = pool.get(i)!;
  return feeds;
}

/** Run every stage in order on graph-input feeds; returns all tensors produced (pool). */
export async function chainStages(stages: PartSession[], feeds: Record<string, ort.Tensor>): Promise<Map<string, ort.Tensor>> {
  const pool = new Map<string, ort.Tensor>(Object.entries(feeds));
  for (const s of stages) {
    const out = await runSession(s.session, partFeeds(s.part, pool), s.part.outputs);
    for (const [k, v] of Object.entries(out)) pool.set(k, v);
  }
  return pool;
}
