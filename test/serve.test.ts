import { beforeAll, describe, expect, it } from "vitest";
import * as fs from "node:fs";
import * as path from "node:path";
import { CNN, ROOT, runCli, tmpDir } from "./helpers/fixtures.js";
import { fixedPoint, latencyTable, slackFit, type LatencyTable } from "../src/serve/policy.js";
import { PointMonitor } from "../src/serve/monitor.js";
import { ShadowScorer } from "../src/serve/shadow.js";
import { replay } from "../src/serve/server.js";
import { burstyTrace, meanRate } from "../src/serve/trace.js";
import { certifyOnFeedback, replanFromFeedback, writeTelemetry, type Feedback } from "../src/plan/feedback.js";
import type { OperatingPoints, Plan } from "../src/plan/plan.js";
import { EarlyExitSession } from "../src/runtime/early-exit.js";
import { openCalibration } from "../src/data/calib.js";
import { loadModel } from "../src/onnx/model.js";
import { ort } from "../src/ort/ort.js";
import { argmaxRows } from "../src/util/logits.js";
import { Rng } from "../src/util/rng.js";
import { validate } from "../src/util/schema.js";

const FIX = (p: string): string => path.join(ROOT, "fixtures", p);

describe("dispatch policies", () => {
  // The model (slow), a careful point and a fast one; batches 1, 4, 16.
  const table: LatencyTable = {
    points: [{ name: "model", maxDrop: 0, planPoint: null }, { name: "careful", maxDrop: 0.005, planPoint: 0 }, { name: "fast", maxDrop: 0.02, planPoint: 1 }],
    batches: [1, 4, 16],
    ms: [[1, 3, 10], [0.7, 2, 7], [0.4, 1.2, 4]],
  };
  const queue = (n: number, deadline: number): number[] => new Array<number>(n).fill(deadline);

  it("slack-fit takes the most accurate point that fits the slack, with its largest fitting batch", () => {
    const plain = slackFit({ queue: false });
    expect(plain.decide(0, queue(1, 5), table)).toEqual({ point: 0, batch: 0, take: 1 });
    expect(plain.decide(0, queue(20, 12), table)).toEqual({ point: 0, batch: 2, take: 16 });
    expect(plain.decide(0, queue(20, 3), table)).toEqual({ point: 0, batch: 1, take: 4 });
    expect(plain.decide(0, queue(1, 0.8), table)).toEqual({ point: 1, batch: 0, take: 1 });
    expect(plain.decide(0, queue(1, 0.5), table)).toEqual({ point: 2, batch: 0, take: 1 });
    // Nothing fits: the fastest point at the largest batch the queue fills.
    expect(plain.decide(0, queue(6, 0.1), table)).toEqual({ point: 2, batch: 1, take: 4 });
  });

  it("queue-aware slack-fit leaves the accurate point when the queue behind the first request would be late", () => {
    // 12 requests due at 9 ms: the model serves the first 4 in time (3 ms) but not all 12 (9 + reserve).
    expect(slackFit({ queue: false }).decide(0, queue(12, 9), table).point).toBe(0);
    const d = slackFit({ reserveMs: 0 }).decide(0, queue(12, 9), table);
    expect(d.point).toBe(0);
    expect(d.take).toBe(4);
    expect(slackFit().decide(0, queue(12, 9), table)).toEqual({ point: 1, batch: 1, take: 4 });
    expect(slackFit().decide(0, queue(12, 5), table).point).toBe(2);
  });

  it("a fixed point takes its largest batch within the slack, else the largest to drain the queue", () => {
    expect(fixedPoint(1, "p").decide(0, queue(20, 2.5), table)).toEqual({ point: 1, batch: 1, take: 4 });
    expect(fixedPoint(1, "p").decide(0, queue(20, 0.1), table)).toEqual({ point: 1, batch: 2, take: 16 });
  });

  it("bursty traces have the stated mean rate", () => {
    const o = { requests: 20000, rate: 0.5, burstFactor: 4, burstMs: 200, periodMs: 1000, deadlineMs: 5, samples: 100, seed: 3 };
    const t = burstyTrace(o);
    expect(t.length).toBe(20000);
    const rate = t.length / t.at(-1)!.arrival;
    expect(rate).toBeGreaterThan(meanRate(o) * 0.85);
    expect(rate).toBeLessThan(meanRate(o) * 1.15);
    expect(t.every((r, i) => r.deadline === r.arrival + 5 && (i === 0 || r.arrival >= t[i - 1]!.arrival))).toBe(true);
  });
});

/** Points over one exit: thresholds 0.9 (careful), 0.7 (plan's), 0.5 (loose). */
const OP: OperatingPoints = {
  exits: [{ ramp: 0, output: "ee_exit_0", tensor: "t", stage: 0 }],
  confidence: 0.95, correction: "bonferroni", default: 1,
  points: [0.9, 0.7, 0.5].map((t, i) => ({ maxDrop: [0.005, 0.01, 0.02][i]!, thresholds: [t], exitRateCertify: [0], dropTune: 0, dropCertify: 0, latency: {}, certificate: null })),
};

/** Feedback whose exit is wrong, when confident, with probability wrong(conf). */
function feedback(rng: Rng, n: number, wrong: (conf: number) => number): Feedback[] {
  return Array.from({ length: n }, () => {
    const conf = rng.next();
    return { conf: [conf], pred: [rng.next() < wrong(conf) ? 1 : 0], final: 0 };
  });
}

describe("feedback monitor", () => {
  // Stationary: the plan's point (0.7) loses 0.3% of requests: 1% of those it exits (30%).
  const calm = (c: number): number => (c >= 0.7 ? 0.01 : 0);
  // Drifted: its exits are wrong 10% of the time (3% of requests); the careful point's 0.9 exits 1%.
  const drifted = (c: number): number => (c >= 0.9 ? 0.01 : c >= 0.7 ? 0.15 : 0.3);

  it("does not chase noise on a stationary stream", () => {
    const m = new PointMonitor(OP, 0.01, 1, { window: 2000, checkEvery: 100 });
    m.add(feedback(new Rng(1), 40_000, calm));
    expect(m.switches).toEqual([]);
    expect(m.point).toBe(1);
  });

  it("tightens soon after drift, to a point the recent records certify, and recovers only on fresh records, never past the plan's point", () => {
    const rng = new Rng(2);
    const m = new PointMonitor(OP, 0.01, 1, { window: 2000, driftWindow: 400, checkEvery: 50 });
    m.add(feedback(rng, 3000, calm));
    expect(m.switches).toEqual([]);
    m.add(feedback(rng, 1500, drifted));
    expect(m.switches.length).toBeGreaterThanOrEqual(1);
    const first = m.switches[0]!;
    expect(first.reason).toBe("drift");
    expect(first.at - 3000).toBeLessThan(500);
    expect([-1, 0]).toContain(m.point);
    m.add(feedback(rng, 8000, calm));
    // Back, but not looser than the plan's own point, however clean the records are.
    expect(m.point).toBe(1);
    const back = m.switches.filter((s) => s.reason === "recovered");
    expect(back.length).toBeGreaterThanOrEqual(1);
    for (let i = 1; i < m.switches.length; i++) if (m.switches[i]!.reason === "recovered") expect(m.switches[i]!.at - m.switches[i - 1]!.at).toBeGreaterThanOrEqual(2000);
    expect(m.thresholds()).toEqual([0.7]);
  });

  it("serves a point the plan left with no exits as the whole model", () => {
    // The careful point left as the model (plan --points drops a point with no saving).
    const op: OperatingPoints = { ...OP, points: OP.points.map((p, i) => (i === 0 ? { ...p, thresholds: [null] } : p)) };
    const rng = new Rng(2);
    // A drift window long enough that a point with no losses is certified at 1% (over 459 records).
    const m = new PointMonitor(op, 0.01, 1, { window: 2000, driftWindow: 1000, checkEvery: 50 });
    m.add(feedback(rng, 3000, calm));
    m.add(feedback(rng, 1500, drifted));
    // A point with no exits passes such a log; the monitor goes to the model itself instead.
    expect(m.switches[0]!.reason).toBe("drift");
    expect(m.switches.every((s) => s.to !== 0)).toBe(true);
    expect(m.point).toBe(-1);
    expect(m.thresholds()).toEqual([Infinity]);
  });

  it("certifies along the points strictest first and stops at the first that fails", () => {
    const records = feedback(new Rng(3), 5000, drifted);
    const c = certifyOnFeedback(OP, records, 0.01, 0.95);
    expect(c.tests.map((t) => t.point)).toEqual([0, 1]);
    expect(c.tests.map((t) => t.passed)).toEqual([true, false]);
    expect(c.point).toBe(0);
  });
});

describe("serving a real plan", () => {
  const work = tmpDir();
  const planFile = path.join(work, "plan.json");
  beforeAll(() => {
    const ee = path.join(work, "cnn.ee.onnx");
    expect(runCli(["insert", CNN, "--calib", FIX("cnn/calib.npz"), "--ramp", "linear", "-o", ee, "-q"]).code).toBe(0);
    expect(runCli(["profile", ee, "--calib", FIX("cnn/calib.npz"), "--batch", "1,4", "--budget", "1500", "-o", path.join(work, "p.json"), "-q"]).code).toBe(0);
    expect(runCli(["plan", path.join(work, "p.json"), "--points", "--no-measure", "-o", planFile, "-q"]).code).toBe(0);
  }, 120_000);

  it("replays a trace: each request served once by a real run, SLO and drop from the served answers", async () => {
    const plan = JSON.parse(fs.readFileSync(planFile, "utf8")) as Plan;
    const table = latencyTable(plan);
    expect(table.points[0]!.planPoint).toBeNull();
    expect(table.points.slice(1).map((p) => p.maxDrop)).toEqual([0.0025, 0.005, 0.01, 0.02, 0.04]);
    expect(table.batches).toEqual([1, 4]);
    const ee = await EarlyExitSession.create(planFile);
    const data = openCalibration(FIX("cnn/eval.npz"), loadModel(CNN).proto);
    let calls = 0;
    const exec = {
      run: async (point: number, samples: number[]): Promise<Int32Array> => {
        calls++;
        const p = table.points[point]!.planPoint;
        return argmaxRows((await ee.run(data.feedsFor(samples), p === null ? { thresholds: ee.exitRamps.map(() => Infinity) } : { point: p })).logits, samples.length, 10);
      },
    };
    const trace = burstyTrace({ requests: 300, rate: 0.5, burstFactor: 4, burstMs: 100, periodMs: 500, deadlineMs: 4, samples: data.size, seed: 5 });
    const r = await replay(trace, slackFit(), table, exec);
    await ee.release();
    expect(r.served.map((s) => s.id)).toEqual(trace.map((t) => t.id));
    expect(r.served.every((s) => s.finish > s.arrival)).toBe(true);
    expect(r.sloAttainment).toBeCloseTo(r.served.filter((s) => s.finish <= s.deadline).length / 300, 12);
    expect(r.pointUse.reduce((a, b) => a + b, 0)).toBe(300);
    expect(calls).toBeLessThanOrEqual(300);
    expect(r.p99).toBeGreaterThanOrEqual(r.p50);
  });

  it("replan: clean feedback keeps a point the log certifies; drifted feedback moves to a stricter one or the model", async () => {
    const plan = JSON.parse(fs.readFileSync(planFile, "utf8")) as Plan;
    const shadow = await ShadowScorer.open(plan, path.resolve(work, plan.model.file));
    const data = openCalibration(FIX("cnn/eval.npz"), loadModel(CNN).proto);
    const clean: Feedback[] = [];
    const noisy: Feedback[] = [];
    const rng = new Rng(9);
    for (let s = 0; s < data.size; s += 100) {
      const feeds = data.feeds(s, s + 100);
      clean.push(...(await shadow.score(feeds)));
      const x = Float32Array.from(feeds.image!.data as Float32Array, (v) => v + 40 * rng.normal());
      noisy.push(...(await shadow.score({ image: new ort.Tensor("float32", x, feeds.image!.dims) })));
    }
    await shadow.release();
    const schema = JSON.parse(fs.readFileSync(path.join(ROOT, "docs/plan.schema.json"), "utf8")) as Record<string, unknown>;
    const results: Plan[] = [];
    for (const [name, records] of [["clean", clean], ["noisy", noisy]] as const) {
      const log = path.join(work, `${name}.jsonl`);
      writeTelemetry(log, plan.points!, plan.settings.metric, records);
      const out = path.join(work, `${name}.plan.json`);
      const r = runCli(["replan", planFile, "--telemetry", log, "-o", out]);
      expect(r.code).toBe(0);
      expect(r.stderr).toMatch(/2000 telemetry records; fixed-sequence test/);
      const next = JSON.parse(fs.readFileSync(out, "utf8")) as Plan;
      expect(validate(next, schema)).toEqual([]);
      results.push(next);
      // The re-tuned plan runs.
      const ee = await EarlyExitSession.create(out);
      expect((await ee.run(data.feeds(0, 1))).exits.length).toBe(1);
      await ee.release();
    }
    // Of the points the log certifies, the fastest; the model when none of them saves.
    const b = String(plan.settings.batch);
    const withSavings = (f: (i: number) => number): Plan => ({ ...plan, points: { ...plan.points!, points: plan.points!.points.map((p, i) => ({ ...p, latency: { ...p.latency, [b]: { ...p.latency[b]!, saving: f(i) } } })) } });
    const passed = replanFromFeedback(plan, clean).live!.tests.filter((t) => t.passed).map((t) => t.point);
    expect(passed.length).toBeGreaterThan(1);
    const slowest = withSavings((i) => (i === passed.at(-1) ? -0.05 : 0.1 + 0.01 * i));
    expect(replanFromFeedback(slowest, clean).live!.point).toBe(passed.at(-2));
    const none = replanFromFeedback(withSavings(() => -0.01), clean);
    expect(none.live!.point).toBe(-1);
    expect(none.exits).toEqual([]);
    const [c, n] = results as [Plan, Plan];
    expect(c.live!.point).toBeGreaterThanOrEqual(0);
    expect(c.live!.tests.every((t, i, all) => t.passed || i === all.length - 1)).toBe(true);
    const rank = (p: number): number => (p < 0 ? -1 : plan.points!.points[p]!.maxDrop);
    expect(rank(n.live!.point)).toBeLessThan(rank(c.live!.point));
    expect(n.expected.saving).toBeLessThan(c.expected.saving);
    // A log for other exits is refused in one line.
    const bad = path.join(work, "bad.jsonl");
    fs.writeFileSync(bad, JSON.stringify({ format: "ee-tool.telemetry/1", exits: [99], metric: "maxprob" }) + "\n");
    const r = runCli(["replan", planFile, "--telemetry", bad, "-o", path.join(work, "x.json")]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/^ee-tool: error \[TELEMETRY_INVALID\]: .*logged for exits at ramps \[99\]/);
    expect(fs.existsSync(path.join(work, "x.json"))).toBe(false);
  });
});
