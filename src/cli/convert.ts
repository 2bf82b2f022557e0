import type { Command } from "commander";
import { loadModel, saveModel } from "../onnx/model.js";
import { EeToolError } from "../errors.js";
import { formatBytes } from "./format.js";
import { info } from "./io.js";

export function registerConvert(program: Command): void {
  program
    .command("convert")
    .description("Load and save a model: a lossless round trip, or tensors moved into one external data file or back inline")
    .argument("<in>", "ONNX model file")
    .requiredOption("-o, --out <file>", "output model file (written atomically)")
    .option("--external-data <file>", "move every tensor of at least --size-threshold bytes into this file, next to the output")
    .option("--inline", "store every tensor inside the model file")
    .option("--size-threshold <bytes>", "smallest tensor moved to external data", "1024")
    .addHelpText(
      "after",
      "\nExamples:\n  $ ee-tool convert model.onnx -o copy.onnx                        # byte-identical copy\n" +
        "  $ ee-tool convert model.onnx -o big.onnx --external-data big.onnx.data\n" +
        "  $ ee-tool convert big.onnx -o small.onnx --inline",
    )
    .action((input: string, opts: { out: string; externalData?: string; inline?: boolean; sizeThreshold: string }) => {
      if (opts.externalData && opts.inline) throw new EeToolError("USAGE", "--external-data and --inline cannot be combined");
      const threshold = Number(opts.sizeThreshold);
      if (!Number.isInteger(threshold) || threshold < 0) throw new EeToolError("USAGE", `--size-threshold must be a non-negative integer, got '${opts.sizeThreshold}'`);
      const model = loadModel(input);
      const result = saveModel(model, opts.out, {
        ...(opts.externalData ? { externalData: opts.externalData } : {}),
        ...(opts.inline ? { inline: true } : {}),
        sizeThreshold: threshold,
      });
      if (result.note) info(`note: ${result.note}`);
      info(`wrote ${result.path} (${formatBytes(result.bytes)})`);
      if (result.externalData) info(`wrote ${result.externalData.path} (${result.externalData.tensors} tensors, ${formatBytes(result.externalData.bytes)})`);
    });
}
