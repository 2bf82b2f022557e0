/**
 * EarlyExitSession: runs a plan. The augmented model, with the plan's ramps only, is optimised by
 * onnxruntime as a whole (see optimize.ts) and turned into one model with an If node after each active ramp (exit-graph.ts),
 * so a request is one onnxruntime call whichever exit it takes. Its thresholds are an optional
 * input (ee_thresholds): a call may feed other thresholds or pick one of the plan's operating
 * points, with no reload (bench/switch.mjs: no measurable cost). In a batch, rows whose ramp is
 * confident leave it and the rest continue (batch 1 and models whose cuts carry the batch size
 * as a shape keep the batch together; each row still gets its first confident exit's logits).
 */
import * as fs from "node:fs";
import * as path from "node:path";
import type { Plan } from "../plan/plan.js";
import { checkModelHash } from "../plan/write.js";
import { runtimeBytes, ort, type SessionSettings } from "../ort/ort.js";
import { createRunnable, type RunnableSession } from "../ort/sync.js";
import { partSettings, type RuntimeModel } from "../stages/optimize.js";
import { batchMode, batchTensorsAt, buildExitModel, exitOutputs, readExitOutputs, THRESHOLDS_INPUT, type ActiveExit, type BatchMode } from "../stages/exit-graph.js";
import { EeToolError } from "../errors.js";
import { fixedBatch, inputSpecs } from "../data/calib.js";
import { PLAN_FORMAT, planSettings } from "../plan/plan.js";
import { runtimeExits } from "../plan/exits.js";
import { openSegments, runtimeModelOf } from "./segments.js";
import { runSegments, type Segments } from "../stages/segments.js";
import type { RuntimeForm } from "../plan/plan.js";

export interface EarlyExitResult {
  /** Logits [N, classes], row-major, each row from the exit it took. */
  logits: Float32Array;
  dims: [number, number];
  /** Ramp id per row, -1 for rows that ran the whole model. */
  exits: Int32Array;
  /** Milliseconds of the call. */
  timings: { totalMs: number };
}

export interface RunOptions {
  /** An operating point of the plan (index into plan.points.points): its thresholds for this call. */
  point?: number;
  /** Thresholds for this call, one per exit of `exitRamps` (+Infinity: off). */
  thresholds?: ArrayLike<number>;
}

export class EarlyExitSession {
  private readonly sessions = new Map<BatchMode, RunnableSession>();

  private constructor(
    readonly plan: Plan,
    private readonly model: RuntimeModel,
    private readonly exits: ActiveExit[],
    private readonly settings: SessionSettings,
    /** Whether rows may leave a batch (no batch-sized shape tensor crosses a cut). */
    readonly rowRemoval: boolean,
    private readonly batchTensors: Set<string>,
    /** The segments form's segments (null: the one-call form). */
    private readonly segmented: Segments | null,
  ) {
    this.defaultThresholds = new ort.Tensor("float32", callThresholds(plan, exits, {}), [exits.length]);
  }

  /** The plan's own thresholds, fed when a call asks for nothing else. */
  private readonly defaultThresholds: ort.Tensor;

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

  /**
   * `form`: "one-call" (one model with an If after each exit) or "segments" (one call per segment,
   * the exit decision in JavaScript); default: the form the plan chose from the profile's
   * measurements of both on its provider (plan.runtime), else one-call.
   */
  static async fromPlan(plan: Plan, modelPath: string, settings: SessionSettings = {}, options: { form?: RuntimeForm } = {}): Promise<EarlyExitSession> {
    const s: SessionSettings = planSettings(plan, settings);
    const exits = runtimeExits(plan);
    // Only the plan's ramps stay in the graph onnxruntime optimises: the other cuts fuse as in the model.
    const model = await runtimeModelOf(plan, modelPath, s);
    // Without exits both forms are the model in one call.
    const form = exits.length === 0 ? "one-call" : options.form ?? plan.runtime?.form ?? "one-call";
    const segmented = form === "segments" ? await openSegments(plan, model, s) : null;
    const { batchTensors, rowRemoval } = exits.length ? batchTensorsAt(model.proto, exits, plan.model.output) : { batchTensors: new Set<string>(), rowRemoval: true };
    const ee = new EarlyExitSession(plan, model, exits, s, rowRemoval, batchTensors, segmented);
    if (segmented) return ee;
    // Ready for the batch the model fixes, else for single requests.
    await ee.session(fixedBatch(inputSpecs(model.proto))?.batch ?? 1);
    return ee;
  }

  /** The session for a batch of n rows (made on first use). */
  private async session(n: number): Promise<RunnableSession> {
    const mode = batchMode(n, this.rowRemoval);
    let s = this.sessions.get(mode);
    if (!s) {
      const proto = buildExitModel(this.model.proto, {
        exits: this.exits, metric: this.plan.settings.metric, classes: this.plan.model.classes, output: this.plan.model.output,
        mode, batchTensors: this.batchTensors, thresholdInput: THRESHOLDS_INPUT, thresholdDefault: false,
      });
      s = await createRunnable(runtimeBytes(proto, this.model.readExternal), partSettings(this.model, this.settings), exitOutputs(mode));
      this.sessions.set(mode, s);
    }
    return s;
  }

  /** Ramp ids of the model's exits, in order (the order of RunOptions.thresholds). */
  get exitRamps(): number[] {
    return this.exits.map((e) => e.ramp);
  }

  /** The thresholds input for a call's options: the plan's, a point's, or the call's own. */
  private thresholdFeed(o: RunOptions): ort.Tensor {
    if (o.point === undefined && o.thresholds === undefined) return this.defaultThresholds;
    const t = callThresholds(this.plan, this.exits, o);
    return new ort.Tensor("float32", t, [t.length]);
  }

  /** Run a batch: each row exits at its first confident active ramp (thresholds: the plan's, or options'). */
  async run(feeds: Record<string, ort.Tensor>, options: RunOptions = {}): Promise<EarlyExitResult> {
    const n = Object.values(feeds)[0]!.dims[0]!;
    if (this.segmented) {
      const thresholds = options.point === undefined && options.thresholds === undefined ? (this.defaultThresholds.data as Float32Array) : callThresholds(this.plan, this.exits, options);
      const t0 = performance.now();
      const r = await runSegments(this.segmented, feeds, thresholds, this.plan.settings.metric, this.plan.model.classes, this.plan.model.output);
      return { ...r, dims: [n, this.plan.model.classes], timings: { totalMs: performance.now() - t0 } };
    }
    const mode = batchMode(n, this.rowRemoval);
    const session = this.sessions.get(mode) ?? (await this.session(n));
    feeds = { ...feeds, [THRESHOLDS_INPUT]: this.thresholdFeed(options) };
    const t0 = performance.now();
    const out = await session.run(feeds, session.outputNames);
    const totalMs = performance.now() - t0;
    const { logits, exits } = readExitOutputs(mode, out, this.plan.model.classes);
    return { logits, dims: [n, this.plan.model.classes], exits, timings: { totalMs } };
  }

  /** Whether the runtime runs onnxruntime's optimised graph (stages/optimize.ts) or the portable one. */
  get optimizedGraph(): boolean {
    return this.model.optimized;
  }

  /** How the plan runs: one call with an If per exit, or one call per segment. */
  get form(): RuntimeForm {
    return this.segmented ? "segments" : "one-call";
  }

  async release(): Promise<void> {
    for (const seg of this.segmented?.segments ?? []) await seg.session.release();
    for (const s of this.sessions.values()) await s.release();
    this.sessions.clear();
  }
}

/** A call's thresholds, one per runtime exit: the plan's own, an operating point's, or the caller's. */
export function callThresholds(plan: Plan, exits: readonly ActiveExit[], o: RunOptions): Float32Array {
  let t: ArrayLike<number>;
  if (o.point !== undefined) {
    const op = plan.points;
    if (!op) throw new EeToolError("USAGE", "this plan has one operating point: make it with `ee-tool plan --points` to switch between points, or feed thresholds");
    const pt = op.points[o.point];
    if (!pt) throw new EeToolError("USAGE", `operating point ${o.point} does not exist (the plan has ${op.points.length})`);
    t = pt.thresholds.map((x) => x ?? Infinity);
  } else t = o.thresholds ?? exits.map((e) => e.threshold);
  if (t.length !== exits.length) throw new EeToolError("USAGE", `thresholds for ${t.length} exits, the model has ${exits.length} (ramps ${exits.map((e) => e.ramp).join(", ")})`);
  return Float32Array.from(t);
}
