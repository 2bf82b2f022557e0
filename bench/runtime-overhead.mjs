// EarlyExitSession overhead: the plan's exits active but thresholds that never fire, at batch 1,
// against the original model plus the ramp costs measured as the profile measures them (each ramp
// alone, cut from onnxruntime's optimised graph), all measured in this run, interleaved.
//   npm run build && node bench/runtime-overhead.mjs <plan.json> <data.npz>
import * as fs from "node:fs";
import * as path from "node:path";
import { EarlyExitSession } from "../dist/runtime/early-exit.js";
import { planSettings } from "../dist/plan/plan.js";
import { createRunnable } from "../dist/ort/sync.js";
import { loadModel } from "../dist/onnx/model.js";
import { declaredTypes, splitModel } from "../dist/stages/split.js";
import { runtimeBytes } from "../dist/ort/ort.js";
import { openCalibration } from "../dist/data/calib.js";
import { openParts, chainStages, releaseParts } from "../dist/stages/runner.js";
import { optimizeForRuntime, partSettings } from "../dist/stages/optimize.js";
import { reducedOutputs } from "../dist/profile/profile.js";

const [planPath, dataPath] = process.argv.slice(2);
if (!planPath || !dataPath) {
  console.error("usage: node bench/runtime-overhead.mjs <plan.json> <data.npz>");
  process.exit(1);
}
const plan = JSON.parse(fs.readFileSync(planPath, "utf8"));
const modelPath = path.resolve(path.dirname(planPath), plan.model.file);
const model = loadModel(modelPath);
const settings = planSettings(plan);
const whole = await createRunnable(runtimeBytes(splitModel(model.proto, declaredTypes(model.proto)).original), settings, [plan.model.output]);
// Ramps as the profile times them: cut from onnxruntime's optimised graph, outputs reduced in onnxruntime.
const rt = await optimizeForRuntime(model, settings);
const rtSettings = partSettings(rt, settings);
const split = splitModel(rt.proto, declaredTypes(rt.proto), { rampIds: plan.exits.map((e) => e.ramp) });
const ramps = [];
for (const r of split.ramps) {
  const reduced = reducedOutputs(r);
  ramps.push({ part: r, fetches: reduced.fetches, s: await createRunnable(runtimeBytes(reduced.proto), rtSettings, reduced.fetches) });
}
const never = { ...plan, exits: plan.exits.map((e) => ({ ...e, threshold: 2 })) };
const ee = await EarlyExitSession.fromPlan(never, modelPath, settings);
const data = openCalibration(dataPath, model.proto);
const feeds = Array.from({ length: 200 }, (_, i) => data.feeds(i, i + 1));
// Ramp inputs: the exit tensors of each sample, from one pass of the stages.
const stages = await openParts(split.stages, model.readExternal, rtSettings);
const rampFeeds = [];
for (const f of feeds) {
  const pool = await chainStages(stages, f);
  rampFeeds.push(ramps.map(({ part }) => Object.fromEntries(part.inputs.map((i) => [i, pool.get(i)]))));
}
await releaseParts(stages);
// Interleaved per request, in rotating order, so drifts of a noisy machine hit all three alike.
const kinds = {
  model: (i) => whole.run(feeds[i], [plan.model.output]),
  ramps: async (i) => { for (let j = 0; j < ramps.length; j++) await ramps[j].s.run(rampFeeds[i][j], ramps[j].fetches); },
  ee: (i) => ee.run(feeds[i]),
};
const names = Object.keys(kinds);
const rows = { model: [], ramps: [], ee: [] };
const PASSES = 20;
for (let pass = 0; pass < PASSES; pass++) {
  for (let i = 0; i < feeds.length; i++) {
    for (let k = 0; k < names.length; k++) {
      const name = names[(i + pass + k) % names.length];
      const t0 = performance.now();
      await kinds[name](i);
      if (pass > 0) rows[name].push(performance.now() - t0);
    }
  }
}
const med = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const m = med(rows.model), r = med(rows.ramps), e = med(rows.ee);
console.log(`batch 1, ${plan.exits.length} active exits that never fire (medians of ${rows.ee.length} requests, interleaved):`);
console.log(`  original model ${(m * 1000).toFixed(0)} us + ramps run alone ${(r * 1000).toFixed(0)} us = ${((m + r) * 1000).toFixed(0)} us`);
console.log(`  EarlyExitSession ${(e * 1000).toFixed(0)} us: ratio ${(e / (m + r)).toFixed(3)} (target <= 1.03); ${(e / m).toFixed(3)} of the model alone`);
