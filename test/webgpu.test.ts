/**
 * The GPU code paths without a GPU: onnxruntime-node's bundled WebGPU provider on SwiftShader, a
 * software Vulkan device (Debian's chromium ships it; .ci/run installs it). Exact and slow (about
 * 0.2 s a call at batch 1 here), so a few samples only, and no timing is asserted: insert, profile,
 * plan and eval with --ep webgpu give what the CPU provider gives, and record the provider.
 */
import { beforeAll, describe, expect, it } from "vitest";
import * as fs from "node:fs";
import * as path from "node:path";
import { CNN, GPT_DIR, ROOT, runCli, tmpDir } from "./helpers/fixtures.js";
import { openTokens } from "../src/data/tokens.js";
import { findDecoderLayout } from "../src/analysis/decoder.js";
import { insertDecoderHeads } from "../src/ramps/decoder-heads.js";
import { EarlyExitGenerator, type GeneratedToken } from "../src/runtime/generator.js";
import { loadModel } from "../src/onnx/model.js";
import { openCalibration } from "../src/data/calib.js";
import { encodeNpy } from "../src/data/npy.js";
import { readRampMetadata } from "../src/ramps/metadata.js";
import { loadProfile } from "../src/profile/merge.js";
import type { Profile } from "../src/profile/profile.js";
import type { Plan } from "../src/plan/plan.js";
import type { EvalReport } from "../src/eval/eval.js";

const ICD = process.env.EE_TOOL_VK_ICD ?? "/usr/lib/chromium/vk_swiftshader_icd.json";
const work = tmpDir();
const env = { ...process.env, VK_ICD_FILENAMES: ICD, XDG_RUNTIME_DIR: tmpDir("ee-xdg-") };
const f = (name: string): string => path.join(work, name);

/** The first n images of a fixture slice as one .npy. */
function slice(src: string, n: number, out: string): string {
  const data = openCalibration(src, loadModel(CNN).proto);
  const t = data.feeds(0, n).image!;
  fs.writeFileSync(out, encodeNpy("float32", t.dims, new Uint8Array((t.data as Float32Array).buffer, (t.data as Float32Array).byteOffset, (t.data as Float32Array).byteLength)));
  return out;
}

function cli(args: string[]): string {
  const r = runCli(args, { env });
  expect(r.stderr).not.toMatch(/ee-tool: error/);
  expect(r.code).toBe(0);
  return r.stdout;
}

beforeAll(() => {
  if (!fs.existsSync(ICD)) throw new Error(`SwiftShader's Vulkan driver is missing (${ICD}): apt-get install chromium (or point EE_TOOL_VK_ICD at a vk_swiftshader_icd.json)`);
  slice(path.join(ROOT, "fixtures/cnn/calib.npz"), 100, f("calib.npy")); // 40 fit the ramps, 60 are scored
  slice(path.join(ROOT, "fixtures/cnn/eval.npz"), 12, f("eval.npy"));
}, 60_000);

describe("--ep webgpu (SwiftShader)", () => {
  it("inspect --providers finds the WebGPU provider running here", () => {
    const r = JSON.parse(cli(["inspect", "--providers", "--json"])) as { providers: Array<{ name: string; available: boolean }> };
    expect(r.providers.find((p) => p.name === "webgpu")!.available).toBe(true);
    expect(r.providers.find((p) => p.name === "cpu")!.available).toBe(true);
  });

  it("insert, profile, plan and eval give the CPU provider's results and record the provider", () => {
    // insert: the extraction pass on each provider; the ramps are fitted on the CPU from its features.
    // Two exits: every exit adds sessions to profile, and the software device takes 0.2-0.7 s a call.
    for (const ep of ["webgpu", "cpu"]) cli(["insert", CNN, "--calib", f("calib.npy"), "--ep", ep, "--ramp", "linear", "--pool", "gap", "--exits", "2", "-o", f(`${ep}.ee.onnx`), "-q"]);
    const meta = (ep: string) => readRampMetadata(loadModel(f(`${ep}.ee.onnx`)).proto)!;
    expect(meta("webgpu").ramps.map((r) => r.fit.holdoutAgreement)).toEqual(meta("cpu").ramps.map((r) => r.fit.holdoutAgreement));
    expect(meta("webgpu").calibration.fitHashes).toBe(meta("cpu").calibration.fitHashes);

    // profile: per-sample data equal within float tolerance; the latency pass runs on the
    // provider (one round, no figure asserted) and records where the nodes ran.
    // One timing round on the software device (its timings are noise anyway); a real measurement
    // on the CPU, whose profile is the one planned and evaluated below.
    for (const ep of ["webgpu", "cpu"]) cli(["profile", f("webgpu.ee.onnx"), "--calib", f("calib.npy"), "--ep", ep, "--batch", "1", "--budget", ep === "cpu" ? "3000" : "1", "-o", f(`${ep}.profile.json`), "-q"]);
    const gpu = loadProfile(f("webgpu.profile.json"));
    const cpu = loadProfile(f("cpu.profile.json"));
    expect(gpu.profile.environment.executionProvider).toBe("webgpu");
    expect(Array.from(gpu.samples.index)).toEqual(Array.from(cpu.samples.index));
    expect(Array.from(gpu.samples.final)).toEqual(Array.from(cpu.samples.final));
    gpu.samples.ramps.forEach((r, j) => {
      const c = cpu.samples.ramps[j]!;
      expect(Array.from(r.pred)).toEqual(Array.from(c.pred));
      r.maxprob.forEach((p, i) => expect(Math.abs(p - c.maxprob[i]!)).toBeLessThan(1e-4));
    });
    const placement = (gpu.profile as Profile).environment.placement!;
    expect(placement.nodes.WebGpuExecutionProvider).toBeGreaterThan(0);
    console.log(`webgpu placement: ${JSON.stringify(placement)}`);
    expect(gpu.profile.environment.optimizedGraph).toBe(false); // the CPU's blocked layouts stay out of a GPU session
    expect(gpu.profile.latency!["1"]!.exits!.length).toBe(gpu.profile.ramps.length);

    // A plan records its profile's provider (too few samples to certify: --confidence 0). The
    // software device's timings are noise, so the plan evaluated is the CPU profile's: a plan made
    // on one provider runs on another, and eval says so.
    cli(["plan", f("webgpu.profile.json"), "--max-drop", "0.05", "--confidence", "0", "--no-measure", "-o", f("webgpu.plan.json"), "-q"]);
    expect((JSON.parse(fs.readFileSync(f("webgpu.plan.json"), "utf8")) as Plan).profile.ep).toBe("webgpu");
    cli(["plan", f("cpu.profile.json"), "--max-drop", "0.05", "--confidence", "0", "--no-measure", "-o", f("plan.json"), "-q"]);
    const plan = JSON.parse(fs.readFileSync(f("plan.json"), "utf8")) as Plan;
    expect(plan.profile.ep).toBe("cpu");
    expect(plan.exits.length).toBeGreaterThan(0);
    // One session each (not eval's three): timings on the software device are noise anyway.
    const evals = Object.fromEntries(["webgpu", "cpu"].map((ep) => [ep, JSON.parse(cli(["eval", f("plan.json"), "--data", f("eval.npy"), "--ep", ep, "--batch", "1", "--sessions", "1", "--json", "-q"])) as EvalReport]));
    expect(evals.webgpu!.runtime.ep).toBe("webgpu");
    expect(evals.webgpu!.runtime.planEp).toBe("cpu");
    expect(evals.webgpu!.exits.map((e) => e.measured)).toEqual(evals.cpu!.exits.map((e) => e.measured));
    expect(evals.webgpu!.accuracy.dropVsModel).toBe(evals.cpu!.accuracy.dropVsModel);
    expect(evals.webgpu!.exits.filter((e) => e.ramp >= 0).some((e) => e.measured > 0)).toBe(true);
    const text = runCli(["eval", f("webgpu.plan.json"), "--data", f("eval.npy"), "--ep", "cpu", "--batch", "1"], { env }).stderr;
    expect(text).toMatch(/on cpu \(3 sessions each of the model and the runtime, taking turns by block\), runtime form [a-z-]+ \(note: the plan was profiled on webgpu; its latency predictions are for that provider\)/);
  }, 600_000);
});

describe("decoders on --ep webgpu (SwiftShader)", () => {
  it("the early-exit generator gives the CPU's tokens, exits and cache on the WebGPU provider", async () => {
    // This process opens WebGPU sessions itself: the software Vulkan device must be set here too.
    Object.assign(process.env, { VK_ICD_FILENAMES: env.VK_ICD_FILENAMES, XDG_RUNTIME_DIR: env.XDG_RUNTIME_DIR });
    const source = loadModel(path.join(GPT_DIR, "model.onnx"));
    const calib = openTokens(path.join(GPT_DIR, "calib.npy"));
    const rows = 60;
    const ids = new BigInt64Array(rows * calib.length);
    for (let i = 0; i < rows; i++) calib.row(i).forEach((v, j) => (ids[i * calib.length + j] = BigInt(v)));
    fs.writeFileSync(f("gpt-calib.npy"), encodeNpy("int64", [rows, calib.length], new Uint8Array(ids.buffer)));
    const { model } = await insertDecoderHeads(source, findDecoderLayout(source.proto)!, { calib: f("gpt-calib.npy"), exits: "1,2" });
    const prompt = Array.from(openTokens(path.join(GPT_DIR, "prompts.npy")).row(0));
    const exits = [{ exit: 0, threshold: 0.5 }, { exit: 1, threshold: 0.4 }];
    const run = async (ep: "cpu" | "webgpu") => {
      const g = await EarlyExitGenerator.open(model, { exits, settings: { ep } });
      const out: GeneratedToken[] = [];
      for await (const t of g.generate(prompt, { maxNewTokens: 8 })) out.push(t);
      await g.flush();
      const cache = g.snapshot().layers.map(([k, v]) => [Float32Array.from(k.data as Float32Array), Float32Array.from(v.data as Float32Array)]);
      await g.release();
      return { tokens: out.map((t) => [t.token, t.exit]), cache };
    };
    const gpu = await run("webgpu");
    const cpu = await run("cpu");
    expect(gpu.tokens).toEqual(cpu.tokens);
    expect(new Set(cpu.tokens.slice(1).map((t) => t[1])).size).toBeGreaterThan(1); // some tokens exited, some ran deeper
    gpu.cache.forEach((kv, i) => kv.forEach((t, j) => {
      const c = cpu.cache[i]![j]!;
      expect(t.length).toBe(c.length);
      let m = 0;
      for (let x = 0; x < t.length; x++) m = Math.max(m, Math.abs(t[x]! - c[x]!));
      expect(m).toBeLessThan(1e-3);
    }));
  }, 300_000);
});
