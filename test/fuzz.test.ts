/**
 * Parser robustness: seeded mutations and truncations of the fixture models go through the loader
 * and inspect's summary. Every case must end in success or an EeToolError with a code, quickly.
 * EE_FUZZ_CASES raises the number of cases (default 2000).
 */
import { describe, expect, it } from "vitest";
import * as fs from "node:fs";
import * as path from "node:path";
import { parseModel } from "../src/onnx/model.js";
import { summarizeModel } from "../src/analysis/summary.js";
import { EeToolError } from "../src/errors.js";
import { Rng } from "../src/util/rng.js";
import { CNN, TEXT, runCli, tmpDir } from "./helpers/fixtures.js";

function mutate(src: Buffer, rng: Rng): Buffer {
  const kind = Math.floor(rng.next() * 4);
  if (kind === 0) return src.subarray(0, Math.floor(rng.next() * src.length));
  const out = Buffer.from(src);
  if (kind === 1 || kind === 2) {
    // Flip a few bytes; kind 2 aims at the structure near the start and the end (graph, nodes).
    const flips = 1 + Math.floor(rng.next() * 8);
    for (let i = 0; i < flips; i++) {
      const at = kind === 1 ? Math.floor(rng.next() * out.length) : rng.next() < 0.5 ? Math.floor(rng.next() * 4096) : out.length - 1 - Math.floor(rng.next() * 4096);
      out[at] = Math.floor(rng.next() * 256);
    }
    return out;
  }
  // Splice: a random chunk of the file copied over another place (plausible-looking protobuf).
  const len = 1 + Math.floor(rng.next() * 256);
  const from = Math.floor(rng.next() * (out.length - len));
  const to = Math.floor(rng.next() * (out.length - len));
  out.copy(out, to, from, from + len);
  return out;
}

describe("fuzzing the loader and inspect", () => {
  it("every mutated or truncated model loads or fails with an EeToolError", () => {
    const cases = Number(process.env.EE_FUZZ_CASES ?? 2000);
    const sources = [CNN, TEXT].map((f) => fs.readFileSync(f));
    const rng = new Rng(20261122);
    const outcomes = { loaded: 0, refused: new Map<string, number>() };
    const started = performance.now();
    for (let i = 0; i < cases; i++) {
      const bytes = mutate(sources[i % sources.length]!, rng);
      const t0 = performance.now();
      try {
        const model = parseModel(bytes, path.dirname(CNN), {}, `case ${i}`);
        summarizeModel(model);
        outcomes.loaded++;
      } catch (e) {
        if (!(e instanceof EeToolError)) throw new Error(`case ${i}: ${(e as Error).stack ?? String(e)}`);
        outcomes.refused.set(e.code, (outcomes.refused.get(e.code) ?? 0) + 1);
      }
      expect(performance.now() - t0).toBeLessThan(5000);
    }
    console.log(`fuzz: ${cases} cases in ${((performance.now() - started) / 1000).toFixed(1)} s: ${outcomes.loaded} loaded, refused ${JSON.stringify(Object.fromEntries(outcomes.refused))}`);
    expect(outcomes.refused.size).toBeGreaterThan(0);
  }, 300_000);
});

describe("fuzzing the inspect command", () => {
  it("mutated models given to `ee-tool inspect` (which also runs them) end in exit 0 or one clear error", () => {
    const cases = Number(process.env.EE_FUZZ_CLI_CASES ?? 30);
    const sources = [CNN, TEXT].map((f) => fs.readFileSync(f));
    const rng = new Rng(99);
    const dir = tmpDir();
    const codes = new Map<string, number>();
    for (let i = 0; i < cases; i++) {
      const out = Buffer.from(sources[i % 2]!);
      const flips = 1 + Math.floor(rng.next() * 4);
      for (let k = 0; k < flips; k++) {
        const at = rng.next() < 0.5 ? Math.floor(rng.next() * 4096) : out.length - 1 - Math.floor(rng.next() * 8192);
        out[at] = Math.floor(rng.next() * 256);
      }
      const file = path.join(dir, `case${i}.onnx`);
      fs.writeFileSync(file, out);
      const r = runCli(["inspect", file]);
      expect([0, 2], `case ${i}: ${r.stderr}`).toContain(r.code);
      if (r.code === 2) {
        expect(r.stderr.trim().split("\n").length).toBe(2);
        const code = /error \[(\w+)\]/.exec(r.stderr)![1]!;
        codes.set(code, (codes.get(code) ?? 0) + 1);
      }
    }
    console.log(`inspect fuzz: ${cases} cases, errors ${JSON.stringify(Object.fromEntries(codes))}`);
  }, 300_000);
});
