import { beforeAll, describe, expect, it } from "vitest";
import * as fs from "node:fs";
import * as path from "node:path";
import * as os from "node:os";
import { CNN, TEXT, ROOT, runCli, tmpDir } from "./helpers/fixtures.js";
import { validate } from "../src/util/schema.js";
import { loadProfile } from "../src/profile/merge.js";
import { EXIT_SESSIONS, REFERENCE_SESSIONS, threadsAt, type Profile } from "../src/profile/profile.js";
import { loadModel, serializeModel } from "../src/onnx/model.js";
import { openCalibration } from "../src/data/calib.js";
import { readRampMetadata, unpackHashes } from "../src/ramps/metadata.js";
import { splitWithTypes, openParts, chainStages, releaseParts } from "../src/stages/runner.js";
import { prefixPart } from "../src/stages/split.js";
import { createSession, runSession } from "../src/ort/ort.js";
import { agreement, argmax, runAll } from "./helpers/run.js";
import { providerStatus } from "../src/ort/providers.js";
import { groupByThreads, oneThreadWins, shouldChooseThreads } from "../src/profile/threads.js";

const FIX = (p: string): string => path.join(ROOT, "fixtures", p);
const schema = JSON.parse(fs.readFileSync(path.join(ROOT, "docs/profile.schema.json"), "utf8")) as Record<string, unknown>;
const work = tmpDir();
const ee = { cnn: path.join(work, "cnn.ee.onnx"), text: path.join(work, "text.ee.onnx") };

beforeAll(() => {
  for (const [name, model] of [["cnn", CNN], ["text", TEXT]] as const) {
    const r = runCli(["insert", model, "--calib", FIX(`${name}/calib.npz`), "-o", ee[name], "-q"]);
    expect(r.code).toBe(0);
  }
}, 120_000);

function profile(model: string, calib: string, out: string, extra: string[] = []): Profile {
  const r = runCli(["profile", model, "--calib", calib, "-o", out, ...extra]);
  expect(r.stderr).not.toMatch(/error/);
  expect(r.code).toBe(0);
  return JSON.parse(fs.readFileSync(out, "utf8")) as Profile;
}

describe("stage models", () => {
  it.each(["cnn", "text"] as const)("%s: chaining the stages gives exactly the original model's outputs", async (name) => {
    const model = loadModel(ee[name]);
    const data = openCalibration(FIX(`${name}/eval.npz`), model.proto);
    const feeds = data.feeds(0, 16);
    const split = await splitWithTypes(model, feeds);
    expect(split.stages.length).toBe(split.meta.ramps.length + 1);
    const parts = await openParts(split.stages, model.readExternal, { optimization: "disabled" });
    const pool = await chainStages(parts, feeds);
    await releaseParts(parts);
    const whole = await createSession(serializeModel(split.original), { optimization: "disabled" });
    const ref = (await runSession(whole, feeds)).logits!.data as Float32Array;
    await whole.release();
    const got = pool.get("logits")!.data as Float32Array;
    const bytes = (t: Float32Array): Buffer => Buffer.from(t.buffer, t.byteOffset, t.byteLength);
    expect(bytes(got).equals(bytes(ref))).toBe(true);
    // Prefix k (stages 0..k in one model) gives exactly what the chained stages hand on at cut k.
    const prefixes = await openParts(split.stages.map((_, k) => prefixPart(split.stages, k)), model.readExternal, { optimization: "disabled" });
    for (const pre of prefixes) {
      expect(pre.part.outputs).toEqual(expect.arrayContaining(split.stages[pre.part.index]!.outputs));
      const out = await runSession(pre.session, Object.fromEntries(pre.part.inputs.map((i) => [i, feeds[i]!])));
      for (const t of pre.part.outputs) {
        const want = pool.get(t)!;
        expect(out[t]!.dims).toEqual(want.dims);
        expect(Array.from(out[t]!.data as ArrayLike<number | bigint>)).toEqual(Array.from(want.data as ArrayLike<number | bigint>));
      }
    }
    await releaseParts(prefixes);
    // Each ramp alone reproduces the augmented model's ramp output.
    const rampParts = await openParts(split.ramps, model.readExternal, { optimization: "disabled" });
    const full = await runAll(serializeModel(model.proto), data, split.meta.ramps.map((r) => r.output), { n: 16, settings: { optimization: "disabled" } });
    for (const rp of rampParts) {
      const feedsR = Object.fromEntries(rp.part.inputs.map((i) => [i, pool.get(i)!]));
      const out = (await runSession(rp.session, feedsR))[rp.part.outputs[0]!]!.data as Float32Array;
      expect(Array.from(out)).toEqual(Array.from(full.get(rp.part.outputs[0]!)!));
    }
    await releaseParts(rampParts);
  });
});

describe("thread choice", () => {
  it("one thread when at least 3% faster; chosen only on the CPU, with cores to spare, when the user set none", () => {
    expect(oneThreadWins(0.96, 1)).toBe(true);
    expect(oneThreadWins(0.98, 1)).toBe(false);
    expect(oneThreadWins(1.2, 1)).toBe(false);
    expect(shouldChooseThreads({}, 2)).toBe(true);
    expect(shouldChooseThreads({ ep: "cpu" }, 16)).toBe(true);
    expect(shouldChooseThreads({ threads: 2 }, 2)).toBe(false);
    expect(shouldChooseThreads({ ep: "webgpu" }, 2)).toBe(false);
    expect(shouldChooseThreads({}, 1)).toBe(false);
  });

  it("batch sizes grouped by their threads, each group timed with its own settings", () => {
    const choice = { batches: { "1": { threads: 1, oneThreadMs: 1, defaultMs: 2 }, "8": { threads: null, oneThreadMs: 3, defaultMs: 2 }, "32": { threads: 1, oneThreadMs: 1, defaultMs: 2 } } };
    expect(groupByThreads([1, 8, 32], choice, { spinning: false })).toEqual([
      { settings: { spinning: false, threads: 1 }, batches: [1, 32] },
      { settings: { spinning: false }, batches: [8] },
    ]);
    // No choice: one group with the user's settings.
    expect(groupByThreads([1, 8], undefined, { threads: 2 })).toEqual([{ settings: { threads: 2 }, batches: [1, 8] }]);
    const env = { environment: { threads: null, threadChoice: choice } } as unknown as Pick<Profile, "environment">;
    expect([1, 8, 32, 64].map((b) => threadsAt(env, b))).toEqual([1, null, 1, null]);
  });
});

describe("ee-tool profile", () => {
  it.each(["cnn", "text"] as const)("%s: latency of stages, ramps and model at batch 1 and 8; per-sample data for every unfitted sample", (name) => {
    const out = path.join(work, `${name}.profile.json`);
    const p = profile(ee[name], FIX(`${name}/calib.npz`), out, ["--batch", "1,8", "--budget", "5000", "--labels", FIX(`${name}/calib_labels.npy`)]);
    expect(validate(p, schema)).toEqual([]);
    expect(p.samples.scored + p.samples.skippedFitted).toBe(4000);
    expect(p.samples.skippedFitted).toBe(1600);
    const { samples } = loadProfile(out);
    const meta = readRampMetadata(loadModel(ee[name]).proto)!;
    const fitted = unpackHashes(meta.calibration.fitHashes);
    const hashes = openCalibration(FIX(`${name}/calib.npz`), loadModel(ee[name]).proto).sampleHashes();
    const expected = hashes.map((h, i) => (fitted.has(h) ? -1 : i)).filter((i) => i >= 0);
    expect(Array.from(samples.index)).toEqual(expected);
    expect(p.summary.finalAccuracy).toBeGreaterThan(name === "cnn" ? 0.88 : 0.65);
    for (const b of ["1", "8"]) {
      const l = p.latency![b]!;
      expect(l.stages.length).toBe(p.ramps.length + 1);
      expect(l.prefixes.length).toBe(l.stages.length);
      // Every item runs once per round: all have the same number of runs (an exit's, over its
      // sessions, which take turns).
      for (const s of [...l.stages, ...l.ramps, ...l.prefixes, l.callOverhead, l.allExits, l.noExit!, ...l.exits!.flatMap((e) => [e.fire, e.fireAfterDeeper!, e.pass, e.adds])]) expect(s.runs).toBe(l.model.runs);
      // The model and the no-exit runtime in three sessions each, the figure the middle one's;
      // each exit in three (the test machine has the memory), the figure over all their runs.
      const middle = (own: number[]): number => [...own].sort((a, c) => a - c)[(own.length - 1) >> 1]!;
      for (const [stat, own] of [[l.model, l.sessions!.model], [l.noExit!, l.sessions!.noExit]] as const) {
        expect(own.length).toBe(REFERENCE_SESSIONS);
        expect(stat.p50).toBe(middle(own));
      }
      expect(l.sessions!.exits!.length).toBe(l.exits!.length);
      l.exits!.forEach((e, i) => {
        const own = l.sessions!.exits![i]!;
        expect(own.length).toBe(EXIT_SESSIONS);
        expect(e.pass.p50).toBeGreaterThanOrEqual(0.99 * Math.min(...own));
        expect(e.pass.p50).toBeLessThanOrEqual(1.01 * Math.max(...own));
      });
      // Both runtime forms timed as they run, the segments form also added up from its parts.
      expect(l.forms!.oneCall).toBe(l.allExits.p50);
      expect(l.forms!.segments).toBeGreaterThan(0);
      expect(l.forms!.segmentsParts).toBeGreaterThan(0);
      // Each exit timed as the runtime runs it alone, one entry per ramp: taking the shallowest
      // exit costs well under the model (loose bound: noisy machines).
      expect(l.exits!.map((e) => e.ramp)).toEqual(p.ramps.map((r) => r.id));
      const shallowest = [...p.ramps].sort((a, c) => a.depth - c.depth)[0]!;
      expect(l.exits!.find((e) => e.ramp === shallowest.id)!.fire.p50).toBeLessThan(0.6 * l.model.p50);
      // A few rounds at least (at batch 8 a round of every item takes a second on a loaded machine).
      expect(l.model.runs).toBeGreaterThanOrEqual(5);
      // Stages in place add up to the last prefix; they and the stages alone stay near the whole
      // model (the figures themselves are reported, see docs/profile.md; loose bounds, noisy machines).
      expect(l.inPlace.reduce((a, s) => a + s.p50, 0)).toBeCloseTo(l.prefixes.at(-1)!.p50, 9);
      console.log(`${name} batch ${b}: stages in place sum ${((l.stageSum.inPlaceRatioP50 - 1) * 100).toFixed(1)}% vs model; alone ${((l.stageSum.ratioP50 - 1) * 100).toFixed(1)}%, net of call overhead ${((l.stageSum.netRatioP50 - 1) * 100).toFixed(1)}%`);
      for (const r of [l.stageSum.inPlaceRatioP50, l.stageSum.netRatioP50]) {
        expect(r).toBeGreaterThan(0.7);
        expect(r).toBeLessThan(1.6);
      }
    }
    expect(p.environment.executionProvider).toBe("cpu");
    // Without --threads (and with more than one core) the model was timed with one thread and with
    // the default at each batch size; one thread where it won there.
    if (os.cpus().length > 1) {
      const tc = Object.entries(p.environment.threadChoice!.batches);
      expect(tc.map(([b]) => b)).toEqual(["1", "8"]);
      for (const [b, t] of tc) {
        expect(t.threads).toBe(oneThreadWins(t.oneThreadMs, t.defaultMs) ? 1 : null);
        expect(threadsAt(p, Number(b))).toBe(t.threads);
      }
      expect(p.environment.threads).toBe(tc[0]![1].threads === tc[1]![1].threads ? tc[0]![1].threads : null);
    }
    expect(p.environment.optimizedGraph).toBe(true);
    // On the CPU provider every ramp's effect on the optimised graph is recorded (empty: none).
    for (const r of p.ramps) expect(r.fusion).toEqual(expect.any(Object));
    expect(p.environment.cpu.length).toBeGreaterThan(0);
  });

  it("scores honestly on the very file given to insert: fitted samples are skipped, agreement matches unseen data", async () => {
    const p = JSON.parse(fs.readFileSync(path.join(work, "text.profile.json"), "utf8")) as Profile;
    const model = loadModel(ee.text);
    const meta = readRampMetadata(model.proto)!;
    const evalData = openCalibration(FIX("text/eval.npz"), model.proto);
    const outs = await runAll(serializeModel(model.proto), evalData, [meta.output, ...meta.ramps.map((r) => r.output)]);
    const final = argmax(outs.get(meta.output)!, meta.classes);
    meta.ramps.forEach((r, i) => {
      const onEval = agreement(argmax(outs.get(r.output)!, meta.classes), final);
      expect(Math.abs(p.summary.ramps[i]!.agreement - onEval)).toBeLessThan(0.04);
    });
  });

  it("shards merge into exactly the unsharded per-sample data; per-sample data is reproducible", () => {
    const dir = tmpDir();
    const whole = path.join(dir, "whole.json");
    profile(ee.cnn, FIX("cnn/calib.npz"), whole, ["--no-latency"]);
    const again = path.join(dir, "again.json");
    profile(ee.cnn, FIX("cnn/calib.npz"), again, ["--no-latency"]);
    expect(fs.readFileSync(path.join(dir, "again.bin")).equals(fs.readFileSync(path.join(dir, "whole.bin")))).toBe(true);
    const shards = [0, 1, 2].map((i) => {
      const f = path.join(dir, `shard${i}.json`);
      const p = profile(ee.cnn, FIX("cnn/calib.npz"), f, ["--no-latency", "--shard", `${i}/3`]);
      expect(p.settings.shard).toEqual({ index: i, count: 3 });
      return f;
    });
    const merged = path.join(dir, "merged.json");
    const r = runCli(["merge", ...shards, "-o", merged]);
    expect(r.code).toBe(0);
    expect(fs.readFileSync(path.join(dir, "merged.bin")).equals(fs.readFileSync(path.join(dir, "whole.bin")))).toBe(true);
    const m = JSON.parse(fs.readFileSync(merged, "utf8")) as Profile;
    expect(validate(m, schema)).toEqual([]);
    expect(m.summary).toEqual((JSON.parse(fs.readFileSync(whole, "utf8")) as Profile).summary);
    // Refused: a shard twice, and shards of another model.
    expect(runCli(["merge", shards[0]!, shards[0]!, "-o", path.join(dir, "x.json")]).stderr).toMatch(/PROFILE_MISMATCH.*given twice/);
    const other = path.join(dir, "other.json");
    profile(ee.text, FIX("text/calib.npz"), other, ["--no-latency", "--shard", "1/3"]);
    expect(runCli(["merge", shards[0]!, other, "-o", path.join(dir, "y.json")]).stderr).toMatch(/PROFILE_MISMATCH.*different models/);
    expect(fs.existsSync(path.join(dir, "x.json")) || fs.existsSync(path.join(dir, "y.json"))).toBe(false);
  });

  it("bad input: a model without ramps, mismatched data, an unwritable output; nothing half-written", async () => {
    const dir = tmpDir();
    let r = runCli(["profile", CNN, "--calib", FIX("cnn/calib.npz"), "-o", path.join(dir, "p.json")]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/^ee-tool: error \[NO_RAMPS\]: .* has no ee-tool ramps\n {2}hint: Run `ee-tool insert/);
    r = runCli(["profile", ee.cnn, "--calib", FIX("text/calib.npz"), "-o", path.join(dir, "p.json")]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/CALIB_MISMATCH/);
    r = runCli(["profile", ee.cnn, "--calib", FIX("cnn/calib.npz"), "--no-latency", "-o", path.join(dir, "missing/dir/p.json")]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/WRITE_FAILED/);
    // A provider ee-tool does not know (nnapi exists only on Android): refused before any work.
    r = runCli(["profile", ee.cnn, "--calib", FIX("cnn/calib.npz"), "--ep", "nnapi", "-o", path.join(dir, "p.json")]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^ee-tool: error \[USAGE\]: --ep takes one of cpu, webgpu, cuda, tensorrt/);
    // One this build lists but cannot load here (no CUDA libraries): onnxruntime's reason, one line.
    const missing = (await providerStatus()).find((x) => !x.available && x.name !== "webgpu");
    if (missing) {
      r = runCli(["profile", ee.cnn, "--calib", FIX("cnn/calib.npz"), "--ep", missing.name, "-o", path.join(dir, "p.json")]);
      expect(r.code).toBe(2);
      expect(r.stderr).toMatch(new RegExp(`^ee-tool: error \\[RUNTIME_FAILED\\]: execution provider '${missing.name}' is not available: .*Failed to load shared library`));
      expect(r.stderr.trim().split("\n").length).toBe(2);
    }
    r = runCli(["profile", ee.cnn, "--calib", FIX("cnn/calib.npz"), "--batch", "0", "-o", path.join(dir, "p.json")]);
    expect(r.code).toBe(1);
    expect(fs.readdirSync(dir)).toEqual([]);
  });
});
