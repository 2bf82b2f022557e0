import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { execFileSync, spawnSync } from "node:child_process";

export const ROOT = path.resolve(import.meta.dirname, "../..");
export const CNN = path.join(ROOT, "fixtures/cnn/model.onnx");
export const TEXT = path.join(ROOT, "fixtures/text/model.onnx");
export const VIT = path.join(ROOT, "fixtures/vit/model.onnx");
export const FIXTURE_MODELS = [CNN, TEXT, VIT, path.join(ROOT, "fixtures/lm/model.onnx"), path.join(ROOT, "fixtures/gpt/model.onnx")];
/** The decoder LM fixture (fixtures/lm): token ids in, logits and a KV cache out. */
export const LM_DIR = path.join(ROOT, "fixtures/lm");
export const LM = path.join(LM_DIR, "model.onnx");
/** The second decoder fixture (fixtures/gpt): GPT-2 style, opaque cache names, positions made in the graph. */
export const GPT_DIR = path.join(ROOT, "fixtures/gpt");

export function tmpDir(prefix = "ee-test-"): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Run the built CLI (bin/ee-tool.js) as a user would. */
export function runCli(args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv; bin?: string } = {}): CliResult {
  const r = spawnSync(process.execPath, [path.join(ROOT, opts.bin ?? "bin/ee-tool.js"), ...args], {
    cwd: opts.cwd ?? ROOT,
    ...(opts.env ? { env: opts.env } : {}),
    encoding: "utf8",
    maxBuffer: 64 * 1024 * 1024,
  });
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

export { execFileSync };
