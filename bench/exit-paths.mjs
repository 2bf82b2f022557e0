// How well the profile predicted each exit path: runs the original model and the plan's
// EarlyExitSession on every sample of a data file at batch 1, interleaved, groups the early-exit
// latencies by the exit each sample took, and prints each path's measured median beside the plan's
// cost model (both relative to the model, so that machine drift between profile and run cancels).
//   npm run build && node bench/exit-paths.mjs <plan.json> <data.npz> [<profile.json>]
// The profile defaults to the plan's name with .plan.json replaced by .profile.json.
import * as fs from "node:fs";
import * as path from "node:path";
import { EarlyExitSession } from "../dist/index.js";
import { loadProfile } from "../dist/profile/merge.js";
import { buildCosts, exitCosts } from "../dist/plan/problem.js";
import { openCalibration } from "../dist/data/calib.js";
import { loadModel } from "../dist/onnx/model.js";
import { createRunnable } from "../dist/runtime/sync.js";
import { runtimeBytes } from "../dist/runtime/ort.js";
import { declaredTypes, splitModel } from "../dist/stages/split.js";

const [planFile, dataFile, profileArg] = process.argv.slice(2);
if (!planFile || !dataFile) {
  console.error("usage: node bench/exit-paths.mjs <plan.json> <data.npz> [<profile.json>]");
  process.exit(1);
}
const plan = JSON.parse(fs.readFileSync(planFile, "utf8"));
const { profile } = loadProfile(profileArg ?? planFile.replace(/\.plan\.json$/, ".profile.json"));
const costs = buildCosts(profile, plan.settings.batch);
const order = [...profile.ramps].sort((a, b) => a.depth - b.depth).map((r) => r.id);
const predicted = exitCosts(costs, order.map((id) => plan.exits.find((e) => e.ramp === id)?.threshold ?? Infinity));

const settings = { optimization: "all", spinning: false };
const modelPath = path.resolve(path.dirname(planFile), plan.model.file);
const model = loadModel(modelPath);
const base = await createRunnable(runtimeBytes(splitModel(model.proto, declaredTypes(model.proto)).original, model.readExternal), settings, [plan.model.output]);
const ee = await EarlyExitSession.fromPlan(plan, modelPath, settings);
const data = openCalibration(dataFile, model.proto);
const modelMs = [];
const byExit = new Map();
for (let pass = 0; pass < 2; pass++) {
  for (let i = 0; i < data.size; i++) {
    const feeds = data.feedsFor([i]);
    let t0 = performance.now();
    await base.run(feeds, [plan.model.output]);
    modelMs.push(performance.now() - t0);
    t0 = performance.now();
    const r = await ee.run(feeds);
    const ms = performance.now() - t0;
    if (pass === 0) continue; // warm-up pass
    const e = r.exits[0];
    if (!byExit.has(e)) byExit.set(e, []);
    byExit.get(e).push(ms);
  }
}
await ee.release();
await base.release();
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const m = median(modelMs);
console.log(`model: measured p50 ${m.toFixed(3)} ms, profiled ${costs.baseline.toFixed(3)} ms`);
console.log("exit  samples  measured p50 (ms, x model)  predicted (ms, x model)");
for (const [e, xs] of [...byExit].sort((a, b) => a[0] - b[0])) {
  const p = e < 0 ? predicted.none : predicted.atRamp[order.indexOf(e)];
  const got = median(xs);
  console.log(`${String(e).padEnd(4)}  ${String(xs.length).padEnd(7)}  ${got.toFixed(3)} (${(got / m).toFixed(3)})${" ".repeat(14)}${p.toFixed(3)} (${(p / costs.baseline).toFixed(3)})`);
}
