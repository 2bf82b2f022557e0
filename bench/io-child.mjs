// One measurement in a fresh process: load (and optionally save) a model with ee-tool's library,
// then print times and peak RSS as JSON. Used by bench/io.mjs.
import { loadModel, saveModel } from "../dist/onnx/model.js";

const [mode, file, out] = process.argv.slice(2);
if (mode === "baseline") {
  // Node and ee-tool's modules alone, nothing loaded.
  process.stdout.write(JSON.stringify({ peakRss: process.resourceUsage().maxRSS * 1024 }) + "\n");
  process.exit(0);
}
const t0 = process.hrtime.bigint();
const model = loadModel(file);
const t1 = process.hrtime.bigint();
const rssAfterLoad = process.resourceUsage().maxRSS * 1024;
let saveMs = 0;
if (mode === "load-save") {
  const t2 = process.hrtime.bigint();
  saveModel(model, out);
  saveMs = Number(process.hrtime.bigint() - t2) / 1e6;
}
process.stdout.write(JSON.stringify({
  loadMs: Number(t1 - t0) / 1e6,
  saveMs,
  rssAfterLoad,
  peakRss: process.resourceUsage().maxRSS * 1024,
}) + "\n");
