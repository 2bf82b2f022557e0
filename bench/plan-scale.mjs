// Planning time for a 50,000-sample, 16-ramp profile (synthetic per-sample data, real planner).
//   npm run build && node bench/plan-scale.mjs
import { emptySamples } from "../dist/profile/samples.js";
import { summarizeSamples } from "../dist/profile/summary.js";
import { planFromProfile } from "../dist/plan/plan.js";
import { Rng } from "../dist/util/rng.js";

const n = 50_000, R = 16, K = 10;
const rng = new Rng(3);
const d = emptySamples(n, R);
for (let i = 0; i < n; i++) {
  d.index[i] = i;
  for (let b = 0; b < 8; b++) d.hash[i * 8 + b] = Math.floor(rng.next() * 256);
  d.final[i] = i % K;
  d.ramps.forEach((r, j) => {
    const q = (j + 1) / (R + 1);
    const c = Math.min(0.9999, Math.max(0.1, q + 0.3 * rng.normal()));
    r.maxprob[i] = c;
    r.margin[i] = c / 2;
    r.entropy[i] = 1 - c;
    r.pred[i] = rng.next() < 0.5 + 0.5 * c * q ? d.final[i] : (d.final[i] + 1) % K;
  });
}
const stat = (ms) => ({ mean: ms, p50: ms, p90: ms, p99: ms, std: 0, runs: 100, converged: true, ciRelative: 0.01 });
const profile = {
  format: "ee-tool.profile/1", tool: "bench", created: new Date().toISOString(),
  model: { file: "model.onnx", sha256: "0".repeat(64), output: "logits", classes: K, mainInput: "x" },
  environment: {}, settings: { batches: [1], shard: null, calibrationHash: "x", calibrationSamples: n, labels: false, budgetMs: 0, tolerance: 0 },
  ramps: Array.from({ length: R }, (_, j) => ({ id: j, exit: j, tensor: `t${j}`, depth: (j + 1) / (R + 1), output: `ee_exit_${j}`, parameters: 1000, stage: j })),
  stages: Array.from({ length: R + 1 }, (_, k) => ({ index: k, inputs: [], outputs: [], weightBytes: 1e6 })),
  latency: { "1": {
    model: stat(17), stages: Array.from({ length: R + 1 }, () => stat(1.02)), ramps: Array.from({ length: R }, () => stat(0.05)), callOverhead: stat(0.02), stageSum: {},
    // Stages in place: prefix k (stages 0..k in one call) and every exit active, none firing.
    prefixes: Array.from({ length: R + 1 }, (_, k) => stat(0.02 + (k + 1))), allExits: stat(17 + R * 0.06),
  } },
  samples: { scored: n, skippedFitted: 0, skippedOtherShards: 0, file: "", sha256: "", arrays: [] },
  summary: summarizeSamples(d),
};
for (const tuningDrop of ["observed", "fitted"]) {
  const t0 = performance.now();
  const plan = planFromProfile({ profile, samples: d }, { maxDrop: 0.01, tuningDrop });
  const ms = performance.now() - t0;
  console.log(`${n} samples x ${R} ramps, --tuning-drop ${tuningDrop}: planned in ${(ms / 1000).toFixed(2)} s (target < 10 s); ${plan.exits.length} exits, saving ${(plan.expected.saving * 100).toFixed(1)}%, certified drop bound ${(plan.certificate.bound * 100).toFixed(2)}%`);
}
