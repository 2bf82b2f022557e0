/**
 * Apparate's serving mode: the whole batch runs to the end, and each row is released when its exit
 * fires, so its latency is the time to its exit while throughput is the model's. The model runs as
 * its segments (each ending at an exit, the ramp fused in, as `plan --emit stages` writes them, cut
 * from the graph onnxruntime optimises), one call each, and the time a row is released is measured
 * when the segment that holds its exit returns. Because every row also runs to the end, every
 * request yields the full model's answer and each exit's confidence: feedback for the monitor
 * (serve/monitor.ts) at no extra model work.
 */
import { planSettings, type Plan } from "../plan/plan.js";
import { feedbackFromLogits, type Feedback } from "../plan/feedback.js";
import type { ort, SessionSettings } from "../ort/ort.js";
import { openSegments, runtimeModelOf } from "./segments.js";
import type { Segment } from "../stages/segments.js";
import { callThresholds, type RunOptions } from "./early-exit.js";
import { runtimeExits } from "../plan/exits.js";
import type { ActiveExit } from "../stages/exit-graph.js";
import { EeToolError } from "../errors.js";
import { scoreLogits, confidenceOf } from "../util/logits.js";

export interface ReleaseResult {
  /** Logits [N, classes], each row from the exit it took. */
  logits: Float32Array;
  /** Ramp id per row, -1 for rows that ran the whole model. */
  exits: Int32Array;
  /** Milliseconds from the call's start to each row's release. */
  releaseMs: Float64Array;
  totalMs: number;
  /** Every row's feedback: each exit's confidence and prediction, and the full model's prediction. */
  feedback: Feedback[];
}

export class ReleaseEarlySession {
  private constructor(private readonly plan: Plan, private readonly segments: Segment[], private readonly exits: ActiveExit[]) {}

  static async fromPlan(plan: Plan, modelPath: string, settings: SessionSettings = {}): Promise<ReleaseEarlySession> {
    if (runtimeExits(plan).length === 0) throw new EeToolError("UNSUPPORTED", "the plan has no exits: every row runs the whole model, there is nothing to release early");
    const s: SessionSettings = planSettings(plan, settings);
    const { segments, exits } = await openSegments(plan, await runtimeModelOf(plan, modelPath, s), s);
    return new ReleaseEarlySession(plan, segments, exits);
  }

  /** Ramp ids of the exits, in order (the order of RunOptions.thresholds). */
  get exitRamps(): number[] {
    return this.exits.map((e) => e.ramp);
  }

  async run(feeds: Record<string, ort.Tensor>, options: RunOptions = {}): Promise<ReleaseResult> {
    const k = this.plan.model.classes;
    const n = Object.values(feeds)[0]!.dims[0]!;
    const thresholds = callThresholds(this.plan, this.exits, options);
    const metric = this.plan.settings.metric;
    const logits = new Float32Array(n * k);
    const exits = new Int32Array(n).fill(-1);
    const releaseMs = new Float64Array(n).fill(-1);
    const exitLogits: Float32Array[] = [];
    const pool = new Map<string, ort.Tensor>(Object.entries(feeds));
    const t0 = performance.now();
    for (const [i, seg] of this.segments.entries()) {
      const f: Record<string, ort.Tensor> = {};
      for (const name of seg.inputs) f[name] = pool.get(name)!;
      const out = await seg.session.run(f, seg.outputs);
      const at = performance.now() - t0;
      for (const [name, t] of Object.entries(out)) pool.set(name, t);
      if (!seg.exit) continue;
      const ramp = out[seg.exit.output]!.data as Float32Array;
      exitLogits.push(ramp);
      for (let row = 0; row < n; row++) {
        if (releaseMs[row]! < 0 && confidenceOf(scoreLogits(ramp, k, row), metric) >= thresholds[i]!) {
          releaseMs[row] = at;
          exits[row] = seg.exit.ramp;
          logits.set(ramp.subarray(row * k, (row + 1) * k), row * k);
        }
      }
    }
    const totalMs = performance.now() - t0;
    const final = pool.get(this.plan.model.output)!.data as Float32Array;
    for (let row = 0; row < n; row++) {
      if (releaseMs[row]! < 0) {
        releaseMs[row] = totalMs;
        logits.set(final.subarray(row * k, (row + 1) * k), row * k);
      }
    }
    return { logits, exits, releaseMs, totalMs, feedback: feedbackFromLogits(exitLogits, final, k, metric) };
  }

  async release(): Promise<void> {
    for (const s of this.segments) await s.session.release();
  }
}
