/**
 * The plan's model as segments, one onnxruntime call each: segment i ends at exit i (its ramp fused
 * in, cut from the graph onnxruntime optimises for this machine), the last at the model's output.
 * Two ways to run them:
 * - `runSegments`: each segment on the rows still left; rows leave at their first confident exit
 *   (the exit decision is made in JavaScript), and the call ends when none are left. The
 *   "segments" form of EarlyExitSession, for providers where one call per segment beats the
 *   one-call If model (the profile measures both, `forms`).
 * - the release-early mode (release.ts): every row runs to the end, each released at its exit.
 */
import type { Plan } from "../plan/plan.js";
import { loadModel } from "../onnx/model.js";
import { declaredTypes, splitModel } from "../stages/split.js";
import { ort, runtimeBytes, type SessionSettings } from "../ort/ort.js";
import { createRunnable, type RunnableSession } from "../ort/sync.js";
import { optimizeForRuntime, partSettings, type RuntimeModel } from "../stages/optimize.js";
import { batchTensorsAt, type ActiveExit, type Metric } from "../stages/exit-graph.js";
import { runtimeExits } from "../plan/exits.js";
import { scoreLogits } from "../profile/samples.js";
import { confidenceOf } from "../plan/feedback.js";

export interface Segment {
  session: RunnableSession;
  inputs: string[];
  outputs: string[];
  /** The exit this segment ends at, or undefined for the last one. */
  exit?: ActiveExit;
}

export interface Segments {
  segments: Segment[];
  exits: ActiveExit[];
  /** Tensors passed between segments whose first dimension is the batch, and whether rows may leave. */
  batchTensors: Set<string>;
  rowRemoval: boolean;
}

/** The plan's model as the runtime optimises it: the plan's ramps only (stages/optimize.ts). */
export function runtimeModelOf(plan: Plan, modelPath: string, settings: SessionSettings): Promise<RuntimeModel> {
  return optimizeForRuntime(loadModel(modelPath), settings, runtimeExits(plan).map((e) => e.ramp));
}

/** Open the plan's segments (exits in depth order, as runtimeExits gives them) over its runtime model. */
export async function openSegments(plan: Plan, rt: RuntimeModel, settings: SessionSettings): Promise<Segments> {
  const exits = runtimeExits(plan);
  const split = splitModel(rt.proto, declaredTypes(rt.proto), { rampIds: exits.map((e) => e.ramp), fuse: true });
  const segments: Segment[] = [];
  for (const [i, st] of split.stages.entries()) {
    const outputs = i === split.stages.length - 1 ? [plan.model.output] : st.outputs;
    segments.push({ session: await createRunnable(runtimeBytes(st.proto, rt.readExternal), partSettings(rt, settings), outputs), inputs: st.inputs, outputs, ...(exits[i] ? { exit: exits[i] } : {}) });
  }
  const { batchTensors, rowRemoval } = exits.length ? batchTensorsAt(rt.proto, exits, plan.model.output) : { batchTensors: new Set<string>(), rowRemoval: true };
  return { segments, exits, batchTensors, rowRemoval };
}

/** Rows `rows` of a tensor whose first dimension is the batch. */
export function takeRows(t: ort.Tensor, rows: readonly number[]): ort.Tensor {
  const n = t.dims[0]!;
  const per = n ? t.data.length / n : 0;
  const src = t.data as Float32Array;
  const out = new (src.constructor as Float32ArrayConstructor)(rows.length * per);
  rows.forEach((r, i) => out.set(src.subarray(r * per, (r + 1) * per), i * per));
  return new ort.Tensor(t.type, out, [rows.length, ...t.dims.slice(1)]);
}

/**
 * Run the segments: each row gets the logits of its first exit whose confidence reaches its
 * threshold, or the model's; rows leave the batch at their exit (where `rowRemoval` allows).
 */
export async function runSegments(s: Segments, feeds: Record<string, ort.Tensor>, thresholds: ArrayLike<number>, metric: Metric, classes: number, output: string): Promise<{ logits: Float32Array; exits: Int32Array }> {
  const n = Object.values(feeds)[0]!.dims[0]!;
  const logits = new Float32Array(n * classes);
  const exits = new Int32Array(n).fill(-1);
  const done = new Uint8Array(n);
  let left = Array.from({ length: n }, (_, i) => i); // original row of each row in the pool
  let pool = new Map<string, ort.Tensor>(Object.entries(feeds));
  for (const [i, seg] of s.segments.entries()) {
    const f: Record<string, ort.Tensor> = {};
    for (const name of seg.inputs) f[name] = pool.get(name)!;
    const out = await seg.session.run(f, seg.outputs);
    for (const [name, t] of Object.entries(out)) pool.set(name, t);
    const rows = seg.exit ? (out[seg.exit.output]!.data as Float32Array) : (out[output]!.data as Float32Array);
    const keep: number[] = [];
    left.forEach((orig, r) => {
      if (done[orig]) return;
      if (!seg.exit || confidenceOf(scoreLogits(rows, classes, r), metric) >= thresholds[i]!) {
        logits.set(rows.subarray(r * classes, (r + 1) * classes), orig * classes);
        exits[orig] = seg.exit ? seg.exit.ramp : -1;
        done[orig] = 1;
      } else keep.push(r);
    });
    if (keep.length === 0) break;
    if (s.rowRemoval && keep.length < left.length) {
      const next = new Map<string, ort.Tensor>();
      for (const [name, t] of pool) next.set(name, s.batchTensors.has(name) || (name in feeds && t.dims[0] === left.length) ? takeRows(t, keep) : t);
      pool = next;
      left = keep.map((r) => left[r]!);
    }
  }
  return { logits, exits };
}
