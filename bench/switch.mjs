// The cost of switching operating points per request: one EarlyExitSession over a plan made with
// `plan --points`, called on the same inputs (interleaved, rotating order) with
//   default   nothing fed: the model's default thresholds (the plan's own point)
//   fed       the same thresholds fed through ee_thresholds
//   switched  a different operating point on every call (cycling through all of them)
// and, as the baseline, the same exits with the plan's thresholds as constants (no input, no Gather).
//   npm run build && node bench/switch.mjs <plan.json> <data.npz> [--requests 400] [--passes 8]
import * as fs from "node:fs";
import * as path from "node:path";
import { EarlyExitSession } from "../dist/runtime/early-exit.js";
import { planSettings } from "../dist/plan/plan.js";
import { loadModel } from "../dist/onnx/model.js";
import { openCalibration } from "../dist/data/calib.js";

const args = process.argv.slice(2);
const opt = (name, dflt) => (args.includes(name) ? Number(args[args.indexOf(name) + 1]) : dflt);
const [planPath, dataPath] = args.filter((a, i) => !a.startsWith("--") && !args[i - 1]?.startsWith("--"));
if (!planPath || !dataPath) {
  console.error("usage: node bench/switch.mjs <plan.json> <data.npz> [--requests 400] [--passes 8]");
  process.exit(1);
}
const plan = JSON.parse(fs.readFileSync(planPath, "utf8"));
if (!plan.points) {
  console.error(`${planPath} has no operating points: make it with ee-tool plan --points`);
  process.exit(1);
}
const modelPath = path.resolve(path.dirname(planPath), plan.model.file);
const settings = planSettings(plan);
const op = plan.points;
const defaults = op.points[op.default].thresholds.map((t) => t ?? Infinity);
// The same exits with constant thresholds: an exit the default point does not use gets one no
// confidence reaches, so that the graph is the same but for the thresholds input.
const constantPlan = { ...plan, points: undefined, exits: op.exits.map((e, i) => ({ ...e, threshold: Number.isFinite(defaults[i]) ? defaults[i] : 2, exitRateTune: 0, exitRateCertify: 0 })) };
const sw = await EarlyExitSession.fromPlan(plan, modelPath, settings);
const fixed = await EarlyExitSession.fromPlan(constantPlan, modelPath, settings);
const data = openCalibration(dataPath, loadModel(modelPath).proto);
const n = Math.min(data.size, opt("--requests", 400));
const feeds = Array.from({ length: n }, (_, i) => data.feeds(i, i + 1));
const kinds = {
  constants: (i) => fixed.run(feeds[i]),
  default: (i) => sw.run(feeds[i]),
  fed: (i) => sw.run(feeds[i], { thresholds: defaults }),
  switched: (i) => sw.run(feeds[i], { point: i % op.points.length }),
};
const names = Object.keys(kinds);
const rows = Object.fromEntries(names.map((k) => [k, []]));
const exitsSame = { default: 0, fed: 0 };
const passes = opt("--passes", 8);
for (let pass = 0; pass < passes; pass++) {
  for (let i = 0; i < n; i++) {
    const got = {};
    for (let k = 0; k < names.length; k++) {
      const name = names[(i + pass + k) % names.length];
      const t0 = performance.now();
      const r = await kinds[name](i);
      if (pass > 0) rows[name].push(performance.now() - t0);
      got[name] = r.exits[0];
    }
    if (pass === 0) {
      exitsSame.default += got.default === got.constants ? 1 : 0;
      exitsSame.fed += got.fed === got.constants ? 1 : 0;
    }
  }
}
const med = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const mean = (xs) => xs.reduce((a, b) => a + b, 0) / xs.length;
console.log(`${op.points.length} operating points in one model, exits at ramps ${op.exits.map((e) => e.ramp).join(", ")}; ${n} requests x ${passes - 1} timed passes at batch 1, interleaved`);
console.log(`same exit as the constant-threshold model: default ${exitsSame.default}/${n}, fed ${exitsSame.fed}/${n}`);
const base = med(rows.constants);
for (const k of names) {
  console.log(`  ${k.padEnd(10)} p50 ${(med(rows[k]) * 1000).toFixed(1)} us, mean ${(mean(rows[k]) * 1000).toFixed(1)} us: p50 ratio to constants ${(med(rows[k]) / base).toFixed(3)}`);
}
await sw.release();
await fixed.release();
