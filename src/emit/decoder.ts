/** Writing a decoder plan, and its artifact: the truncated decoder (HELIOS), as an ordinary ONNX decoder. */
import * as fs from "node:fs";
import * as path from "node:path";
import type { DecoderPlan } from "../plan/decoder.js";
import { checkModelHash } from "../plan/write.js";
import { loadModel, saveModel } from "../onnx/model.js";
import { readDecoderMetadata } from "../ramps/metadata.js";
import { truncatedDecoder } from "../stages/decoder-split.js";
import { writeBytesAtomic } from "../util/atomic.js";
import { EeToolError } from "../errors.js";
import { tensorByteSize } from "../onnx/tensor.js";

export async function writeDecoderPlan(plan: DecoderPlan, file: string, modelPath: string, profileFile: string, options: { emit?: string[]; outDir?: string }): Promise<DecoderPlan> {
  checkModelHash(modelPath, plan.model.sha256);
  const planDir = path.dirname(path.resolve(file));
  let out: DecoderPlan = { ...plan, model: { ...plan.model, file: path.relative(planDir, modelPath) }, profile: { ...plan.profile, file: path.relative(planDir, path.resolve(profileFile)) } };
  if (options.emit?.includes("truncated")) {
    const t = plan.truncation.chosen;
    if (!t) {
      throw new EeToolError("CONSTRAINT_INFEASIBLE", "no truncation is certified under this constraint, so there is no truncated decoder to emit", {
        hint: "Relax --max-drop or --confidence, or profile more calibration sequences; the plan's truncation table shows each depth's differing share.",
      });
    }
    const dir = path.resolve(options.outDir ?? planDir);
    try {
      fs.mkdirSync(dir, { recursive: true });
    } catch (e) {
      throw new EeToolError("WRITE_FAILED", `cannot create ${dir}: ${(e as Error).message}`);
    }
    const model = loadModel(modelPath);
    const meta = readDecoderMetadata(model.proto)!;
    const proto = truncatedDecoder(model.proto, meta, t.exit, t.earlier.map((e) => e.id));
    const target = path.join(dir, `truncated-${t.layers}of${plan.layers}.onnx`);
    const saved = saveModel({ ...model, proto }, target);
    const weightBytes = (proto.graph!.initializer ?? []).reduce((s, x) => s + tensorByteSize(x), 0);
    out = { ...out, artifacts: {
      truncated: {
        file: path.relative(planDir, saved.path), layers: t.layers, of: plan.layers, exit: t.exit, weightBytes,
        // A token leaves at the first of these outputs whose confidence (plan.settings.metric) reaches its threshold, else at `logits`.
        earlier: t.earlier.map((e) => ({ output: meta.exits.find((x) => x.id === e.id)!.output, threshold: e.threshold })),
      },
    } };
  }
  writeBytesAtomic(file, JSON.stringify(out, null, 1) + "\n");
  return out;
}
