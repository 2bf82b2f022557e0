import { beforeAll, describe, expect, it } from "vitest";
import * as fs from "node:fs";
import * as path from "node:path";
import { TEXT, CNN, ROOT, runCli, tmpDir } from "./helpers/fixtures.js";
import { EarlyExitSession } from "../src/runtime/early-exit.js";
import type { Plan } from "../src/plan/plan.js";
import { loadModel, serializeModel } from "../src/onnx/model.js";
import { openCalibration } from "../src/data/calib.js";
import { createSession, runSession } from "../src/runtime/ort.js";
import { scoreLogits } from "../src/profile/samples.js";
import type { EvalReport } from "../src/eval/eval.js";
import { optimizeForRuntime, partSettings } from "../src/runtime/optimize.js";
import { buildExitModel, exitOutputs, readExitOutputs } from "../src/runtime/exit-graph.js";
import { createRunnable } from "../src/runtime/sync.js";
import { readRampMetadata } from "../src/ramps/metadata.js";
import { declaredTypes, splitModel } from "../src/stages/split.js";

const FIX = (p: string): string => path.join(ROOT, "fixtures", p);
const work = tmpDir();
const f = (name: string, ext: string): string => path.join(work, `${name}.${ext}`);

beforeAll(() => {
  for (const [name, model] of [["cnn", CNN], ["text", TEXT]] as const) {
    expect(runCli(["insert", model, "--calib", FIX(`${name}/calib.npz`), "-o", f(name, "ee.onnx"), "-q"]).code).toBe(0);
    expect(runCli(["profile", f(name, "ee.onnx"), "--calib", FIX(`${name}/calib.npz`), "--batch", "1", "--budget", "2000", "-o", f(name, "profile.json"), "-q"]).code).toBe(0);
    expect(runCli(["plan", f(name, "profile.json"), "-o", f(name, "plan.json"), "-q"]).code).toBe(0);
  }
}, 180_000);

describe("EarlyExitSession", () => {
  it.each(["cnn", "text"] as const)("%s: takes the plan's exits, returns the ramp's or the model's logits; batches give the same rows as single requests", async (name) => {
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
    expect(report.latency.earlyExit.runs).toBe(2000);
    // A plan edited to exit everything at its first ramp breaks the accuracy promise.
    const plan = JSON.parse(fs.readFileSync(f("text", "plan.json"), "utf8")) as Plan;
    const broken = { ...plan, exits: plan.exits.map((e, i) => ({ ...e, threshold: i === 0 ? 0 : e.threshold })) };
    fs.writeFileSync(f("broken", "plan.json"), JSON.stringify(broken));
    const b = runCli(["eval", f("broken", "plan.json"), "--data", FIX("text/eval.npz"), "--assert"]);
    expect(b.code).toBe(3);
    expect(b.stderr).toMatch(/assertion failed: measured accuracy drop .* exceeds the plan's maximum 1\.00%/);
  });
});
