/**
 * EarlyExitSession: runs a plan. The model is split at the plan's active exits into segments, each
 * fused with its ramp so that one call runs both; after each segment the rows whose ramp is
 * confident enough leave the batch with the ramp's logits and the rest continue. Tensors stay in
 * onnxruntime tensors between calls.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import type { Plan } from "../plan/plan.js";
import type { Metric } from "../plan/problem.js";
import { loadModel } from "../onnx/model.js";
import { checkModelHash } from "../plan/write.js";
import { declaredTypes, splitModel, type StagePart } from "../stages/split.js";
import { scoreLogits } from "../profile/samples.js";
import { runtimeBytes, ort, type SessionSettings } from "./ort.js";
import { createRunnable, type RunnableSession } from "./sync.js";
import { EeToolError } from "../errors.js";
import { Graph } from "../ir/graph.js";
import { DataType } from "../onnx/dtype.js";
import { PLAN_FORMAT } from "../plan/plan.js";

export interface EarlyExitResult {
  /** Logits [N, classes], row-major, each row from the exit it took. */
  logits: Float32Array;
  dims: [number, number];
  /** Ramp id per row, -1 for rows that ran the whole model. */
  exits: Int32Array;
  /** Milliseconds per segment call made (in order), and in total. */
  timings: { segments: number[]; totalMs: number };
}

interface Segment {
  part: StagePart;
  session: RunnableSession;
  exit: { ramp: number; output: string; threshold: number } | null;
}

/** Confidence of row i of logits [n, k] under a metric (higher is more confident), as the profile measures it. */
export function rowConfidence(logits: Float32Array, k: number, i: number, metric: Metric): number {
  const sc = scoreLogits(logits, k, i);
  return Math.fround(metric === "maxprob" ? sc.maxprob : metric === "margin" ? sc.margin : -sc.entropy);
}

/** Rows `keep` of a tensor whose first dimension is the batch. */
function selectRows(t: ort.Tensor, keep: number[]): ort.Tensor {
  const n = t.dims[0]!;
  const per = t.size / n;
  const data = t.data as Float32Array;
  const Ctor = data.constructor as new (len: number) => Float32Array;
  const out = new Ctor(keep.length * per);
  keep.forEach((r, i) => out.set(data.subarray(r * per, (r + 1) * per), i * per));
  return new ort.Tensor(t.type as "float32", out, [keep.length, ...t.dims.slice(1)]);
}

export class EarlyExitSession {
  private constructor(
    readonly plan: Plan,
    private readonly segments: Segment[],
    private readonly classes: number,
    private readonly metric: Metric,
    /** Whether rows may leave the batch (no batch-sized shape tensor crosses a cut). */
    readonly rowRemoval: boolean,
    private readonly batchTensors: Set<string>,
  ) {}

  static async create(planPath: string, settings: SessionSettings = {}): Promise<EarlyExitSession> {
    let plan: Plan;
    try {
      plan = JSON.parse(fs.readFileSync(planPath, "utf8")) as Plan;
    } catch (e) {
      throw new EeToolError(fs.existsSync(planPath) ? "PROFILE_INVALID" : "FILE_NOT_FOUND", `cannot read plan ${planPath}: ${(e as Error).message}`);
    }
    if (plan.format !== PLAN_FORMAT) throw new EeToolError("PROFILE_INVALID", `${planPath} is not an ee-tool plan`);
    const modelPath = path.resolve(path.dirname(planPath), plan.model.file);
    checkModelHash(modelPath, plan.model.sha256);
    return EarlyExitSession.fromPlan(plan, modelPath, settings);
  }

  static async fromPlan(plan: Plan, modelPath: string, settings: SessionSettings = {}): Promise<EarlyExitSession> {
    const model = loadModel(modelPath);
    const exits = [...plan.exits].sort((a, b) => a.stage - b.stage);
    const view = new Graph(model.proto.graph!);
    const types = declaredTypes(model.proto);
    const typeOf = (name: string): number => types(name) ?? DataType.FLOAT;
    const split = splitModel(model.proto, typeOf, { rampIds: exits.map((e) => e.ramp), fuse: true });
    const segments: Segment[] = [];
    for (let i = 0; i < split.stages.length; i++) {
      const part = split.stages[i]!;
      const e = exits[i];
      segments.push({
        part,
        session: await createRunnable(runtimeBytes(part.proto, model.readExternal), { optimization: "all", spinning: false, ...settings }, part.outputs),
        exit: e ? { ramp: e.ramp, output: e.output, threshold: e.threshold } : null,
      });
    }
    // Tensors passed between segments that carry the batch: graph inputs and tensors of rank >= 2.
    // A rank-1 integer tensor crossing a cut may hold the batch size (a shape); then rows cannot leave.
    const crossing = new Set(segments.flatMap((s) => s.part.inputs));
    const graphInputs = new Set(view.inputs.map((i) => i.name ?? ""));
    let rowRemoval = true;
    const batchTensors = new Set<string>();
    for (const t of crossing) {
      if (graphInputs.has(t)) {
        batchTensors.add(t);
        continue;
      }
      const p = view.producer(t);
      const shapeLike = typeOf(t) === DataType.INT64 && (p?.op_type === "Shape" || p?.op_type === "Concat" || p?.op_type === "Gather" || p?.op_type === "Unsqueeze");
      if (shapeLike) rowRemoval = false;
      else batchTensors.add(t);
    }
    return new EarlyExitSession(plan, segments, plan.model.classes, plan.settings.metric, rowRemoval, batchTensors);
  }

  /** Run a batch: rows exit at the first confident active ramp. */
  async run(feeds: Record<string, ort.Tensor>): Promise<EarlyExitResult> {
    const n = Object.values(feeds)[0]!.dims[0]!;
    const k = this.classes;
    const logits = new Float32Array(n * k);
    const exits = new Int32Array(n).fill(-1);
    const timings: number[] = [];
    const t0 = performance.now();
    let rows = Array.from({ length: n }, (_, i) => i);
    let pool = new Map<string, ort.Tensor>(Object.entries(feeds));
    for (const seg of this.segments) {
      const inputs: Record<string, ort.Tensor> = {};
      for (const name of seg.part.inputs) {
        const t = pool.get(name);
        if (!t) throw new EeToolError("CALIB_MISMATCH", `input '${name}' is missing from the feeds`);
        inputs[name] = t;
      }
      const s0 = performance.now();
      const out = await seg.session.run(inputs, seg.part.outputs);
      timings.push(performance.now() - s0);
      for (const [name, t] of Object.entries(out)) pool.set(name, t);
      if (!seg.exit) {
        const final = out[this.plan.model.output]!.data as Float32Array;
        rows.forEach((r, i) => {
          if (exits[r] === -1) logits.set(final.subarray(i * k, (i + 1) * k), r * k);
        });
        break;
      }
      const ramp = out[seg.exit.output]!.data as Float32Array;
      const keep: number[] = [];
      const stay: number[] = [];
      rows.forEach((r, i) => {
        if (exits[r] === -1 && rowConfidence(ramp, k, i, this.metric) >= seg.exit!.threshold) {
          exits[r] = seg.exit!.ramp;
          logits.set(ramp.subarray(i * k, (i + 1) * k), r * k);
        } else if (exits[r] === -1) keep.push(i);
        if (exits[r] === -1) stay.push(r);
      });
      if (stay.length === 0) break;
      if (this.rowRemoval && keep.length < rows.length) {
        const next = new Map<string, ort.Tensor>();
        for (const [name, t] of pool) next.set(name, this.batchTensors.has(name) && t.dims[0] === rows.length ? selectRows(t, keep) : t);
        pool = next;
        rows = keep.map((i) => rows[i]!);
      }
      // Without row removal the batch stays together; rows that exited keep their ramp's logits.
    }
    return { logits, dims: [n, k], exits, timings: { segments: timings, totalMs: performance.now() - t0 } };
  }

  async release(): Promise<void> {
    for (const s of this.segments) await s.session.release();
  }
}
