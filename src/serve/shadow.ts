/**
 * Shadow runs: a request also run through the whole augmented model (every exit's ramp and the
 * model's own output), which gives the feedback a monitor and `ee-tool replan` learn from.
 */
import { planSettings, type Plan } from "../plan/plan.js";
import { feedbackFromLogits, type Feedback } from "../plan/feedback.js";
import { loadModel } from "../onnx/model.js";
import { runtimeBytes, type ort, type SessionSettings } from "../ort/ort.js";
import { createRunnable, type RunnableSession } from "../ort/sync.js";
import { runtimeExits } from "../plan/exits.js";

export class ShadowScorer {
  private constructor(private readonly session: RunnableSession, private readonly plan: Plan, private readonly outputs: string[]) {}

  static async open(plan: Plan, modelPath: string, settings: SessionSettings = {}): Promise<ShadowScorer> {
    const model = loadModel(modelPath);
    const outputs = runtimeExits(plan).map((e) => e.output);
    const fetches = [plan.model.output, ...outputs];
    const session = await createRunnable(runtimeBytes(model.proto, model.readExternal), planSettings(plan, settings), fetches);
    return new ShadowScorer(session, plan, outputs);
  }

  /** Feedback for each row of a batch: each exit's confidence (the plan's metric) and prediction, and the model's. */
  async score(feeds: Record<string, ort.Tensor>): Promise<Feedback[]> {
    const out = await this.session.run(feeds, this.session.outputNames);
    const logits = (name: string): Float32Array => out[name]!.data as Float32Array;
    return feedbackFromLogits(this.outputs.map(logits), logits(this.plan.model.output), this.plan.model.classes, this.plan.settings.metric);
  }

  async release(): Promise<void> {
    await this.session.release();
  }
}
