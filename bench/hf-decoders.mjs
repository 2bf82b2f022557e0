// The exports bench/hf-decoders.py writes, through ee-tool: insert (the layout found by structure),
// then the exact KV check on each: with thresholds that never fire the generator's tokens equal
// the full model's greedy decode, and after generating with an exit that fires (the lowest of a
// few thresholds that lets some tokens leave and some go deeper) every layer's cache equals the
// full model's recomputed on the same tokens; speculative decoding drafting from the first exit
// gives the full model's tokens and cache. `--e2e` adds bench/lm-e2e.mjs at a 5% budget.
//   npm run build && node bench/hf-decoders.mjs <dir> [--e2e]
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { execFileSync } from "node:child_process";
import { loadModel } from "../dist/onnx/model.js";
import { decoderFeeds } from "../dist/analysis/decoder.js";
import { EarlyExitGenerator } from "../dist/runtime/generator.js";
import { originalDecoder } from "../dist/stages/decoder-split.js";
import { createSession, runtimeBytes } from "../dist/ort/ort.js";
import { openTokens } from "../dist/data/tokens.js";

const here = path.dirname(new URL(import.meta.url).pathname);
const cli = path.join(here, "..", "bin", "ee-tool.js");
const fx = (f) => path.join(here, "..", "fixtures", "lm", f);
const [dir] = process.argv.slice(2).filter((a) => !a.startsWith("--"));
if (!dir) {
  console.error("usage: node bench/hf-decoders.mjs <dir of .onnx exports> [--e2e]");
  process.exit(1);
}
const e2e = process.argv.includes("--e2e");
const prompt = Array.from(openTokens(fx("prompts.npy")).row(0));
const work = fs.mkdtempSync(path.join(os.tmpdir(), "ee-hf-"));

async function tokens(model, exits, n) {
  const g = await EarlyExitGenerator.open(model, Array.isArray(exits) ? { exits } : exits);
  const out = [];
  for await (const t of g.generate(prompt, { maxNewTokens: n })) out.push(t);
  return { g, out };
}

async function cacheDiff(g, model) {
  await g.flush();
  const original = originalDecoder(model.proto, g.meta);
  const s = await createSession(runtimeBytes(original, model.readExternal));
  const ref = await s.run(decoderFeeds(original, g.meta.layout, g.tokens, 1, 0));
  const snap = g.snapshot();
  let m = 0;
  g.meta.layout.layers.forEach((l, i) => {
    for (const [mine, theirs] of [[snap.layers[i][0], ref[l.presentKey]], [snap.layers[i][1], ref[l.presentValue]]]) {
      if (mine.data.length !== theirs.data.length) m = Infinity;
      else for (let k = 0; k < mine.data.length; k++) m = Math.max(m, Math.abs(mine.data[k] - theirs.data[k]));
    }
  });
  await s.release();
  return m;
}

let failed = 0;
for (const f of fs.readdirSync(dir).filter((x) => x.endsWith(".onnx")).sort()) {
  const ee = path.join(work, f.replace(/\.onnx$/, ".ee.onnx"));
  try {
    execFileSync(process.execPath, [cli, "insert", path.join(dir, f), "--calib", fx("calib.npy"), "-o", ee, "-q"], { stdio: ["ignore", "pipe", "pipe"] });
  } catch (e) {
    console.log(`${f}: insert FAILED: ${String(e.stderr).trim().split("\n")[0]}`);
    failed++;
    continue;
  }
  const model = loadModel(ee);
  const full = await tokens(model, [], 32);
  const never = await tokens(model, [{ exit: 0, threshold: Infinity }], 32);
  const same = JSON.stringify(full.out.map((t) => t.token)) === JSON.stringify(never.out.map((t) => t.token));
  await full.g.release();
  await never.g.release();
  let line = `${f}: never-firing tokens ${same ? "equal" : "DIFFER from"} the full model's greedy ones`;
  if (!same) failed++;
  let checked = false;
  for (const threshold of [0.1, 0.2, 0.3, 0.5, 0.7, 0.9]) {
    const r = await tokens(model, [{ exit: 0, threshold }], 40);
    const exited = r.out.slice(1).filter((t) => t.exit === 0).length;
    if (exited > 0 && exited < r.out.length - 1) {
      line += `; exit after layer 1 at ${threshold}: ${exited} of ${r.out.length - 1} tokens left early`;
      if (r.g.meta.layout.cache === "kv") {
        const d = await cacheDiff(r.g, model);
        line += `, cache max |diff| ${d.toExponential(2)}`;
        if (!(d < 1e-4)) failed++;
      } else line += " (no cache: every step recomputes the prefix)";
      checked = true;
      await r.g.release();
      break;
    }
    await r.g.release();
  }
  if (!checked) {
    line += "; no threshold from 0.1 to 0.9 let some tokens leave after layer 1 and others go deeper: the cache is NOT checked (train the model longer)";
    failed++;
  }
  if (full.g.meta.layout.cache === "kv") {
    // Speculative decoding from the first exit, drafting often (a low threshold) so that drafts
    // are rejected too: its tokens must be the full model's, its cache the full model's.
    const spec = await tokens(model, { speculative: { exit: 0, threshold: 0.1, maxDraft: 4 } }, 32);
    const kept = spec.out.filter((t) => t.exit === 0).length;
    const equal = JSON.stringify(spec.out.map((t) => t.token)) === JSON.stringify(full.out.map((t) => t.token));
    const d = await cacheDiff(spec.g, model);
    line += `; speculative: tokens ${equal ? "equal" : "DIFFER"} (${kept} of ${spec.out.length} kept drafts), cache max |diff| ${d.toExponential(2)}`;
    if (!equal || !(d < 1e-4)) failed++;
    await spec.g.release();
  }
  console.log(line);
  if (e2e) {
    const r = execFileSync(process.execPath, [path.join(here, "lm-e2e.mjs"), "--model", path.join(dir, f), "--calib", fx("calib.npy"), "--prompts", fx("prompts.npy"), "--text", fx("eval.npy"), "--max-drop", "0.05"], { encoding: "utf8" });
    console.log(r.split("\n").filter((l) => /plan |speculative \(|runs:|reduction|differing tokens|generated tokens/.test(l)).map((l) => `  ${l.trim()}`).join("\n"));
  }
}
console.log(failed ? `${failed} check(s) FAILED` : "every export passed");
process.exit(failed ? 1 : 0);
