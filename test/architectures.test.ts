/**
 * Exit points in real PyTorch exports (opset 17) of torchvision architectures. The graphs are
 * committed with their weights stripped (fixtures/make_arch_graphs.py) and refilled with seeded
 * random values here: structure does not depend on weights.
 */
import { describe, expect, it } from "vitest";
import * as fs from "node:fs";
import * as path from "node:path";
import { loadArch } from "./helpers/arch.js";
import { tmpDir } from "./helpers/fixtures.js";
import { insertRamps } from "../src/ramps/insert.js";
import { encodeNpy } from "../src/data/npy.js";
import { Rng } from "../src/util/rng.js";
import { runtimeBytes, createSession, runSession, ort } from "../src/ort/ort.js";

/**
 * Per architecture: candidates found, how many close a multi-path block, and where that number
 * comes from. The last block of a network is never a candidate: after it only the classifier
 * head is left (under 2% of the FLOPs), so a ramp there would save nothing.
 */
const EXPECTED: Record<string, { candidates: number; blocks: number; why: string }> = {
  resnet50: { candidates: 16, blocks: 15, why: "16 bottleneck blocks (all residual) - the last; plus the stem's max-pool" },
  mobilenet_v2: { candidates: 26, blocks: 10, why: "17 inverted-residual blocks, 10 with a skip connection; the 7 without one are single chains, cut after each layer" },
  efficientnet_b0: { candidates: 27, blocks: 16, why: "16 MBConv blocks, each joined by its squeeze-excitation Mul (9 also residual); layer cuts inside the non-residual ones" },
  densenet121: { candidates: 7, blocks: 3, why: "4 dense blocks - the last (their concatenations close them); stem pool; 3 transitions" },
  vgg11_bn: { candidates: 7, blocks: 0, why: "a plain chain of 8 conv layers - the last: every layer is a cut, none joins paths" },
  convnext_tiny: { candidates: 20, blocks: 17, why: "18 residual blocks - the last; 3 downsampling layers" },
  vit_b_16: { candidates: 24, blocks: 23, why: "12 encoder layers x 2 residual sub-layers (attention, MLP) - the last; the position-embedding add" },
  googlenet: { candidates: 11, blocks: 8, why: "9 inception modules - the last (their Concat closes them); stem and pools" },
  shufflenet_v2_x1_0: { candidates: 17, blocks: 16, why: "16 shuffle units (channel split / concat / shuffle); stem pool" },
  regnet_y_400mf: { candidates: 16, blocks: 15, why: "16 residual Y-blocks - the last; the stem" },
  swin_t: { candidates: 26, blocks: 23, why: "12 Swin blocks x 2 residual sub-layers - the last; patch-merging layers" },
};

describe("exit points in torchvision exports", () => {
  for (const [name, expected] of Object.entries(EXPECTED)) {
    it(`${name}: ${expected.candidates} candidates, ${expected.blocks} block ends (${expected.why}); the augmented model runs and keeps its output`, async () => {
      const model = loadArch(name);
      const dir = tmpDir();
      const rng = new Rng(1);
      const n = 12;
      const x = Float32Array.from({ length: n * 3 * 224 * 224 }, () => rng.normal());
      const calib = path.join(dir, "x.npy");
      fs.writeFileSync(calib, encodeNpy("float32", [n, 3, 224, 224], new Uint8Array(x.buffer)));
      // One ramp kind and pooling: what is checked here is the graph, not the fit (the auto choice
      // fits four heads per exit, and 1000 classes make each a large one).
      const result = await insertRamps(model, { calib, fitFraction: 0.5, batchSize: 3, exits: "3", ramp: "linear", pool: "mean" });
      const found = result.analysis.candidates;
      expect(found.length).toBe(expected.candidates);
      expect(found.filter((c) => c.kind === "block").length).toBe(expected.blocks);
      expect(found.every((c, i) => i === 0 || c.depth > found[i - 1]!.depth)).toBe(true);
      expect(result.metadata.ramps.length).toBe(3);
      // The augmented model loads and runs; its original output is bit-identical (no graph optimisations).
      const feeds = { input: new ort.Tensor("float32", x.subarray(0, 2 * 3 * 224 * 224), [2, 3, 224, 224]) };
      const run = async (bytes: Uint8Array, outputs: string[]): Promise<Record<string, ort.Tensor>> => {
        const s = await createSession(bytes, { optimization: "disabled" });
        try {
          return await runSession(s, feeds, outputs);
        } finally {
          await s.release();
        }
      };
      const before = (await run(runtimeBytes(model.proto), ["logits"])).logits!;
      const rampOutputs = result.metadata.ramps.map((r) => r.output);
      const after = await run(runtimeBytes(result.model.proto), ["logits", ...rampOutputs]);
      expect(Buffer.from((after.logits!.data as Float32Array).buffer).equals(Buffer.from((before.data as Float32Array).buffer))).toBe(true);
      for (const o of rampOutputs) expect(after[o]!.dims).toEqual([2, 1000]);
    }, 180_000);
  }
});
