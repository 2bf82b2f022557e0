import type { Command } from "commander";
import { loadModel } from "../onnx/model.js";
import { summarizeModel, type ModelSummary } from "../analysis/summary.js";
import { formatShape } from "../ir/shapes.js";
import { describeFusion, formatBytes, formatCount, table } from "./format.js";
import { out } from "./io.js";
import { analyzeExits, syntheticFeeds } from "../analysis/analyze.js";
import type { ExitAnalysis } from "../analysis/exits.js";
import { inputSpecs, openCalibration } from "../data/calib.js";
import { readRampMetadata } from "../ramps/metadata.js";
import { noWebGpuAdapter, providerHint, providerStatus, type ProviderStatus } from "../ort/providers.js";
import { asDecoder, analyzeDecoder } from "../ramps/decoder-heads.js";
import { describeDecoder } from "../analysis/decoder.js";
import { readDecoderMetadata } from "../ramps/metadata.js";
import { EeToolError } from "../errors.js";
import { rampFusion, tensorFusion, type FusionChange } from "../stages/fusion.js";

export function renderSummary(s: ModelSummary): string {
  const lines: string[] = [];
  lines.push(`model      ${s.path ?? "(memory)"} (${formatBytes(s.fileBytes)})`);
  lines.push(`ir         ${s.irVersion}   opsets ${s.opsets.map((o) => `${o.domain}:${o.version}`).join(", ")}`);
  lines.push(`producer   ${[s.producer.name, s.producer.version].filter(Boolean).join(" ") || "(none)"}`);
  lines.push(`parameters ${formatCount(s.parameters.count)} in ${s.parameters.initializers} initializers (${formatBytes(s.parameters.bytes)})`);
  lines.push(`nodes      ${s.nodes}${s.subgraphs ? ` (${s.subgraphs} subgraphs)` : ""}${s.functions ? `, ${s.functions} functions` : ""}`);
  lines.push("");
  lines.push("inputs");
  lines.push(table(s.inputs.map((v) => ["  " + v.name, v.type, formatShape(v.shape ?? undefined)])));
  lines.push("outputs");
  lines.push(table(s.outputs.map((v) => ["  " + v.name, v.type, formatShape(v.shape ?? undefined)])));
  lines.push("");
  lines.push("ops");
  lines.push(table(s.ops.map((o) => ["  " + o.op, String(o.count)])));
  if (s.externalData.length) {
    lines.push("");
    lines.push("external data");
    lines.push(table(s.externalData.map((e) => ["  " + e.location, `${e.tensors} tensors`, formatBytes(e.bytes)])));
  }
  const meta = Object.keys(s.metadata);
  if (meta.length) {
    lines.push("");
    lines.push("metadata");
    lines.push(table(meta.map((k) => ["  " + k, `${s.metadata[k]!.length} chars`])));
  }
  return lines.join("\n");
}

/** The candidates table; with `fusion` (inspect --fusion), what each cut does to onnxruntime's fused graph. */
export function renderExits(a: ExitAnalysis, fusion?: ReadonlyMap<string, FusionChange | null>): string {
  const lines = [`candidate exit points (main input '${a.mainInput}', output '${a.output}', ${formatCount(a.totalFlops)}FLOP per batch)`];
  lines.push(table([
    ["  id", "kind", "depth", "layout", "shape", "tensor", "crossing", ...(fusion ? [FUSION_HEADER] : [])],
    ...a.candidates.map((c) => [`  ${c.id}`, c.kind, `${(c.depth * 100).toFixed(1)}%`, c.layout, `[${c.shape.slice(1).join(",")}]`, c.tensor, c.crossing.join(" ") || "-", ...(fusion ? [describeFusion(fusion.get(c.tensor))] : [])]),
  ]));
  return lines.join("\n");
}

/** Column of inspect --fusion. */
const FUSION_HEADER = "cut in onnxruntime's CPU graph";

/** The providers table of `inspect --providers`. */
export function renderProviders(list: readonly ProviderStatus[]): string {
  return "execution providers of this onnxruntime build (--ep)\n" + table([
    ["  provider", "in the npm package", "runs here", "why not"],
    ...list.map((p) => [`  ${p.name}`, p.bundled ? "bundled" : "downloaded by its install script", p.available ? "yes" : "no", p.reason ?? ""]),
  ]) + list.filter((p) => p.name === "webgpu" && p.reason && noWebGpuAdapter(p.reason)).map((p) => `\n  hint (webgpu): ${providerHint(p.reason!)}`).join("");
}

export function registerInspect(program: Command): void {
  program
    .command("inspect")
    .description("Show a model's IR version, opsets, inputs/outputs, parameters, op histogram and external data")
    .argument("[model]", "ONNX model file")
    .option("--providers", "list the execution providers this onnxruntime build lists, each tried here on a one-node model (no model needed)")
    .option("--json", "print one JSON document on stdout")
    .option("--no-exits", "skip the exit-point analysis (it runs the model once on a small batch)")
    .option("--calib <data>", "run the exit-point analysis on the first two samples of this data instead of zeros")
    .option("--fusion", "for each candidate exit (each ramp, in a model from ee-tool insert), what its cut does to onnxruntime's fused CPU graph: the fusions it breaks (one optimisation of the model per exit)")
    .addHelpText(
      "after",
      "\nExamples:\n  $ ee-tool inspect fixtures/cnn/model.onnx\n  $ ee-tool inspect model.onnx --json | jq .exits.candidates\n  $ ee-tool inspect model.onnx --fusion\n" +
        "  $ ee-tool inspect model.onnx --calib input_ids=ids.npy,attention_mask=mask.npy",
    )
    .action(async (file: string | undefined, opts: { json?: boolean; exits: boolean; calib?: string; providers?: boolean; fusion?: boolean }) => {
      if (opts.providers) {
        const list = await providerStatus();
        if (opts.json) out(JSON.stringify({ providers: list }, null, 2));
        else out(renderProviders(list));
        if (!file) return;
      }
      if (!file) throw new EeToolError("USAGE", "inspect needs a model file (or --providers)");
      const model = loadModel(file);
      const summary = summarizeModel(model);
      let exits: ExitAnalysis | undefined;
      const dec = asDecoder(model);
      const layout = readDecoderMetadata(model.proto)?.layout ?? dec.layout;
      if (layout) {
        if (opts.fusion) throw new EeToolError("USAGE", "--fusion covers classifiers, not decoders", { hint: "For a decoder, ee-tool profile times each layer's exit in the runtime's graph." });
        const found = opts.exits ? await analyzeDecoder(dec.model, layout) : undefined;
        const notes = [dec.note, found?.note].filter((n): n is string => !!n);
        const decoder = { layout: found?.layout ?? layout, ...(notes.length ? { note: notes.join("; ") } : {}), ...(found ? { exits: found.exits.map((e) => ({ afterLayer: e.layer + 1, tensor: e.candidate.tensor, depth: e.candidate.depth })) } : {}) };
        if (opts.json) out(JSON.stringify({ ...summary, decoder }, null, 2));
        else {
          let text = renderSummary(summary) + "\n\n" + notes.map((n) => n + "\n").join("") + describeDecoder(layout);
          if (decoder.exits) {
            text += "\nexit points (the residual stream after each layer; the last is where the model's own head starts)\n" + table([
              ["  after layer", "depth", "tensor"],
              ...decoder.exits.map((e) => [`  ${e.afterLayer}`, `${(e.depth * 100).toFixed(1)}%`, e.tensor]),
            ]);
          }
          out(text);
        }
        return;
      }
      const meta = readRampMetadata(model.proto);
      if (opts.fusion && !meta && !opts.exits) throw new EeToolError("USAGE", "--fusion needs the exit-point analysis (drop --no-exits)", { hint: "It keeps each candidate's tensor alive in turn, so it needs the candidates first." });
      if (opts.exits) {
        const feeds = opts.calib ? openCalibration(opts.calib, model.proto).probeFeeds() : syntheticFeeds(inputSpecs(model.proto), 2);
        exits = await analyzeExits(model, feeds, meta ? { output: meta.output } : {});
      }
      // --fusion: a model from insert, each of its ramps alone (as profile records it); otherwise
      // each candidate's tensor kept alive, as a ramp reading it would keep it.
      const byRamp = opts.fusion && meta ? await rampFusion(model) : undefined;
      const byTensor = opts.fusion && !meta && exits ? await tensorFusion(model, exits.output, exits.candidates.map((c) => c.tensor)) : undefined;
      const ramps = meta?.ramps.map((r) => (byRamp ? { ...r, fusion: byRamp.get(r.id) ?? null } : r));
      if (opts.json) {
        const withFusion = exits && byTensor ? { ...exits, candidates: exits.candidates.map((c) => ({ ...c, fusion: byTensor.get(c.tensor) ?? null })) } : exits;
        out(JSON.stringify({ ...summary, ...(withFusion ? { exits: withFusion } : {}), ...(ramps ? { ramps } : {}) }, null, 2));
      } else {
        let text = renderSummary(summary);
        if (exits) text += "\n\n" + renderExits(exits, byTensor);
        if (meta) {
          text += "\n\nramps (ee-tool insert)\n" + table([
            ["  id", "exit", "depth", "pool", "output", "held-out agreement", ...(byRamp ? [FUSION_HEADER] : [])],
            ...meta.ramps.map((r) => [`  ${r.id}`, String(r.exit), `${(r.depth * 100).toFixed(1)}%`, r.pooling, r.output, `${(r.fit.holdoutAgreement * 100).toFixed(1)}%`, ...(byRamp ? [describeFusion(byRamp.get(r.id))] : [])]),
          ]);
        }
        out(text);
      }
    });
}
