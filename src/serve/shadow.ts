/**
 * Shadow runs: a request also run through the whole augmented model (every exit's ramp and the
 * model's own output), which gives the feedback a monitor and `ee-tool replan` learn from.
 */
import type { Plan } from "../plan/plan.js";
import type { Feedback } from "../plan/feedback.js";
import { loadModel } from "../onnx/model.js";
import { runtimeBytes, type ort, type SessionSettings } from "../runtime/ort.js";
import { createRunnable, type RunnableSession } from "../runtime/sync.js";
import { scoreLogits } from "../profile/samples.js";
import { runtimeExits } from "../runtime/early-exit.js";

export class ShadowScorer {
  private constructor(private readonly session: RunnableSession, private readonly plan: Plan, private readonly outputs: string[]) {}

  static async open(plan: Plan, modelPath: string, settings: SessionSettings = {}): Promise<ShadowScorer> {
    const model = loadModel(modelPath);
    const outputs = runtimeExits(plan).map((e) => e.output);
    const fetches = [plan.model.output, ...outputs];
    const session = await createRunnable(runtimeBytes(model.proto, model.readExternal), { optimization: "all", spinning: false, ...settings }, fetches);
    return new ShadowScorer(session, plan, outputs);
  }

  /** Feedback for each row of a batch: each exit's confidence (the plan's metric) and prediction, and the model's. */
  async score(feeds: Record<string, ort.Tensor>): Promise<Feedback[]> {
    const out = await this.session.run(feeds, this.session.outputNames);
    const k = this.plan.model.classes;
    const final = out[this.plan.model.output]!.data as Float32Array;
    const n = final.length / k;
    const metric = this.plan.settings.metric;
    return Array.from({ length: n }, (_, row) => {
      const conf: number[] = [];
      const pred: number[] = [];
      for (const o of this.outputs) {
        const s = scoreLogits(out[o]!.data as Float32Array, k, row);
        conf.push(metric === "maxprob" ? s.maxprob : metric === "margin" ? s.margin : -s.entropy);
        pred.push(s.pred);
      }
      return { conf, pred, final: scoreLogits(final, k, row).pred };
    });
  }

  async release(): Promise<void> {
    await this.session.release();
  }
}
