/**
 * Live feedback: requests whose full model's answer is known (a shadow run of the whole augmented
 * model), each with every exit's confidence and prediction. From them, which operating point
 * still keeps the constraint: fixed-sequence testing from the strictest point to the loosest, each
 * tested against maxDrop with the exact binomial bound, stopping at the first that fails; the
 * last that passed is certified on these records at `confidence` (no multiplicity correction is
 * needed for a fixed sequence). A telemetry log is these records as JSON lines.
 */
import * as fs from "node:fs";
import type { OperatingPoints, Plan } from "./plan.js";
import { binomialCdf, binomialUpperBound } from "./certify.js";
import { EeToolError } from "../errors.js";
import { writeBytesAtomic } from "../util/atomic.js";
import type { Metric } from "./problem.js";
import { scoreLogits, confidenceOf } from "../util/logits.js";

export const TELEMETRY_FORMAT = "ee-tool.telemetry/1";

/** One request with its full model's answer: per exit of OperatingPoints.exits, confidence and prediction. */
export interface Feedback {
  conf: number[];
  pred: number[];
  final: number;
}

/** Feedback for each row from every exit's logits [n, k] (in exit order) and the model's own. */
export function feedbackFromLogits(exitLogits: readonly Float32Array[], final: Float32Array, k: number, metric: Metric): Feedback[] {
  return Array.from({ length: final.length / k }, (_, row) => {
    const scores = exitLogits.map((l) => scoreLogits(l, k, row));
    return { conf: scores.map((s) => confidenceOf(s, metric)), pred: scores.map((s) => s.pred), final: scoreLogits(final, k, row).pred };
  });
}

/** 1 where the first exit confident under `thresholds` predicts other than the full model. */
export function pointLosses(records: readonly Feedback[], thresholds: ReadonlyArray<number | null>): Int8Array {
  const out = new Int8Array(records.length);
  records.forEach((r, s) => {
    for (let j = 0; j < thresholds.length; j++) {
      const t = thresholds[j];
      if (t !== null && t !== undefined && r.conf[j]! >= t) {
        out[s] = r.pred[j] === r.final ? 0 : 1;
        return;
      }
    }
  });
  return out;
}

export interface LiveTest {
  point: number;
  losses: number;
  n: number;
  /** Upper bound on the point's drop at the confidence (exact binomial). */
  bound: number;
  passed: boolean;
}

/** Operating points from the strictest to the loosest (by their drop level). */
export function strictToLoose(op: OperatingPoints): number[] {
  return op.points.map((p, i) => ({ p, i })).sort((a, b) => a.p.maxDrop - b.p.maxDrop).map((x) => x.i);
}

/**
 * The loosest point, along the fixed sequence strictest to loosest (at most `upTo` in that order),
 * whose drop on the records is certified <= maxDrop at `confidence`; -1 when none is (serve the
 * whole model).
 */
export function certifyOnFeedback(op: OperatingPoints, records: readonly Feedback[], maxDrop: number, confidence: number, upTo?: number): { point: number; tests: LiveTest[] } {
  const delta = 1 - confidence;
  const tests: LiveTest[] = [];
  let point = -1;
  for (const i of strictToLoose(op)) {
    const losses = pointLosses(records, op.points[i]!.thresholds).reduce((a, b) => a + b, 0);
    const bound = binomialUpperBound(losses, records.length, delta);
    const passed = bound <= maxDrop;
    tests.push({ point: i, losses, n: records.length, bound, passed });
    if (!passed) break;
    point = i;
    if (i === upTo) break;
  }
  return { point, tests };
}

/** p-value of "the point's drop is at most maxDrop" given these losses: small means it drifted above. */
export function driftPValue(losses: number, n: number, maxDrop: number): number {
  return losses === 0 ? 1 : 1 - binomialCdf(losses - 1, n, maxDrop);
}

export function writeTelemetry(file: string, op: OperatingPoints, metric: string, records: readonly Feedback[]): void {
  const head = JSON.stringify({ format: TELEMETRY_FORMAT, exits: op.exits.map((e) => e.ramp), metric });
  writeBytesAtomic(file, [head, ...records.map((r) => JSON.stringify(r))].join("\n") + "\n");
}

export function readTelemetry(file: string, op: OperatingPoints, metric: string): Feedback[] {
  if (!fs.existsSync(file)) throw new EeToolError("FILE_NOT_FOUND", `telemetry log not found: ${file}`);
  const lines = fs.readFileSync(file, "utf8").split("\n").filter((l) => l.trim());
  const bad = (why: string): EeToolError => new EeToolError("TELEMETRY_INVALID", `${file}: ${why}`);
  let head: { format?: string; exits?: number[]; metric?: string };
  try {
    head = JSON.parse(lines[0] ?? "") as typeof head;
  } catch {
    throw bad("the first line is not the telemetry header");
  }
  if (head.format !== TELEMETRY_FORMAT) throw bad(`not an ee-tool telemetry log (format ${JSON.stringify(head.format)})`);
  const want = op.exits.map((e) => e.ramp);
  if (JSON.stringify(head.exits) !== JSON.stringify(want)) throw bad(`logged for exits at ramps ${JSON.stringify(head.exits)}, the plan's points use ${JSON.stringify(want)}`);
  if (head.metric !== metric) throw bad(`logged confidences are ${head.metric}, the plan's metric is ${metric}`);
  return lines.slice(1).map((l, i) => {
    let r: Feedback;
    try {
      r = JSON.parse(l) as Feedback;
    } catch {
      throw bad(`line ${i + 2} is not JSON`);
    }
    if (!Array.isArray(r.conf) || !Array.isArray(r.pred) || r.conf.length !== want.length || r.pred.length !== want.length || !Number.isInteger(r.final)) {
      throw bad(`line ${i + 2} is not a record of ${want.length} exits ({"conf": [...], "pred": [...], "final": k})`);
    }
    return r;
  });
}

/**
 * The plan re-tuned on logged feedback: its default point becomes the fastest one certified on the
 * records at the plan's maxDrop and confidence (never one looser than the records support; the
 * model unchanged when no certified point is faster than it), and the plan's exits and thresholds
 * follow it. The record of the test goes into `live`.
 */
export interface LiveRecord {
  records: number;
  confidence: number;
  tests: LiveTest[];
  /** The default point before, and the one certified on the records (-1: none, the model unchanged). */
  previous: number;
  point: number;
}

export function replanFromFeedback(plan: Plan, records: readonly Feedback[], options: { confidence?: number } = {}): Plan {
  const op = plan.points;
  if (!op) throw new EeToolError("USAGE", "replan needs a plan with operating points (ee-tool plan --points)");
  const confidence = options.confidence ?? plan.settings.confidence;
  const need = Math.ceil(Math.log(1 - confidence) / Math.log(1 - plan.settings.maxDrop));
  if (records.length < need) {
    throw new EeToolError("TOO_FEW_SAMPLES", `${records.length} telemetry records cannot certify a drop of at most ${plan.settings.maxDrop} at confidence ${confidence}; at least ${need} are needed even with no disagreement`, {
      hint: "Log more requests that ran the whole model (a larger shadow share, or a longer window).",
    });
  }
  const { tests } = certifyOnFeedback(op, records, plan.settings.maxDrop, confidence);
  // Every point that passed is certified (a fixed sequence); of those, the fastest at the plan's
  // batch (in practice the loosest), and the model itself when none of them is faster than it.
  const savingOf = (i: number): number => (op.points[i]!.latency[String(plan.settings.batch)] ?? plan.expected).saving;
  const point = tests.filter((t) => t.passed).reduce((best, t) => (savingOf(t.point) > (best < 0 ? 0 : savingOf(best)) ? t.point : best), -1);
  const live = { records: records.length, confidence, tests, previous: op.default, point };
  if (point < 0) {
    // Not even the strictest point holds: the plan becomes the model unchanged.
    const { points: _dropped, ...rest } = plan;
    void _dropped;
    const b = plan.baselineMs;
    return { ...rest, exits: [], expected: { meanLatencyMs: b, medianLatencyMs: b, saving: 0, savingMedian: 0, dropTune: 0, dropCertify: 0 }, live };
  }
  const pt = op.points[point]!;
  const exits = op.exits.flatMap((e, j) => (pt.thresholds[j] === null ? [] : [{ ramp: e.ramp, output: e.output, tensor: e.tensor, stage: e.stage, threshold: pt.thresholds[j]!, exitRateTune: 0, exitRateCertify: pt.exitRateCertify[j]! }]));
  const latency = pt.latency[String(plan.settings.batch)] ?? plan.expected;
  return {
    ...plan,
    exits,
    points: { ...op, default: point },
    expected: { meanLatencyMs: latency.meanLatencyMs, medianLatencyMs: latency.medianLatencyMs, saving: latency.saving, savingMedian: latency.savingMedian, dropTune: pt.dropTune, dropCertify: pt.dropCertify },
    live,
  };
}
