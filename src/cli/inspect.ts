import type { Command } from "commander";
import { loadModel } from "../onnx/model.js";
import { summarizeModel, type ModelSummary } from "../analysis/summary.js";
import { formatShape } from "../ir/shapes.js";
import { formatBytes, formatCount, table } from "./format.js";
import { out } from "./io.js";

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

export function registerInspect(program: Command): void {
  program
    .command("inspect")
    .description("Show a model's IR version, opsets, inputs/outputs, parameters, op histogram and external data")
    .argument("<model>", "ONNX model file")
    .option("--json", "print one JSON document on stdout")
    .addHelpText("after", "\nExamples:\n  $ ee-tool inspect fixtures/cnn/model.onnx\n  $ ee-tool inspect model.onnx --json | jq .ops")
    .action((file: string, opts: { json?: boolean }) => {
      const summary = summarizeModel(loadModel(file));
      out(opts.json ? JSON.stringify(summary, null, 2) : renderSummary(summary));
    });
}
