// Release-early mode against the one-call runtime on the same requests (interleaved): the mean time
// to a row's release and the whole batch's time, beside the one-call runtime's time per batch.
//   npm run build && node bench/release.mjs <plan.json> <data.npz> [--batches 1,16] [--requests 800]
import * as fs from "node:fs";
import * as path from "node:path";
import { ReleaseEarlySession } from "../dist/runtime/release.js";
import { EarlyExitSession } from "../dist/runtime/early-exit.js";
import { planSettings } from "../dist/plan/plan.js";
import { openCalibration } from "../dist/data/calib.js";
import { loadModel } from "../dist/onnx/model.js";

const args = process.argv.slice(2);
const opt = (name, dflt) => (args.includes(name) ? args[args.indexOf(name) + 1] : dflt);
const [planPath, dataPath] = args.filter((a, i) => !a.startsWith("--") && !args[i - 1]?.startsWith("--"));
if (!planPath || !dataPath) {
  console.error("usage: node bench/release.mjs <plan.json> <data.npz> [--batches 1,16] [--requests 800]");
  process.exit(1);
}
const plan = JSON.parse(fs.readFileSync(planPath, "utf8"));
const modelPath = path.resolve(path.dirname(planPath), plan.model.file);
const settings = planSettings(plan);
const rel = await ReleaseEarlySession.fromPlan(plan, modelPath, settings);
const ee = await EarlyExitSession.fromPlan(plan, modelPath, settings);
const data = openCalibration(dataPath, loadModel(modelPath).proto);
const n = Math.min(data.size, Number(opt("--requests", "800")));
const mean = (xs) => xs.reduce((a, c) => a + c, 0) / xs.length;
for (const b of opt("--batches", "1,16").split(",").map(Number)) {
  const one = [];
  const release = [];
  const whole = [];
  for (let pass = 0; pass < 3; pass++) {
    for (let s = 0; s + b <= n; s += b) {
      const f = data.feeds(s, s + b);
      const first = (s / b + pass) % 2 === 0;
      const runOne = async () => { const t0 = performance.now(); await ee.run(f); if (pass) one.push(performance.now() - t0); };
      const runRel = async () => { const r = await rel.run(f); if (pass) { whole.push(r.totalMs); release.push(mean(Array.from(r.releaseMs))); } };
      if (first) { await runOne(); await runRel(); } else { await runRel(); await runOne(); }
    }
  }
  console.log(`batch ${b}: one-call runtime ${mean(one).toFixed(3)} ms a call; release-early: a row is released after ${mean(release).toFixed(3)} ms on average (${(mean(release) / mean(one)).toFixed(2)}x), the whole batch takes ${mean(whole).toFixed(3)} ms (${(mean(whole) / mean(one)).toFixed(2)}x)`);
}
await rel.release();
await ee.release();
