// Ramp fitting time as a ratio to the feature-extraction pass (both measured in the same run), for
// linear ramps with one pooling per exit (--pool gap on [N,C,H,W], mean on [N,S,D]), linear ramps
// with --pool auto (which also fits grid pooling on [N,C,H,W]: 4-9x wider features), and the
// defaults (--ramp auto --pool auto: linear and mlp ramps on both poolings at every exit).
//   npm run build && node bench/fit.mjs [--repeat 3]
import { loadModel } from "../dist/onnx/model.js";
import { insertRamps } from "../dist/ramps/insert.js";

const args = process.argv.slice(2);
const at = args.indexOf("--repeat");
const repeat = at >= 0 ? Number(args[at + 1]) : 3;
const cases = [
  { name: "cnn", model: "fixtures/cnn/model.onnx", calib: "fixtures/cnn/calib.npz" },
  { name: "text", model: "fixtures/text/model.onnx", calib: "fixtures/text/calib.npz" },
];
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
for (const c of cases) {
  const model = loadModel(c.model);
  for (const [ramp, pool] of [["linear", c.name === "cnn" ? "gap" : "mean"], ["linear", "auto"], ["auto", "auto"]]) {
    const runs = [];
    let meta;
    for (let i = 0; i < repeat; i++) {
      const r = await insertRamps(model, { calib: c.calib, ramp, pool });
      runs.push(r.timings);
      meta = r.metadata;
    }
    const ex = median(runs.map((t) => t.extractMs));
    const fit = median(runs.map((t) => t.fitMs));
    console.log(`${c.name}, --ramp ${ramp} --pool ${pool}: ${meta.ramps.length} ramps, ${meta.calibration.fitSamples} fitting samples, median of ${repeat}`);
    console.log(`  feature extraction ${ex.toFixed(0)} ms, fitting ${fit.toFixed(0)} ms, ratio fit/extract ${(fit / ex).toFixed(2)}`);
  }
}
