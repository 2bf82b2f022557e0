/**
 * Running an early-exit model as segments, one onnxruntime call each (segment i ends at exit i,
 * its ramp fused in; the last ends at the model's output): each segment on the rows still left,
 * rows leave at their first confident exit (decided in JavaScript), and the call ends when none
 * are left. The runtime's "segments" form (runtime/segments.ts opens a plan's), and what the
 * profile times as that form (profile.ts, `forms`).
 */
import { ort } from "../ort/ort.js";
import type { RunnableSession } from "../ort/sync.js";
import type { ActiveExit, Metric } from "./exit-graph.js";
import type { StagePart } from "./split.js";
import type { ModelProto } from "../onnx/types.js";
import { confidenceOf, scoreLogits } from "../util/logits.js";

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

/**
 * One session per fused stage (a split with `fuse: true`): stage i ends at `exits[i]`, the last at
 * the model's `output`. `open` makes the session with the caller's settings.
 */
export async function openSegmentChain(stages: readonly StagePart[], exits: readonly ActiveExit[], output: string, open: (proto: ModelProto, outputs: string[]) => Promise<RunnableSession>): Promise<Segment[]> {
  const segments: Segment[] = [];
  for (const [i, st] of stages.entries()) {
    const outputs = i === stages.length - 1 ? [output] : st.outputs;
    segments.push({ session: await open(st.proto, outputs), inputs: st.inputs, outputs, ...(exits[i] ? { exit: exits[i] } : {}) });
  }
  return segments;
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
