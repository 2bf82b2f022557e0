// Loading a profile's per-sample data: 50,000 samples x 16 ramps, written then read back.
//   npm run build && node bench/profile-load.mjs
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { emptySamples, encodeSamples, decodeSamples } from "../dist/profile/samples.js";
import { summarizeSamples } from "../dist/profile/summary.js";

const n = 50_000, ramps = 16;
const d = emptySamples(n, ramps);
for (let i = 0; i < n; i++) {
  d.index[i] = i;
  d.final[i] = i % 10;
  for (const r of d.ramps) {
    r.pred[i] = (i * 7) % 10;
    r.maxprob[i] = (i % 100) / 100;
    r.margin[i] = (i % 50) / 100;
    r.entropy[i] = (i % 30) / 10;
  }
}
const enc = encodeSamples(d);
const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), "ee-prof-")), "p.bin");
fs.writeFileSync(file, enc.bytes);
const t0 = performance.now();
const back = decodeSamples(file, enc.arrays, n, ramps, enc.sha256);
const t1 = performance.now();
summarizeSamples(back);
const t2 = performance.now();
console.log(`${n} samples x ${ramps} ramps: sidecar ${(enc.bytes.length / 1e6).toFixed(1)} MB, load + sha256 check ${(t1 - t0).toFixed(0)} ms, summaries ${(t2 - t1).toFixed(0)} ms (target: load under 1000 ms)`);
