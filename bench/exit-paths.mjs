// How well the profile predicted each exit path: runs the original model and the plan's
// EarlyExitSession interleaved on the samples of a data file, groups the early-exit latencies by
// the exit each sample took, and prints each path's measured time (the mean of its middle 80%)
// beside the plan's cost model (both as multiples of the model, so that machine drift
// between profile and run cancels), and each path's median by the path of the call before it.
// Batches of all paths are shuffled together, so a path's call follows one of another path about
// as often as a request in a mixed stream does.
// At --batch B > 1 every timed batch holds B samples that all take the same exit (found by a first
// pass), so each path is timed as a whole batch; a path with fewer than B samples is not timed,
// and one with fewer batches than plan's measurement gives a path (MIN_PATH_CALLS) has them timed again until it has that many.
// Batches are timed in blocks, as eval times them (each call after one of the same session).
// Both sides run in --sessions sessions (default 3): one session of a graph can run 3-6% off the
// others all along; the model's reference in each block is the middle of its sessions' medians,
// and each path's figure the middle of its figures in the runtime's sessions (each printed).
// Ends with the largest deviation and whether every path is within --within (default 5%).
// The profile is --profile, or found beside the plan (by name, else by what the plan records of it).
//   npm run build && node bench/exit-paths.mjs <plan.json> <data.npz> [--profile p.json] [--batch B] [--passes 2] [--sessions 3] [--within 0.05]
import * as fs from "node:fs";
import * as path from "node:path";
import { EarlyExitSession, planSettings } from "../dist/index.js";
import { loadProfile } from "../dist/profile/merge.js";
import { buildCosts, exitCosts } from "../dist/plan/problem.js";
import { openCalibration } from "../dist/data/calib.js";
import { loadModel } from "../dist/onnx/model.js";
import { createRunnable } from "../dist/ort/sync.js";
import { MIN_PATH_CALLS } from "../dist/eval/paths.js";
import { runtimeBytes } from "../dist/ort/ort.js";
import { declaredTypes, splitModel } from "../dist/stages/split.js";

const args = process.argv.slice(2);
const opt = (name, dflt) => (args.includes(name) ? args[args.indexOf(name) + 1] : dflt);
const [planFile, dataFile] = args.filter((a, i) => !a.startsWith("--") && !args[i - 1]?.startsWith("--"));
if (!planFile || !dataFile) {
  console.error("usage: node bench/exit-paths.mjs <plan.json> <data.npz> [--profile p.json] [--batch B] [--passes 2] [--sessions 3] [--within 0.05]");
  process.exit(1);
}
// The plan's profile: --profile, else <name>.profile.json beside <name>.plan.json, else the profile
// beside the plan whose creation time and calibration data the plan records.
function profileOf(planFile, plan) {
  const given = opt("--profile", undefined);
  if (given) return given;
  const named = planFile.replace(/\.plan\.json$/, ".profile.json");
  if (named !== planFile && fs.existsSync(named)) return named;
  const { created, calibrationHash } = plan.profile ?? {};
  const dir = path.dirname(planFile);
  for (const f of fs.readdirSync(dir).filter((x) => x.endsWith(".json")).sort()) {
    try {
      const p = JSON.parse(fs.readFileSync(path.join(dir, f), "utf8"));
      if (p.created === created && p.settings?.calibrationHash === calibrationHash) return path.join(dir, f);
    } catch {
      // not JSON, or not a profile
    }
  }
  console.error(`no profile of ${planFile} beside it (created ${created}): pass --profile <profile.json>`);
  process.exit(1);
}
const batch = Number(opt("--batch", "1"));
const passes = Number(opt("--passes", "2"));
const nSessions = Math.max(1, Number(opt("--sessions", "3")));
const within = Number(opt("--within", "0.05"));
const plan = JSON.parse(fs.readFileSync(planFile, "utf8"));
const { profile } = loadProfile(profileOf(planFile, plan));
const costs = buildCosts(profile, batch);
const order = [...profile.ramps].sort((a, b) => a.depth - b.depth).map((r) => r.id);
// The plan's own prediction of its paths where it was planned at this batch size (each exit priced
// at the plan's shares of requests going deeper); otherwise the cost model at this batch size.
const fromPlan = plan.settings.batch === batch && plan.costModel?.paths;
const predicted = fromPlan
  ? { atRamp: order.map((id) => plan.costModel.paths.find((p) => p.ramp === id)?.ms ?? Infinity), none: plan.costModel.paths.find((p) => p.ramp === -1).ms }
  : exitCosts(costs, order.map((id) => plan.exits.find((e) => e.ramp === id)?.threshold ?? Infinity));

// The threads the plan was measured with (the profile's choice), for the model as for the runtime.
const settings = planSettings(plan);
const modelPath = path.resolve(path.dirname(planFile), plan.model.file);
const model = loadModel(modelPath);
const originalBytes = runtimeBytes(splitModel(model.proto, declaredTypes(model.proto)).original, model.readExternal);
const bases = [];
const ees = [];
for (let k = 0; k < nSessions; k++) {
  bases.push(await createRunnable(originalBytes, settings, [plan.model.output]));
  ees.push(await EarlyExitSession.fromPlan(plan, modelPath, settings));
}
const ee = ees[0];
const data = openCalibration(dataFile, model.proto);

// The exit of every sample, then batches of samples that share one.
const bySample = new Map();
for (let i = 0; i < data.size; i += 64) {
  const idx = Array.from({ length: Math.min(64, data.size - i) }, (_, k) => i + k);
  const r = await ee.run(data.feedsFor(idx));
  idx.forEach((s, k) => bySample.set(s, r.exits[k]));
}
const groups = new Map();
for (const [s, e] of bySample) {
  if (!groups.has(e)) groups.set(e, []);
  groups.get(e).push(s);
}
// A path with fewer batches than plan's measurement times it in (MIN_PATH_CALLS, about 160 per
// runtime session) has its batches timed again until it has that many in each pass: at batch 8 a
// rare path can have 2-6 batches, and with 32 calls per session two checks of a ResNet-18's plan
// put its first exit 15% apart (0.136 and 0.118 x model); with 160, two checks agreed within 2.5%.
const batches = [];
const distinct = new Map();
for (const [e, ss] of groups) {
  const own = [];
  for (let i = 0; i + batch <= ss.length; i += batch) own.push({ exit: e, idx: ss.slice(i, i + batch) });
  distinct.set(e, own.length);
  for (let k = 0; own.length && k < Math.max(own.length, MIN_PATH_CALLS); k++) batches.push(own[k % own.length]);
}
// Paths mixed in time (a seeded shuffle), so no path is timed over one stretch of the machine's drift.
let seed = 12345;
for (let i = batches.length - 1; i > 0; i--) {
  seed = (seed * 1103515245 + 12345) % 2147483648;
  const j = seed % (i + 1);
  [batches[i], batches[j]] = [batches[j], batches[i]];
}
// Timed as eval times: blocks of 16 batches, the model on a block (in each of its sessions) then
// the runtime on the same block (in one of its sessions, in turn; the order swaps every block),
// each block after one untimed call of its session. Each runtime call is taken as a multiple of
// the model's median in its own block (the middle one of its sessions'), which cancels the
// machine's drift (this machine's speed moves by 20-30% over minutes).
const modelMs = bases.map(() => []);
const byExit = new Map();
const byPrev = new Map();
const push = (map, key, x) => {
  if (!map.has(key)) map.set(key, []);
  map.get(key).push(x);
};
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const BLOCK = 16;
for (let pass = 0; pass < passes; pass++) {
  for (let blk = 0; blk * BLOCK < batches.length; blk++) {
    const block = batches.slice(blk * BLOCK, (blk + 1) * BLOCK);
    const blockModel = bases.map(() => []);
    const blockEe = [];
    const session = blk % nSessions;
    const ee = ees[session];
    const runModel = async () => {
      for (const [k, base] of bases.entries()) {
        await base.run(data.feedsFor(block[0].idx), [plan.model.output]);
        for (const b of block) {
          const feeds = data.feedsFor(b.idx);
          const t0 = performance.now();
          await base.run(feeds, [plan.model.output]);
          blockModel[k].push(performance.now() - t0);
        }
      }
    };
    const runEe = async () => {
      await ee.run(data.feedsFor(block[0].idx));
      let prev = block[0].exit;
      for (const b of block) {
        const r = await ee.run(data.feedsFor(b.idx));
        if (r.exits.some((e) => e !== b.exit)) throw new Error("a sample changed its exit between passes");
        const after = prev === b.exit ? "same" : b.exit >= 0 && (prev < 0 || prev > b.exit) ? "deeper" : "shallower";
        blockEe.push({ exit: b.exit, after, ms: r.timings.totalMs });
        prev = b.exit;
      }
    };
    if (blk % 2 === 0) { await runModel(); await runEe(); } else { await runEe(); await runModel(); }
    if (pass === 0) continue; // warm-up pass
    blockModel.forEach((xs, k) => modelMs[k].push(...xs));
    const ref = median(blockModel.map(median));
    for (const x of blockEe) {
      push(byExit, `${x.exit}|${session}`, x.ms / ref);
      push(byPrev, `${x.exit}|${x.after}`, x.ms / ref);
    }
  }
}
for (const s of [...ees, ...bases]) await s.release();
// The mean of the middle 80%: a path's expected time without the busy machine's outliers. A path's
// calls cost more after a call that went deeper than after one of their own path, so its times
// are two clusters, and the plan predicts their mean (its cost model weighs the two).
const central = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.slice(Math.floor(s.length * 0.1), Math.ceil(s.length * 0.9));
  return mid.reduce((a, b) => a + b, 0) / mid.length;
};
const m = median(modelMs.map(median)) / batch;
console.log(`batch ${batch}; cost model from ${costs.source === "exits" ? "each exit measured in the runtime" : "stage prefixes (an older profile)"}${fromPlan ? (plan.costModel.measured ? ", the plan's path costs (measured in its runtime on other samples by plan)" : ", the plan's path costs") : ""}`);
console.log(`model: measured p50 ${m.toFixed(3)} ms per row (its ${nSessions} sessions: ${modelMs.map((xs) => (median(xs) / batch).toFixed(3)).join(", ")}), profiled p50 ${costs.baseline.toFixed(3)} ms`);
// The paths' ratios move with the machine's state: its speed now against the profile's and, where
// plan measured the paths (their prediction), against plan's measurement.
const measuredAt = fromPlan && plan.costModel.measured?.batch === batch ? plan.costModel.measured.modelMs : undefined;
for (const [then, when] of [[costs.baseline, "the profile"], ...(measuredAt ? [[measuredAt, "plan's measurement of the paths"]] : [])]) {
  const state = m / then - 1;
  if (Math.abs(state) > 0.05) console.log(`note: the machine ran the model ${(Math.abs(state) * 100).toFixed(0)}% ${state > 0 ? "slower" : "faster"} than during ${when} (${then.toFixed(3)} ms per row); the paths' ratios move with its state (docs/profile.md)`);
}
console.log(`path     batches  measured x model (the middle of its ${nSessions} runtime sessions' middle-80% means: each)  predicted (ms/row, x model)  off by`);
const paths = new Map();
for (const [k, xs] of byExit) {
  const [e, session] = k.split("|").map(Number);
  if (!paths.has(e)) paths.set(e, []);
  paths.get(e)[session] = xs;
}
let worst = 0;
for (const [e, perSession] of [...paths].sort((a, b) => (a[0] < 0 ? 1e9 : a[0]) - (b[0] < 0 ? 1e9 : b[0]))) {
  const p = e < 0 ? predicted.none : predicted.atRamp[order.indexOf(e)];
  const figures = perSession.filter((xs) => xs && xs.length).map(central);
  const got = [...figures].sort((x, y) => x - y)[(figures.length - 1) >> 1];
  const off = got / (p / costs.baseline) - 1;
  worst = Math.max(worst, Math.abs(off));
  const label = e < 0 ? "none" : `exit ${e}`;
  const n = perSession.reduce((a, xs) => a + (xs?.length ?? 0), 0);
  const d = distinct.get(e);
  console.log(`${label.padEnd(7)}  ${(d < n ? `${n} (${d} distinct)` : String(n)).padEnd(7)}  ${got.toFixed(3)} (${figures.map((f) => f.toFixed(3)).join(", ")})${" ".repeat(12)}${p.toFixed(3)} (${(p / costs.baseline).toFixed(3)})${" ".repeat(10)}${(off * 100).toFixed(1)}%`);
}
// Each path's calls by the path of the call before them in the same block (p50, x model).
for (const [k, xs] of [...byPrev].sort()) {
  const [e, prev] = k.split("|");
  console.log(`  ${e < 0 ? "none" : `exit ${e}`} after ${prev === "same" ? "its own path" : `a ${prev} one`}: ${xs.length} batches, p50 ${median(xs).toFixed(3)} x model`);
}
console.log(`largest deviation ${(worst * 100).toFixed(1)}%: ${worst <= within ? "every path within" : "NOT every path within"} ${(within * 100).toFixed(0)}%`);
process.exitCode = worst <= within ? 0 : 1;
