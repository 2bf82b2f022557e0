/**
 * Continual threshold tuning from exit feedback. A monitor holds the last `window` feedback
 * records (requests whose full model's answer is known) and every `checkEvery` records tests the
 * point in use:
 * - drift: on the last `driftWindow` records, "its drop is at most guard x maxDrop" is rejected by
 *   the exact binomial test at level 1 - confidence (guard 0.75 by default: an alarm before the
 *   drop reaches the constraint, since any test lags the drift it detects). Then it moves to the
 *   loosest point stricter than the one in use that those recent records certify (fixed sequence
 *   from the strictest, plan/feedback.ts), or to the whole model when none is (a few hundred
 *   records certify a 1-point drop only when nearly clean).
 * - recovery: only on a full `window` of records that all came after the last switch, the same
 *   certification may move it back towards the plan's own point, never past it.
 * While the point's true drop is at most guard x maxDrop the drift test fires with probability at
 * most 1 - confidence per check, and a false alarm costs speed, not accuracy: the point it moves
 * to is certified on the records.
 */
import type { OperatingPoints } from "../plan/plan.js";
import { certifyOnFeedback, driftPValue, pointLosses, strictToLoose, type Feedback } from "../plan/feedback.js";

export interface MonitorOptions {
  /** Records recovery certifies on (default 2000). */
  window?: number;
  /** The most recent records the drift test looks at (default 400). */
  driftWindow?: number;
  /** Records between two checks (default 250). */
  checkEvery?: number;
  /** Confidence of each test (default 0.99). */
  confidence?: number;
  /** The drift test's level as a share of maxDrop (default 0.75). */
  guard?: number;
}

export interface Switch {
  /** Feedback records seen when it switched. */
  at: number;
  from: number;
  to: number;
  reason: "drift" | "recovered";
  /** The drop of the point left, on the window. */
  windowDrop: number;
}

export class PointMonitor {
  /** The operating point in use (index into points), -1: the whole model. */
  point: number;
  readonly switches: Switch[] = [];
  private readonly ring: Feedback[] = [];
  private seen = 0;
  private sinceSwitch = 0;
  private readonly window: number;
  private readonly driftWindow: number;
  private readonly checkEvery: number;
  private readonly confidence: number;
  private readonly guard: number;
  private readonly rank: Map<number, number>;

  constructor(private readonly op: OperatingPoints, private readonly maxDrop: number, private readonly start = op.default, o: MonitorOptions = {}) {
    this.point = start;
    this.window = o.window ?? 2000;
    this.driftWindow = Math.min(this.window, o.driftWindow ?? 400);
    this.checkEvery = o.checkEvery ?? 250;
    this.confidence = o.confidence ?? 0.99;
    this.guard = o.guard ?? 0.75;
    this.rank = new Map(strictToLoose(op).map((p, r) => [p, r]));
    this.rank.set(-1, -1);
  }

  /** Thresholds of the point in use, one per exit of the points' model (+Infinity: off). */
  thresholds(): number[] {
    return this.point < 0 ? this.op.exits.map(() => Infinity) : this.op.points[this.point]!.thresholds.map((t) => t ?? Infinity);
  }

  add(records: readonly Feedback[]): void {
    for (const r of records) {
      this.ring.push(r);
      if (this.ring.length > this.window) this.ring.shift();
      this.seen++;
      this.sinceSwitch++;
      if (this.seen % this.checkEvery === 0 && this.ring.length >= this.driftWindow) this.check();
    }
  }

  private moveTo(point: number, reason: Switch["reason"], windowDrop: number): void {
    // A point with no exits (one the plan left as the model) is served as the whole model.
    const to = point >= 0 && this.op.points[point]!.thresholds.every((t) => t === null) ? -1 : point;
    if (to === this.point) return;
    this.switches.push({ at: this.seen, from: this.point, to, reason, windowDrop });
    this.point = to;
    this.sinceSwitch = 0;
  }

  private check(): void {
    const delta = 1 - this.confidence;
    if (this.point >= 0) {
      const recent = this.ring.slice(-this.driftWindow);
      const k = pointLosses(recent, this.op.points[this.point]!.thresholds).reduce((a, b) => a + b, 0);
      if (driftPValue(k, recent.length, this.guard * this.maxDrop) < delta) {
        const c = certifyOnFeedback(this.op, recent, this.maxDrop, this.confidence, this.point);
        // Only ever stricter on drift: the loosest point before the current one in the sequence
        // that the recent records certify (the current one may still pass at maxDrop; the alarm
        // says it is drifting towards it), else the whole model.
        const stricter = c.tests.filter((t) => t.passed && this.rank.get(t.point)! < this.rank.get(this.point)!);
        const to = stricter.length ? stricter[stricter.length - 1]!.point : -1;
        this.moveTo(to, "drift", k / recent.length);
        return;
      }
    }
    // Recovery on fresh records only, never past the plan's own point.
    if (this.sinceSwitch >= this.window && this.rank.get(this.point)! < this.rank.get(this.start)!) {
      const c = certifyOnFeedback(this.op, this.ring, this.maxDrop, this.confidence, this.start);
      if (this.rank.get(c.point)! > this.rank.get(this.point)!) {
        const at = this.point >= 0 ? pointLosses(this.ring, this.op.points[this.point]!.thresholds).reduce((a, b) => a + b, 0) / this.ring.length : 0;
        this.moveTo(c.point, "recovered", at);
      }
    }
  }
}
