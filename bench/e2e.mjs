// End to end on the fixtures (CNN, text, ViT): insert (default ramps, or --ramp KIND), profile, plan at --max-drop 0.01 (its paths
// measured in its runtime on the calibration data, as plan does by default; --modelled: the cost model alone, plan --no-measure), then eval on the
// evaluation slices at batch 1 on CPU. Prints measured latency reduction and accuracy drop beside
// the plan's predictions (original model and early-exit runtime measured interleaved in one run).
// --runs N repeats the whole pipeline N times and ends with each fixture's range and mean: on a
// noisy machine one run's figure can be several points off its neighbours'.
//   npm run build && node bench/e2e.mjs [--budget 10000] [--runs 1] [--ramp linear|mlp|auto] [--only cnn,text,vit] [--modelled]
import { execFileSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";

const args = process.argv.slice(2);
const opt = (name, dflt) => (args.includes(name) ? args[args.indexOf(name) + 1] : dflt);
const budget = opt("--budget", "10000");
const runs = Number(opt("--runs", "1"));
const ramp = opt("--ramp", undefined);
// --modelled: predict from the cost model alone (plan --no-measure; by default plan measures the plan's paths in its runtime).
const modelled = args.includes("--modelled");
const here = path.dirname(new URL(import.meta.url).pathname);
const cli = path.join(here, "..", "bin", "ee-tool.js");
const fx = (p) => path.join(here, "..", "fixtures", p);
const dir = fs.mkdtempSync(path.join(os.tmpdir(), "ee-e2e-"));
const run = (a) => execFileSync(process.execPath, [cli, ...a], { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
const pct = (x) => `${(x * 100).toFixed(1)}%`;
const only = opt("--only", undefined)?.split(",");
const names = ["cnn", "text", "vit"].filter((n) => fs.existsSync(fx(`${n}/model.onnx`)) && (!only || only.includes(n)));
const results = Object.fromEntries(names.map((n) => [n, []]));
for (let k = 1; k <= runs; k++) {
  if (runs > 1) console.log(`run ${k} of ${runs}`);
  for (const name of names) {
    const ee = path.join(dir, `${name}.ee.onnx`), prof = path.join(dir, `${name}.profile.json`), plan = path.join(dir, `${name}.plan.json`);
    run(["insert", fx(`${name}/model.onnx`), "--calib", fx(`${name}/calib.npz`), ...(ramp ? ["--ramp", ramp] : []), "-o", ee, "-q"]);
    run(["profile", ee, "--calib", fx(`${name}/calib.npz`), "--batch", "1", "--budget", budget, "-o", prof, "-q"]);
    run(["plan", prof, "--max-drop", "0.01", ...(modelled ? ["--no-measure"] : []), "-o", plan, "-q"]);
    const r = JSON.parse(run(["eval", plan, "--data", fx(`${name}/eval.npz`), "--labels", fx(`${name}/eval_labels.npy`), "--json", "-q"]));
    const p = JSON.parse(fs.readFileSync(plan, "utf8"));
    results[name].push({ saving: r.latency.saving, predicted: p.expected.saving, drop: r.accuracy.dropVsModel });
    console.log(`${name}: ${p.exits.length} exits; eval on ${r.samples} held-out samples at batch 1`);
    console.log(`  mean latency ${r.latency.model.mean.toFixed(3)} -> ${r.latency.earlyExit.mean.toFixed(3)} ms: reduction ${pct(r.latency.saving)} (plan predicted ${pct(p.expected.saving)}, ${((r.latency.saving - p.expected.saving) * 100).toFixed(1)} points)`);
    console.log(`  paths (x model, measured / predicted): ${r.exits.map((e) => `${e.ramp < 0 ? "none" : `exit ${e.ramp}`} ${e.path ? e.path.measured.toFixed(3) : "-"} / ${e.path?.predicted != null ? e.path.predicted.toFixed(3) : "-"}`).join(", ")}`);
    console.log(`  median latency ${r.latency.model.p50.toFixed(3)} -> ${r.latency.earlyExit.p50.toFixed(3)} ms: reduction ${pct(r.latency.savingMedian)} (predicted ${pct(p.expected.savingMedian)})`);
    console.log(`  accuracy drop vs model ${pct(r.accuracy.dropVsModel)} (max 1.0%, certified bound ${pct(p.certificate.bound)}), vs labels ${pct(r.accuracy.dropVsLabels)}`);
  }
}
if (runs > 1) {
  const range = (xs) => `${pct(Math.min(...xs))}-${pct(Math.max(...xs))}, mean ${pct(xs.reduce((a, b) => a + b, 0) / xs.length)}`;
  for (const [name, rs] of Object.entries(results)) {
    console.log(`${name} over ${runs} runs: mean latency reduction ${range(rs.map((r) => r.saving))} (predicted ${range(rs.map((r) => r.predicted))}); measured less predicted ${range(rs.map((r) => r.saving - r.predicted))}; drop vs model ${range(rs.map((r) => r.drop))}`);
  }
}
