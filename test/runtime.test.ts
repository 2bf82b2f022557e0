import { beforeAll, describe, expect, it } from "vitest";
import * as fs from "node:fs";
import * as path from "node:path";
import { TEXT, CNN, VIT, ROOT, runCli, tmpDir } from "./helpers/fixtures.js";
import { EarlyExitSession } from "../src/runtime/early-exit.js";
import { ReleaseEarlySession } from "../src/runtime/release.js";
import type { Plan } from "../src/plan/plan.js";
import { loadModel, serializeModel } from "../src/onnx/model.js";
import { tensorToArray } from "../src/onnx/tensor.js";
import { openCalibration } from "../src/data/calib.js";
import { createSession, ort, runSession } from "../src/ort/ort.js";
import { EVAL_SESSIONS, type EvalReport } from "../src/eval/eval.js";
import { sessionsThatFit } from "../src/ort/ort.js";
import { optimizeForRuntime, partSettings } from "../src/stages/optimize.js";
import { buildExitModel, exitOutputs, readExitOutputs } from "../src/stages/exit-graph.js";
import { createRunnable } from "../src/ort/sync.js";
import { readRampMetadata } from "../src/ramps/metadata.js";
import { declaredTypes, splitModel } from "../src/stages/split.js";
import { scoreLogits } from "../src/util/logits.js";

const FIX = (p: string): string => path.join(ROOT, "fixtures", p);
const work = tmpDir();
const f = (name: string, ext: string): string => path.join(work, `${name}.${ext}`);

beforeAll(() => {
  for (const [name, model] of [["cnn", CNN], ["text", TEXT], ["vit", VIT]] as const) {
    expect(runCli(["insert", model, "--calib", FIX(`${name}/calib.npz`), "-o", f(name, "ee.onnx"), "-q"]).code).toBe(0);
    expect(runCli(["profile", f(name, "ee.onnx"), "--calib", FIX(`${name}/calib.npz`), "--batch", "1", "--budget", "2000", "-o", f(name, "profile.json"), "-q"]).code).toBe(0);
    expect(runCli(["plan", f(name, "profile.json"), "--no-measure", "-o", f(name, "plan.json"), "-q"]).code).toBe(0);
  }
  // Operating points, and their portable single model (single.onnx beside the plan).
  expect(runCli(["plan", f("cnn", "profile.json"), "--points", "--emit", "single", "--no-measure", "-o", f("cnn", "points.plan.json"), "-q"]).code).toBe(0);
}, 180_000);

describe("EarlyExitSession", () => {
  it.each(["cnn", "text", "vit"] as const)("%s: takes the plan's exits, returns the ramp's or the model's logits; batches give the same rows as single requests", async (name) => {
    const plan = JSON.parse(fs.readFileSync(f(name, "plan.json"), "utf8")) as Plan;
    const ee = await EarlyExitSession.create(f(name, "plan.json"));
    const model = loadModel(f(name, "ee.onnx"));
    const data = openCalibration(FIX(`${name}/eval.npz`), model.proto);
    const full = await createSession(serializeModel(model.proto));
    const exits = [...plan.exits].sort((a, b) => a.stage - b.stage);
    const k = plan.model.classes;
    const n = 48;
    const single: Int32Array = new Int32Array(n);
    const singleLogits = new Float32Array(n * k);
    for (let i = 0; i < n; i++) {
      const feeds = data.feeds(i, i + 1);
      const r = await ee.run(feeds);
      const out = await runSession(full, feeds);
      const hit = exits.find((e) => scoreLogits(out[e.output]!.data as Float32Array, k, 0).maxprob >= e.threshold);
      expect(r.exits[0]).toBe(hit ? hit.ramp : -1);
      const want = out[hit ? hit.output : plan.model.output]!.data as Float32Array;
      for (let j = 0; j < k; j++) expect(r.logits[j]!).toBeCloseTo(want[j]!, 4);
      expect(r.timings.totalMs).toBeGreaterThan(0);
      single[i] = r.exits[0]!;
      singleLogits.set(r.logits, i * k);
    }
    await full.release();
    expect(new Set(single).size).toBeGreaterThan(1);
    // A batch of 16: rows leave as they exit, results equal the one-at-a-time ones.
    for (let s = 0; s < n; s += 16) {
      const r = await ee.run(data.feeds(s, s + 16));
      expect(Array.from(r.exits)).toEqual(Array.from(single.subarray(s, s + 16)));
      for (let j = 0; j < 16 * k; j++) expect(r.logits[j]!).toBeCloseTo(singleLogits[s * k + j]!, 4);
    }
    expect(ee.rowRemoval).toBe(true);
    expect(ee.optimizedGraph).toBe(true);
    await ee.release();

    // The portable graph (other providers, or EE_TOOL_NO_PREOPTIMIZE=1) takes the same exits.
    process.env.EE_TOOL_NO_PREOPTIMIZE = "1";
    try {
      const portable = await EarlyExitSession.create(f(name, "plan.json"));
      expect(portable.optimizedGraph).toBe(false);
      for (let i = 0; i < 16; i++) expect((await portable.run(data.feeds(i, i + 1))).exits[0]).toBe(single[i]);
      expect(Array.from((await portable.run(data.feeds(0, 16))).exits)).toEqual(Array.from(single.subarray(0, 16)));
      await portable.release();
    } finally {
      delete process.env.EE_TOOL_NO_PREOPTIMIZE;
    }

    // The batch-together form (used when rows cannot leave): every row still gets its first confident exit.
    const rt = await optimizeForRuntime(model);
    expect(rt.optimized).toBe(true);
    const where = buildExitModel(rt.proto, { exits, metric: plan.settings.metric, classes: k, output: plan.model.output, mode: "where" });
    const s = await createRunnable(serializeModel(where), partSettings(rt, {}), exitOutputs("where"));
    for (let b = 0; b < n; b += 16) {
      const got = readExitOutputs("where", await s.run(data.feeds(b, b + 16), s.outputNames), k);
      expect(Array.from(got.exits)).toEqual(Array.from(single.subarray(b, b + 16)));
      for (let j = 0; j < 16 * k; j++) expect(got.logits[j]!).toBeCloseTo(singleLogits[b * k + j]!, 4);
    }
    await s.release();
  });

  it("operating points: one session and the emitted single model switch thresholds per request through ee_thresholds", async () => {
    const planFile = f("cnn", "points.plan.json");
    const plan = JSON.parse(fs.readFileSync(planFile, "utf8")) as Plan;
    const op = plan.points!;
    expect(op.points.length).toBe(5);
    const ee = await EarlyExitSession.create(planFile);
    expect(ee.exitRamps).toEqual(op.exits.map((e) => e.ramp));
    const model = loadModel(f("cnn", "ee.onnx"));
    const data = openCalibration(FIX("cnn/eval.npz"), model.proto);
    const full = await createSession(serializeModel(model.proto));
    const single = await createSession(fs.readFileSync(path.join(work, "single.onnx")));
    // A graph input with an initializer of the same name holding the plan's point: optional, fed
    // to switch (an overridable initializer: Python's onnxruntime feeds it, onnxruntime-node and
    // -web cannot, docs/plan.md). The same graph with the input required runs each point in node.
    const singleProto = loadModel(path.join(work, "single.onnx")).proto;
    expect(singleProto.graph!.input!.map((i) => i.name)).toContain("ee_thresholds");
    const init = singleProto.graph!.initializer!.find((i) => i.name === "ee_thresholds")!;
    expect(Array.from(tensorToArray(init) as Float32Array)).toEqual(op.points[op.default]!.thresholds.map((t) => (t === null ? Infinity : Math.fround(t))));
    singleProto.graph!.initializer = singleProto.graph!.initializer!.filter((i) => i !== init);
    const required = await createSession(serializeModel(singleProto));
    const k = plan.model.classes;
    const n = 24;
    const expectedExit = (out: Record<string, { data: unknown }>, thresholds: Array<number | null>): number => {
      const i = op.exits.findIndex((e, j) => thresholds[j] !== null && scoreLogits(out[e.output]!.data as Float32Array, k, 0).maxprob >= thresholds[j]!);
      return i < 0 ? -1 : op.exits[i]!.ramp;
    };
    const taken = new Set<string>();
    for (let i = 0; i < n; i++) {
      const feeds = data.feeds(i, i + 1);
      const out = await runSession(full, feeds);
      // No feed: the plan's own point.
      expect((await ee.run(feeds)).exits[0]).toBe(expectedExit(out, op.points[op.default]!.thresholds));
      for (let p = 0; p < op.points.length; p++) {
        const want = expectedExit(out, op.points[p]!.thresholds);
        expect((await ee.run(feeds, { point: p })).exits[0]).toBe(want);
        const t = Float32Array.from(op.points[p]!.thresholds, (x) => x ?? Infinity);
        expect((await ee.run(feeds, { thresholds: t })).exits[0]).toBe(want);
        const got = await runSession(required, { ...feeds, ee_thresholds: new ort.Tensor("float32", t, [t.length]) });
        expect(Number((got.ee_exit!.data as BigInt64Array)[0])).toBe(want);
        taken.add(`${p}:${want}`);
      }
      // Without the input fed, the portable model takes the plan's point too.
      const dflt = await runSession(single, feeds);
      expect(Number((dflt.ee_exit!.data as BigInt64Array)[0])).toBe(expectedExit(out, op.points[op.default]!.thresholds));
    }
    // The points really differ in what they do.
    expect(new Set([...taken].map((x) => x.split(":")[0] + (x.endsWith(":-1") ? "none" : "exit"))).size).toBeGreaterThan(2);
    // A batch switches as a whole: rows give the same exits as one at a time.
    const loose = op.points.length - 1;
    const batch = await ee.run(data.feeds(0, 8), { point: loose });
    for (let i = 0; i < 8; i++) expect(batch.exits[i]).toBe((await ee.run(data.feeds(i, i + 1), { point: loose })).exits[0]);
    await expect(ee.run(data.feeds(0, 1), { point: 9 })).rejects.toThrow(/operating point 9 does not exist/);
    await expect(ee.run(data.feeds(0, 1), { thresholds: [0.5] })).rejects.toThrow(/thresholds for 1 exits, the model has/);
    await full.release();
    await single.release();
    await required.release();
    await ee.release();
  });

  it("release-early mode: the batch runs to the end, rows are released at their exit, every row gives feedback", async () => {
    const planFile = f("cnn", "points.plan.json");
    const plan = JSON.parse(fs.readFileSync(planFile, "utf8")) as Plan;
    const rel = await ReleaseEarlySession.fromPlan(plan, f("cnn", "ee.onnx"));
    const ee = await EarlyExitSession.create(planFile);
    expect(rel.exitRamps).toEqual(ee.exitRamps);
    const model = loadModel(f("cnn", "ee.onnx"));
    const data = openCalibration(FIX("cnn/eval.npz"), model.proto);
    const full = await createSession(serializeModel(model.proto));
    const depth = new Map(rel.exitRamps.map((r, i) => [r, i]));
    for (const point of [plan.points!.default, plan.points!.points.length - 1]) {
      const feeds = data.feeds(0, 16);
      const a = await rel.run(feeds, { point });
      const b = await ee.run(feeds, { point });
      // The same exits and logits as the one-call runtime.
      expect(Array.from(a.exits)).toEqual(Array.from(b.exits));
      for (let j = 0; j < a.logits.length; j++) expect(a.logits[j]!).toBeCloseTo(b.logits[j]!, 4);
      // Every row has the full model's answer and each exit's confidence.
      const want = (await runSession(full, feeds))[plan.model.output]!.data as Float32Array;
      a.feedback.forEach((fb, row) => {
        expect(fb.final).toBe(scoreLogits(want, 10, row).pred);
        expect(fb.conf.length).toBe(rel.exitRamps.length);
      });
      // Released no later than the call ends, shallower exits no later than deeper ones.
      const order = Array.from(a.exits, (e, row) => ({ d: e < 0 ? Infinity : depth.get(e)!, t: a.releaseMs[row]! })).sort((x, y) => x.d - y.d);
      for (let i = 1; i < order.length; i++) expect(order[i]!.t).toBeGreaterThanOrEqual(order[i - 1]!.t);
      expect(Math.max(...a.releaseMs)).toBeLessThanOrEqual(a.totalMs);
      if (a.exits.some((e) => e === rel.exitRamps[0])) expect(Math.min(...a.releaseMs)).toBeLessThan(a.totalMs);
    }
    await full.release();
    await rel.release();
    await ee.release();
  });

  it("with no active exits every form returns the model's logits and exit -1", async () => {
    const model = loadModel(f("cnn", "ee.onnx"));
    const rt = await optimizeForRuntime(model);
    const meta = readRampMetadata(model.proto)!;
    const data = openCalibration(FIX("cnn/eval.npz"), model.proto);
    const full = await createSession(serializeModel(model.proto));
    for (const [mode, n] of [["single", 1], ["gather", 4], ["where", 4]] as const) {
      const proto = buildExitModel(rt.proto, { exits: [], metric: "maxprob", classes: 10, output: meta.output, mode });
      const s = await createRunnable(serializeModel(proto), partSettings(rt, {}), exitOutputs(mode));
      const feeds = data.feeds(0, n);
      const got = readExitOutputs(mode, await s.run(feeds, s.outputNames), 10);
      expect(Array.from(got.exits)).toEqual(new Array(n).fill(-1));
      const want = (await runSession(full, feeds))[meta.output]!.data as Float32Array;
      for (let j = 0; j < n * 10; j++) expect(got.logits[j]!).toBeCloseTo(want[j]!, 4);
      await s.release();
    }
    await full.release();
  });

  it("optimises the augmented model as onnxruntime would and finds every exit in it again", async () => {
    for (const name of ["cnn", "text"] as const) {
      const model = loadModel(f(name, "ee.onnx"));
      const rt = await optimizeForRuntime(model);
      expect(rt.optimized).toBe(true);
      expect(rt.meta.ramps.map((r) => r.output)).toEqual(readRampMetadata(model.proto)!.ramps.map((r) => r.output));
      // Chaining the optimised stages gives the model's output.
      const split = splitModel(rt.proto, declaredTypes(rt.proto));
      const data = openCalibration(FIX(`${name}/eval.npz`), model.proto);
      const feeds = data.feeds(0, 4);
      const pool = new Map(Object.entries(feeds));
      for (const st of split.stages) {
        const sess = await createRunnable(serializeModel(st.proto), partSettings(rt, {}), st.outputs);
        const out = await sess.run(Object.fromEntries(st.inputs.map((i) => [i, pool.get(i)!])), st.outputs);
        for (const [key, v] of Object.entries(out)) pool.set(key, v);
        await sess.release();
      }
      const full = await createSession(serializeModel(model.proto));
      const want = (await runSession(full, feeds))[readRampMetadata(model.proto)!.output]!.data as Float32Array;
      const got = pool.get(readRampMetadata(model.proto)!.output)!.data as Float32Array;
      for (let j = 0; j < want.length; j++) expect(got[j]!).toBeCloseTo(want[j]!, 4);
      await full.release();
    }
    // The cnn's exit tensors are rewritten into onnxruntime's blocked layout: names change.
    const cnn = await optimizeForRuntime(loadModel(f("cnn", "ee.onnx")));
    expect(cnn.meta.ramps.some((r) => !r.tensor.startsWith("/"))).toBe(true);
  });

  it("the segments form (one call per segment, rows leave at their exit) gives the one-call form's rows", async () => {
    for (const name of ["cnn", "text"] as const) {
      const plan = JSON.parse(fs.readFileSync(f(name, "plan.json"), "utf8")) as Plan;
      const model = loadModel(f(name, "ee.onnx"));
      const data = openCalibration(FIX(`${name}/eval.npz`), model.proto);
      const one = await EarlyExitSession.fromPlan(plan, f(name, "ee.onnx"));
      const seg = await EarlyExitSession.fromPlan(plan, f(name, "ee.onnx"), {}, { form: "segments" });
      expect([one.form, seg.form]).toEqual(["one-call", "segments"]);
      for (const [s, n] of [[0, 1], [1, 1], [2, 1], [3, 1], [0, 32], [32, 32]] as const) {
        const a = await one.run(data.feeds(s, s + n));
        const b = await seg.run(data.feeds(s, s + n));
        expect(Array.from(b.exits)).toEqual(Array.from(a.exits));
        for (let j = 0; j < a.logits.length; j++) expect(b.logits[j]!).toBeCloseTo(a.logits[j]!, 4);
      }
      expect(new Set((await seg.run(data.feeds(0, 32))).exits).size).toBeGreaterThan(1);
      await one.release();
      await seg.release();
    }
  });

  it("eval --throughput: latency per row and rows per second of the model, the runtime and release-early", () => {
    const r = runCli(["eval", f("cnn", "plan.json"), "--data", FIX("cnn/eval.npz"), "--throughput", "1,16", "--json", "-q"]);
    expect(r.code).toBe(0);
    const t = (JSON.parse(r.stdout) as EvalReport).throughput!;
    expect(t.map((x) => x.batch)).toEqual([1, 16]);
    for (const x of t) {
      expect(x.calls).toBe(Math.floor(2000 / x.batch));
      for (const m of [x.model, x.earlyExit, x.releaseEarly!]) {
        expect(m.rowsPerSecond).toBeGreaterThan(0);
        expect(m.rowLatencyMs).toBeGreaterThan(0);
      }
    }
    // A row waits for its whole call in the model; released early, rows that exit answer sooner
    // than the call ends (loose: noisy machines).
    expect(t[1]!.releaseEarly!.rowLatencyMs).toBeLessThan(t[1]!.model.rowLatencyMs * 1.5);
    const bad = runCli(["eval", f("cnn", "plan.json"), "--data", FIX("cnn/eval.npz"), "--throughput", "0,x"]);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/--throughput takes positive batch sizes separated by commas, got '0,x'/);
    // A bad --sessions fails before anything is read.
    const none = runCli(["eval", "missing.plan.json", "--data", FIX("cnn/eval.npz"), "--sessions", "0"]);
    expect(none.code).toBe(1);
    expect(none.stderr).toMatch(/^ee-tool: error \[USAGE\]: --sessions must be a positive integer, got '0'/);
  });

  it("refuses a plan whose model file changed", async () => {
    const dir = tmpDir();
    fs.copyFileSync(f("cnn", "plan.json"), path.join(dir, "plan.json"));
    const plan = JSON.parse(fs.readFileSync(f("cnn", "plan.json"), "utf8")) as Plan;
    const bytes = fs.readFileSync(f("cnn", "ee.onnx"));
    bytes[100] = bytes[100]! ^ 0xff;
    fs.writeFileSync(path.join(dir, plan.model.file), bytes);
    await expect(EarlyExitSession.create(path.join(dir, "plan.json"))).rejects.toThrow(/has changed since it was profiled/);
    const r = runCli(["eval", path.join(dir, "plan.json"), "--data", FIX("cnn/eval.npz")]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/^ee-tool: error \[MODEL_CHANGED\]/);
  });
});

describe("ee-tool eval", () => {
  it("opens as many sessions as fit in half the free memory, at least one", () => {
    const mb = 1 << 20;
    // eval: two sessions per pair, each about twice the model: a pair of a 1.3 GB model holds 5.2 GB.
    const pair = (model: number): number => 4 * model;
    expect(sessionsThatFit(3, pair(45 * mb), 16_000 * mb)).toBe(3);
    expect(sessionsThatFit(3, pair(1300 * mb), 24_000 * mb)).toBe(2);
    expect(sessionsThatFit(3, pair(4000 * mb), 8_000 * mb)).toBe(1);
    expect(sessionsThatFit(1, pair(45 * mb), 16_000 * mb)).toBe(1);
  });

  it("measures drop, exits and latency beside the plan's predictions; --assert fails with exit 3 and says why", () => {
    const r = runCli(["eval", f("text", "plan.json"), "--data", FIX("text/eval.npz"), "--labels", FIX("text/eval_labels.npy"), "--json"]);
    expect(r.code).toBe(0);
    const report = JSON.parse(r.stdout) as EvalReport;
    expect(report.samples).toBe(2000);
    expect(report.accuracy.dropVsModel).toBeLessThan(0.02);
    expect(report.accuracy.modelAccuracy).toBeGreaterThan(0.65);
    const rates = report.exits.reduce((a, e) => a + e.measured, 0);
    expect(rates).toBeCloseTo(1, 6);
    for (const e of report.exits) expect(Math.abs(e.measured - e.predicted)).toBeLessThan(0.05);
    expect(report.latency.model.runs).toBe(2000);
    // Blocks of calls take turns in three sessions of each (the fixture fits many times over).
    expect(report.runtime.sessions).toBe(EVAL_SESSIONS);
    // Every session pair took its turn: each has calls of its own, near the others'.
    const bySession = report.latency.sessions;
    expect(bySession.model.length).toBe(EVAL_SESSIONS);
    for (const p50 of bySession.model) expect(p50 / Math.min(...bySession.model)).toBeLessThan(1.5);
    expect(bySession.saving.length).toBe(EVAL_SESSIONS);
    for (const s of bySession.saving) expect(Math.abs(s - report.latency.saving)).toBeLessThan(0.15);
    expect(report.latency.earlyExit.runs).toBe(2000);
    // At batch 1 every exit path has its measured median beside the plan's prediction.
    for (const e of report.exits.filter((x) => x.measured > 0)) {
      expect(e.path!.measured).toBeGreaterThan(0);
      expect(e.path!.predicted).toBeGreaterThan(0);
    }
    expect(report.runtime).toMatchObject({ ep: "cpu", planEp: "cpu", form: "one-call" });
    expect(report.throughput).toBeNull();
    // A plan edited to exit everything at its first ramp breaks the accuracy promise.
    const plan = JSON.parse(fs.readFileSync(f("text", "plan.json"), "utf8")) as Plan;
    const broken = { ...plan, exits: plan.exits.map((e, i) => ({ ...e, threshold: i === 0 ? 0 : e.threshold })) };
    fs.writeFileSync(f("broken", "plan.json"), JSON.stringify(broken));
    const b = runCli(["eval", f("broken", "plan.json"), "--data", FIX("text/eval.npz"), "--assert"]);
    expect(b.code).toBe(3);
    expect(b.stderr).toMatch(/assertion failed: measured accuracy drop .* exceeds the plan's maximum 1\.00%/);
  });
});
