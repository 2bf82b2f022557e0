// End to end on the decoder fixture (or any decoder: --model, --calib, --prompts, --text): insert,
// profile, plan at --max-drop (default 0.02 of tokens differing from the full model's greedy
// token), then eval on the held-out prompts at batch 1 on the CPU: the full model with its KV cache
// and the early-exit generator, interleaved in one run, in the mode the plan runs (--kv-mode auto:
// lossless speculative decoding when it is predicted faster than the certified exits). Prints the per-token latency reduction
// against the 30% target, the differing share against the budget, where the time goes when the
// target is missed, and the truncated decoder's memory saving.
//   npm run build && node bench/lm-e2e.mjs [--max-drop 0.02] [--budget 20000] [--max-new-tokens 64] [--threads N] [--kv-mode auto|exact|speculative]
import { execFileSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";

const args = process.argv.slice(2);
const opt = (name, dflt) => (args.includes(name) ? args[args.indexOf(name) + 1] : dflt);
const here = path.dirname(new URL(import.meta.url).pathname);
const fx = (p) => path.join(here, "..", "fixtures", "lm", p);
const model = opt("--model", fx("model.onnx"));
const calib = opt("--calib", fx("calib.npy"));
const prompts = opt("--prompts", fx("prompts.npy"));
const text = opt("--text", fx("eval.npy"));
const maxDrop = opt("--max-drop", "0.02");
const budget = opt("--budget", "20000");
const maxNew = opt("--max-new-tokens", "64");
const threads = opt("--threads", undefined);
const kvMode = opt("--kv-mode", "auto");
const cli = path.join(here, "..", "bin", "ee-tool.js");
const dir = fs.mkdtempSync(path.join(os.tmpdir(), "ee-lm-e2e-"));
const run = (a) => execFileSync(process.execPath, [cli, ...a, ...(threads ? ["--threads", threads] : [])], { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"], maxBuffer: 64 << 20 });
const pct = (x) => `${(x * 100).toFixed(1)}%`;
const ee = path.join(dir, "lm.ee.onnx"), prof = path.join(dir, "lm.profile.json"), planFile = path.join(dir, "lm.plan.json");

let t = performance.now();
run(["insert", model, "--calib", calib, "-o", ee, "-q"]);
console.log(`insert ${((performance.now() - t) / 1000).toFixed(1)} s`);
t = performance.now();
run(["profile", ee, "--calib", calib, "--budget", budget, "-o", prof, "-q"]);
console.log(`profile ${((performance.now() - t) / 1000).toFixed(1)} s`);
t = performance.now();
// plan reads files only (no --threads); a plan without a certified truncation emits none.
try {
  execFileSync(process.execPath, [cli, "plan", prof, "--max-drop", maxDrop, "--kv-mode", kvMode, "--emit", "truncated", "--out-dir", dir, "-o", planFile, "-q"], { stdio: ["ignore", "pipe", "pipe"] });
} catch {
  execFileSync(process.execPath, [cli, "plan", prof, "--max-drop", maxDrop, "--kv-mode", kvMode, "-o", planFile, "-q"], { stdio: ["ignore", "pipe", "pipe"] });
}
const plan = JSON.parse(fs.readFileSync(planFile, "utf8"));
console.log(`plan ${((performance.now() - t) / 1000).toFixed(1)} s: certified exits after layers ${plan.exits.map((e) => `${e.layers} (threshold ${e.threshold.toFixed(3)})`).join(", ") || "none"} of ${plan.layers}; bound ${plan.certificate ? pct(plan.certificate.bound) : "-"} (n=${plan.certificate?.n ?? 0} sequences); predicted saving ${pct(plan.predicted.saving)}`);
const sp = plan.speculative;
if (sp) console.log(`  speculative (lossless): drafts after layer ${sp.layers} while confidence >= ${sp.threshold.toFixed(3)}, at most ${sp.maxDraft} a cycle; kept drafts ${pct(sp.draftedCertify)} of tokens (tuned on ${sp.tunedOn}); predicted saving ${pct(sp.predicted.saving)}`);
console.log(`  runs: ${plan.kvMode}`);
const predicted = plan.kvMode === "speculative" ? sp.predicted : plan.predicted;
const r = JSON.parse(run(["eval", planFile, "--prompts", prompts, "--text", text, "--max-new-tokens", maxNew, "--json", "-q"]));
console.log(`eval: ${r.prompts} prompts x ${r.maxNewTokens} new tokens, batch 1, ${r.ep}, kv mode ${r.kvMode}`);
console.log(`  per-token decode latency ${r.full.mean.toFixed(3)} -> ${r.earlyExit.mean.toFixed(3)} ms (p50 ${r.full.p50.toFixed(3)} -> ${r.earlyExit.p50.toFixed(3)}, p99 ${r.full.p99.toFixed(3)} -> ${r.earlyExit.p99.toFixed(3)})`);
console.log(`  reduction ${pct(r.saving)} (plan predicted ${pct(predicted.saving)}; target 30%: ${r.saving >= 0.3 ? "met" : "NOT met"})`);
console.log(`  tokens/s ${r.full.tokensPerSecond.toFixed(0)} -> ${r.earlyExit.tokensPerSecond.toFixed(0)}; layers per token at exit ${r.layers.meanAtExit.toFixed(2)} of ${r.layers.total}, run with the deferred ones ${r.layers.meanRun.toFixed(2)}`);
console.log(`  differing tokens (teacher-forced on ${r.teacherForced.sequences} held-out windows) ${pct(r.teacherForced.differing)}${r.kvMode === "speculative" ? " (lossless mode: the generated tokens below are the measured check)" : ` (plan ${pct(plan.predicted.differingCertify)}, bound ${plan.certificate ? pct(plan.certificate.bound) : "-"})`}; budget ${pct(Number(maxDrop))}: ${r.teacherForced.differing <= Number(maxDrop) && (r.kvMode !== "speculative" || r.agreement.tokens === 1) ? "within" : "OVER"}`);
console.log(`  generated tokens equal to the full model's ${pct(r.agreement.tokens)}, identical continuations ${pct(r.agreement.exactMatch)}, ROUGE-L ${r.agreement.rougeL.toFixed(3)}`);
console.log(`  perplexity (teacher-forced) ${r.teacherForced.perplexityFull.toFixed(3)} -> ${r.teacherForced.perplexityEarlyExit.toFixed(3)}`);
console.log(`  exits: ${r.exits.map((e) => `${e.exit === -1 ? "model" : `layer ${e.layers}`} ${pct(e.measured)}`).join(", ")}`);
if (r.saving < 0.3) {
  // Where the time goes: the profile's measured segment costs at the closest context.
  const p = JSON.parse(fs.readFileSync(prof, "utf8"));
  const l = p.latency;
  const ci = l.contexts.findIndex((c) => c >= 96) >= 0 ? l.contexts.findIndex((c) => c >= 96) : l.contexts.length - 1;
  const full = l.fullStep[ci];
  const units = l.segments.filter((s) => s.layers[1] - s.layers[0] === 1 || (s.to === null && s.layers[1] - s.layers[0] === l.segments.filter((x) => x.to === null).reduce((m, x) => Math.min(m, x.layers[1] - x.layers[0]), 99)));
  const sum = units.reduce((a, s) => a + s.p50[ci][0], 0);
  console.log(`where the time goes (profile, context ${l.contexts[ci]}): full decode step ${full.toFixed(3)} ms; its ${units.length} segments each in its own call sum to ${sum.toFixed(3)} ms (${pct(sum / full - 1)} for ${units.length - 1} extra calls)`);
  for (const s of l.segments.filter((x) => x.from === null)) console.log(`  tokens -> ${s.to === null ? "model head" : `exit ${s.to}`} (layers 1-${s.layers[1]}): ${s.p50[ci][0].toFixed(3)} ms = ${pct(s.p50[ci][0] / full)} of the full step`);
  for (const s of l.segments.filter((x) => x.to === null && x.from !== null)) console.log(`  deferred layers ${s.layers[0] + 1}-${s.layers[1]}: ${l.carried.map((n, i) => `${n} positions ${s.p50[ci][i].toFixed(3)}`).join(", ")} ms`);
  for (const s of l.verify?.segments ?? []) console.log(`  speculative check of layers ${s.layers[0] + 1}-${s.layers[1]} (every position's logits): ${l.verify.carried.map((n, i) => `${n} positions ${s.p50[ci][i].toFixed(3)}`).join(", ")} ms`);
}
if (!plan.truncation.chosen) {
  console.log("no truncation certified at this budget: no truncated decoder to measure");
  process.exit(0);
}
const tr = JSON.parse(run(["eval", planFile, "--prompts", prompts, "--max-new-tokens", "16", "--truncated", "--json", "-q"]));
const m = tr.memory;
console.log(`truncated decoder (${plan.truncation.chosen ? `layers 1-${plan.truncation.chosen.layers}` : "none"}): weights ${(m.weightBytesFull / 2 ** 20).toFixed(2)} -> ${(m.weightBytesTruncated / 2 ** 20).toFixed(2)} MB (${pct(1 - m.weightBytesTruncated / m.weightBytesFull)} saved); resident memory of a fresh process with one session ${m.rssFullMB.toFixed(1)} -> ${m.rssTruncatedMB.toFixed(1)} MB; per-token ${tr.full.mean.toFixed(3)} -> ${tr.earlyExit.mean.toFixed(3)} ms, differing share certified ${pct(plan.truncation.chosen.predicted.differingCertify)}`);
