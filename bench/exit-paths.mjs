// How well the profile predicted each exit path: runs the original model and the plan's
// EarlyExitSession interleaved on the samples of a data file, groups the early-exit latencies by
// the exit each sample took, and prints each path's measured median beside the plan's cost model
// (both as multiples of the model, so that machine drift between profile and run cancels).
// At --batch B > 1 every timed batch holds B samples that all take the same exit (found by a first
// pass), so each path is timed as a whole batch; a path with fewer than B samples is not timed.
// Batches are timed in blocks, as eval times them (each call after one of the same session).
// Ends with the largest deviation and whether every path is within --within (default 5%).
//   npm run build && node bench/exit-paths.mjs <plan.json> <data.npz> [--profile p.json] [--batch B] [--passes 2] [--within 0.05]
import * as fs from "node:fs";
import * as path from "node:path";
import { EarlyExitSession } from "../dist/index.js";
import { loadProfile } from "../dist/profile/merge.js";
import { buildCosts, exitCosts } from "../dist/plan/problem.js";
import { openCalibration } from "../dist/data/calib.js";
import { loadModel } from "../dist/onnx/model.js";
import { createRunnable } from "../dist/ort/sync.js";
import { runtimeBytes } from "../dist/ort/ort.js";
import { declaredTypes, splitModel } from "../dist/stages/split.js";

const args = process.argv.slice(2);
const opt = (name, dflt) => (args.includes(name) ? args[args.indexOf(name) + 1] : dflt);
const [planFile, dataFile] = args.filter((a, i) => !a.startsWith("--") && !args[i - 1]?.startsWith("--"));
if (!planFile || !dataFile) {
  console.error("usage: node bench/exit-paths.mjs <plan.json> <data.npz> [--profile p.json] [--batch B] [--passes 2] [--within 0.05]");
  process.exit(1);
}
const batch = Number(opt("--batch", "1"));
const passes = Number(opt("--passes", "2"));
const within = Number(opt("--within", "0.05"));
const plan = JSON.parse(fs.readFileSync(planFile, "utf8"));
const { profile } = loadProfile(opt("--profile", planFile.replace(/\.plan\.json$/, ".profile.json")));
const costs = buildCosts(profile, batch);
const order = [...profile.ramps].sort((a, b) => a.depth - b.depth).map((r) => r.id);
const predicted = exitCosts(costs, order.map((id) => plan.exits.find((e) => e.ramp === id)?.threshold ?? Infinity));

const settings = { optimization: "all", spinning: false };
const modelPath = path.resolve(path.dirname(planFile), plan.model.file);
const model = loadModel(modelPath);
const base = await createRunnable(runtimeBytes(splitModel(model.proto, declaredTypes(model.proto)).original, model.readExternal), settings, [plan.model.output]);
const ee = await EarlyExitSession.fromPlan(plan, modelPath, settings);
const data = openCalibration(dataFile, model.proto);

// The exit of every sample, then batches of samples that share one.
const bySample = new Map();
for (let i = 0; i < data.size; i += 64) {
  const idx = Array.from({ length: Math.min(64, data.size - i) }, (_, k) => i + k);
  const r = await ee.run(data.feedsFor(idx));
  idx.forEach((s, k) => bySample.set(s, r.exits[k]));
}
const groups = new Map();
for (const [s, e] of bySample) {
  if (!groups.has(e)) groups.set(e, []);
  groups.get(e).push(s);
}
const batches = [];
for (const [e, ss] of groups) for (let i = 0; i + batch <= ss.length; i += batch) batches.push({ exit: e, idx: ss.slice(i, i + batch) });
// Paths mixed in time (a seeded shuffle), so no path is timed over one stretch of the machine's drift.
let seed = 12345;
for (let i = batches.length - 1; i > 0; i--) {
  seed = (seed * 1103515245 + 12345) % 2147483648;
  const j = seed % (i + 1);
  [batches[i], batches[j]] = [batches[j], batches[i]];
}
// Timed as eval times: blocks of 16 batches, the model on a block then the runtime on the same
// block (the order swaps every block), each block after one untimed call of its session.
const modelMs = [];
const byExit = new Map();
const BLOCK = 16;
for (let pass = 0; pass < passes; pass++) {
  for (let blk = 0; blk * BLOCK < batches.length; blk++) {
    const block = batches.slice(blk * BLOCK, (blk + 1) * BLOCK);
    const runModel = async () => {
      await base.run(data.feedsFor(block[0].idx), [plan.model.output]);
      for (const b of block) {
        const feeds = data.feedsFor(b.idx);
        const t0 = performance.now();
        await base.run(feeds, [plan.model.output]);
        if (pass > 0) modelMs.push(performance.now() - t0);
      }
    };
    const runEe = async () => {
      await ee.run(data.feedsFor(block[0].idx));
      for (const b of block) {
        const r = await ee.run(data.feedsFor(b.idx));
        if (pass === 0) continue; // warm-up pass
        if (r.exits.some((e) => e !== b.exit)) throw new Error("a sample changed its exit between passes");
        if (!byExit.has(b.exit)) byExit.set(b.exit, []);
        byExit.get(b.exit).push(r.timings.totalMs);
      }
    };
    if (blk % 2 === 0) { await runModel(); await runEe(); } else { await runEe(); await runModel(); }
  }
}
await ee.release();
await base.release();
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const m = median(modelMs) / batch;
console.log(`batch ${batch}; cost model from ${costs.source === "exits" ? "each exit measured in the runtime" : "stage prefixes (an older profile)"}`);
console.log(`model: measured p50 ${m.toFixed(3)} ms per row, profiled ${costs.baseline.toFixed(3)} ms`);
console.log("exit  batches  measured p50 (ms/row, x model)  predicted (ms/row, x model)  off by");
let worst = 0;
for (const [e, xs] of [...byExit].sort((a, b) => (a[0] < 0 ? 1e9 : a[0]) - (b[0] < 0 ? 1e9 : b[0]))) {
  const p = e < 0 ? predicted.none : predicted.atRamp[order.indexOf(e)];
  const got = median(xs) / batch;
  const off = (got / m) / (p / costs.baseline) - 1;
  worst = Math.max(worst, Math.abs(off));
  const label = e < 0 ? "none" : String(e);
  console.log(`${label.padEnd(4)}  ${String(xs.length).padEnd(7)}  ${got.toFixed(3)} (${(got / m).toFixed(3)})${" ".repeat(18)}${p.toFixed(3)} (${(p / costs.baseline).toFixed(3)})${" ".repeat(16)}${(off * 100).toFixed(1)}%`);
}
console.log(`largest deviation ${(worst * 100).toFixed(1)}%: ${worst <= within ? "every path within" : "NOT every path within"} ${(within * 100).toFixed(0)}%`);
process.exitCode = worst <= within ? 0 : 1;
