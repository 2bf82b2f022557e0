import type { Command } from "commander";
import { parseEp } from "../ort/providers.js";
import { loadModel, saveModel } from "../onnx/model.js";
import { insertRamps } from "../ramps/insert.js";
import { EeToolError } from "../errors.js";
import { classifierOnlyNote, info, out } from "./io.js";
import { progressBars } from "./progress.js";
import { table, EP_HELP } from "./format.js";
import type { RampKind, PoolChoice } from "../ramps/build.js";
import { asDecoder, insertDecoderHeads } from "../ramps/decoder-heads.js";
import { renderDecoderInsert } from "./decoder.js";

interface InsertCliOptions {
  ep: string;
  out: string;
  calib: string;
  labels?: string;
  exits: string;
  ramp: string;
  hidden: string;
  pool: string;
  output?: string;
  seed: string;
  fitFraction?: string;
  batch: string;
  threads?: string;
  json?: boolean;
}

function intOption(name: string, v: string, min: number): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < min) throw new EeToolError("USAGE", `${name} must be an integer >= ${min}, got '${v}'`);
  return n;
}

/** Decoder plans certify on held-back sequences; the heads' regression needs few of them. */
const DECODER_FIT_FRACTION = 0.2;

export function registerInsert(program: Command): void {
  program
    .command("insert")
    .description("Find exit points, insert ramps and fit them on part of a calibration set (no labels needed)")
    .argument("<model>", "ONNX classifier, or decoder LM (found by its layout: token ids in, logits [batch, seq, vocab] out, past/present KV pairs)")
    .requiredOption("-o, --out <file>", "augmented model to write (original outputs unchanged, plus ee_exit_<id>)")
    .requiredOption("--calib <data>", "calibration inputs: file.npy (single input), name=a.npy,name2=b.npy, an .npz keyed by input name, or a directory of input_N.pb; for a decoder, token ids [sequences, length] (.npy)")
    .option("--labels <y.npy>", "ground-truth labels; ramps then learn from labels and the model's predictions")
    .option("--exits <spec>", "auto (up to 8 block boundaries spread in depth), all, a count N, or comma-separated ids / tensor names (one id: '3,'); for a decoder: auto (after every layer but the last) or layer counts ('2,4')", "auto")
    .option("--ramp <kind>", "auto (fit linear and mlp ramps at every exit; keep an mlp only where it agrees at least 1 point better on held-out samples), linear (fastest to fit) or mlp (one hidden layer)", "auto")
    .option("--hidden <n>", "hidden width of mlp ramps (capped at the feature width)", "64")
    .option("--pool <how>", "auto (fit both kinds per exit, keep the better), or one kind: cls or mean for [N,S,D] exits, gap or grid for [N,C,H,W]", "auto")
    .option("--output <name>", "the model's logits output, when it has several (default: the first)")
    .option("--seed <n>", "seed for sample selection and initialisation", "0")
    .option("--fit-fraction <f>", "fraction of calibration samples (decoders: sequences) that fit the ramps; the rest is left for profile and plan (default 0.4; 0.2 for decoders, whose plans certify on sequences)")
    .option("--batch <n>", "batch size of the feature-extraction pass", "64")
    .option("--ep <provider>", EP_HELP, "cpu")
    .option("--threads <n>", "onnxruntime intra-op threads (default: onnxruntime's choice)")
    .option("--json", "print the ramp description as JSON on stdout")
    .addHelpText(
      "after",
      "\nExamples:\n  $ ee-tool insert fixtures/cnn/model.onnx --calib fixtures/cnn/calib.npz -o cnn.ee.onnx\n" +
        "  $ ee-tool insert model.onnx --calib input_ids=ids.npy,attention_mask=mask.npy --exits 2,4,6 --ramp mlp -o model.ee.onnx",
    )
    .action(async (modelPath: string, opts: InsertCliOptions, cmd: Command) => {
      parseEp(opts.ep); // a bad --ep fails before any work
      if (!["linear", "mlp", "auto"].includes(opts.ramp)) throw new EeToolError("USAGE", `--ramp must be linear, mlp or auto, got '${opts.ramp}'`);
      if (!["auto", "cls", "mean", "gap", "grid"].includes(opts.pool)) throw new EeToolError("USAGE", `--pool must be auto, cls, mean, gap or grid, got '${opts.pool}'`);
      const fraction = opts.fitFraction === undefined ? undefined : Number(opts.fitFraction);
      if (fraction !== undefined && !(fraction > 0 && fraction < 1)) throw new EeToolError("USAGE", `--fit-fraction must be between 0 and 1, got '${opts.fitFraction}'`);
      const loaded = loadModel(modelPath);
      const bars = progressBars();
      const settings = { ep: opts.ep, ...(opts.threads ? { threads: intOption("--threads", opts.threads, 1) } : {}) };
      const { model, layout, note } = asDecoder(loaded);
      if (note) info(note);
      if (layout) {
        const unused = classifierOnlyNote(cmd, ["labels", "ramp", "hidden", "pool", "output"], "a decoder's exit heads are its own norm and head after a fitted correction, trained on its own next-token distributions");
        if (unused) info(unused);
        const result = await insertDecoderHeads(model, layout, {
          calib: opts.calib, exits: opts.exits, seed: intOption("--seed", opts.seed, 0), fitFraction: fraction ?? DECODER_FIT_FRACTION,
          batchSize: Math.min(16, intOption("--batch", opts.batch, 1)), settings,
          onProgress: (phase, done, total) => bars.update(phase, done, total),
        });
        bars.stop();
        if (result.note) info(result.note);
        const saved = saveModel(result.model, opts.out);
        if (opts.json) out(JSON.stringify({ ...result.metadata, calibration: { ...result.metadata.calibration, fitHashes: undefined }, timings: result.timings }, null, 2));
        else info(renderDecoderInsert(result));
        if (saved.note) info(`note: ${saved.note}`);
        info(`wrote ${saved.path}`);
        return;
      }
      const result = await insertRamps(model, {
        calib: opts.calib,
        ...(opts.labels ? { labels: opts.labels } : {}),
        exits: opts.exits,
        ramp: opts.ramp as RampKind | "auto",
        hidden: intOption("--hidden", opts.hidden, 1),
        pool: opts.pool as PoolChoice,
        ...(opts.output ? { output: opts.output } : {}),
        seed: intOption("--seed", opts.seed, 0),
        fitFraction: fraction ?? 0.4,
        batchSize: intOption("--batch", opts.batch, 1),
        settings,
        onProgress: (phase, done, total) => bars.update(phase, done, total),
      });
      bars.stop();
      const saved = saveModel(result.model, opts.out);
      const meta = result.metadata;
      if (opts.json) {
        out(JSON.stringify({ ...meta, calibration: { ...meta.calibration, fitHashes: undefined }, timings: result.timings }, null, 2));
      } else {
        info(`${result.analysis.candidates.length} candidate exit points; ${meta.ramps.length} ramps fitted on ${meta.calibration.fitSamples} of ${meta.calibration.samples} calibration samples`);
        info(table([
          ["ramp", "exit", "depth", "shape", "kind", "pool", "params", "held-out agreement"],
          ...meta.ramps.map((r) => [String(r.id), String(r.exit), `${(r.depth * 100).toFixed(1)}%`, `[${r.shape.join(",")}]`, r.kind, r.pooling, String(r.parameters), `${(r.fit.holdoutAgreement * 100).toFixed(1)}% (n=${r.fit.holdoutSamples})`]),
        ]));
        info(`feature extraction ${(result.timings.extractMs / 1000).toFixed(2)} s, fitting ${(result.timings.fitMs / 1000).toFixed(2)} s`);
      }
      if (saved.note) info(`note: ${saved.note}`);
      info(`wrote ${saved.path}`);
    });
}
