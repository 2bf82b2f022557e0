// How the tuning/certification split (plan --tune-fraction) changes the certified plan: plans each
// profile at several fractions, over 8 different content-hash splits (each of the 8 hash bytes in
// turn decides the side, byte 7 being the one `plan` uses), optionally on disjoint subsets of M
// scored samples (a smaller calibration set). Prints the mean predicted saving of the certified
// plans and their mean drop on all the scored samples. No timing is run: the profiles' latencies
// are fixed, so the differences come from the split alone.
// --tuning-drop observed plans as `plan --tuning-drop observed` does (default: fitted, as plan).
//   npm run build && node bench/tune-fraction.mjs <profile.json>... [--fractions 0.05,0.1,0.25] [--subset M] [--tuning-drop observed]
import { loadProfile } from "../dist/profile/merge.js";
import { planFromProfile } from "../dist/plan/plan.js";

const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const at = args.indexOf(name);
  if (at < 0) return dflt;
  const v = args[at + 1];
  args.splice(at, 2);
  return v;
};
const fractions = opt("--fractions", "0.05,0.1,0.15,0.25,0.5").split(",").map(Number);
const subset = Number(opt("--subset", "0"));
const tuningDrop = opt("--tuning-drop", "fitted");
if (args.length === 0) {
  console.error("usage: node bench/tune-fraction.mjs <profile.json>... [--fractions 0.05,0.1,0.25] [--subset M] [--tuning-drop observed]");
  process.exit(1);
}

/** Samples off .. off+m of a profile's sample data. */
function slice(s, off, m) {
  const cut = (a, w = 1) => a.slice(off * w, (off + m) * w);
  return {
    count: m, index: cut(s.index), hash: cut(s.hash, 8), final: cut(s.final), label: cut(s.label),
    ramps: s.ramps.map((r) => ({ pred: cut(r.pred), maxprob: cut(r.maxprob), margin: cut(r.margin), entropy: cut(r.entropy) })),
  };
}

/** The same samples with hash byte b deciding the side. */
function withSplitByte(s, b) {
  const hash = s.hash.slice();
  for (let i = 0; i < s.count; i++) hash[i * 8 + 7] = s.hash[i * 8 + b];
  return { ...s, hash };
}

const saving = Object.fromEntries(fractions.map((f) => [f, []]));
const drop = Object.fromEntries(fractions.map((f) => [f, []]));
let failed = 0;
for (const file of args) {
  const r = loadProfile(file);
  const m = subset > 0 ? subset : r.samples.count;
  for (let off = 0; off + m <= r.samples.count; off += m) {
    const part = slice(r.samples, off, m);
    for (let b = 0; b < 8; b++) {
      const samples = withSplitByte(part, b);
      for (const f of fractions) {
        try {
          const p = planFromProfile({ ...r, samples }, { maxDrop: 0.01, tuneFraction: f, tuningDrop });
          saving[f].push(p.expected.saving);
          const { tune, certify } = p.data;
          drop[f].push((p.expected.dropTune * tune + p.expected.dropCertify * certify) / (tune + certify));
        } catch {
          saving[f].push(0);
          failed++;
        }
      }
    }
  }
}
const mean = (xs) => xs.reduce((a, b) => a + b, 0) / xs.length;
console.log(`${args.length} profile(s), ${subset > 0 ? `subsets of ${subset} scored samples` : "all scored samples"}, 8 hash splits each, --max-drop 0.01, --tuning-drop ${tuningDrop}`);
for (const f of fractions) {
  console.log(`  tune fraction ${f}: certified predicted saving ${(mean(saving[f]) * 100).toFixed(1)}% (mean of ${saving[f].length} plans), drop on all scored samples ${(mean(drop[f]) * 100).toFixed(2)}%`);
}
if (failed) console.log(`  (${failed} plans could not be certified; counted as 0 saving)`);
