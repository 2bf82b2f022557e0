/**
 * Step records of `ee-tool run`: each step writes `steps/<step>.json` in the output directory after
 * its outputs, with the content hashes of its inputs, its settings and the hashes of what it wrote.
 * A step whose key (inputs, settings, tool version, and for the steps that time the model the
 * machine, see machineFingerprint) equals the record's, and whose outputs are still there unchanged,
 * is skipped. A step's outputs are the next step's inputs, so a change reaches everything after it.
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { loadModel } from "../onnx/model.js";
import { allTensors } from "../onnx/walk.js";
import { isExternal } from "../onnx/tensor.js";
import { externalRef } from "../onnx/external.js";
import { ort } from "../ort/ort.js";
import { sha256File, sha256Text } from "../util/hash.js";
import { writeBytesAtomic } from "../util/atomic.js";
import { TOOL_VERSION } from "../ramps/insert.js";

export interface StepRecord {
  step: string;
  key: string;
  tool: string;
  finished: string;
  ms: number;
  inputs: Record<string, string>;
  settings: unknown;
  machine: MachineFingerprint | null;
  /** Output files, relative to the output directory, with their SHA-256. */
  outputs: Record<string, string>;
}

/** What a latency figure depends on besides the model: the hardware and the software that ran it. */
export interface MachineFingerprint {
  cpu: string;
  cores: number;
  memoryGiB: number;
  platform: string;
  onnxruntime: string;
  ep: string;
  threads: number | null;
}

export function machineFingerprint(ep: string, threads: number | null): MachineFingerprint {
  return {
    cpu: os.cpus()[0]?.model.trim() ?? "unknown",
    cores: os.cpus().length,
    memoryGiB: Math.round(os.totalmem() / 2 ** 30),
    platform: `${process.platform}-${process.arch}`,
    onnxruntime: ort.env.versions.node ?? ort.env.versions.common,
    ep,
    threads,
  };
}

/** The external data files a model names (resolved beside it). */
export function externalDataFiles(file: string): string[] {
  const locations = new Set<string>();
  for (const t of allTensors(loadModel(file).proto)) if (isExternal(t)) locations.add(externalRef(t).location);
  return [...locations].sort().map((loc) => path.resolve(path.dirname(file), loc));
}

/** A model file and the external data files it names, hashed (keys `label` and `label:<data file>`). */
export function hashModelFiles(file: string, label: string): Record<string, string> {
  const out: Record<string, string> = { [label]: sha256File(file) };
  for (const f of externalDataFiles(file)) out[`${label}:${path.relative(path.dirname(file), f)}`] = sha256File(f);
  return out;
}

/**
 * Files named by a data argument (one path, a directory of input_N.pb, or name=file,... lists),
 * hashed. Keys are `label` or `label:<part>`.
 */
export function hashDataFiles(arg: string, label: string): Record<string, string> {
  const out: Record<string, string> = {};
  const parts = arg.includes("=") ? arg.split(",").map((p) => [p.slice(0, p.indexOf("=")), p.slice(p.indexOf("=") + 1)] as const) : [["", arg] as const];
  for (const [name, file] of parts) {
    const key = name ? `${label}:${name}` : label;
    if (fs.existsSync(file) && fs.statSync(file).isDirectory()) {
      for (const f of fs.readdirSync(file).filter((x) => /^input_\d+\.pb$/.test(x)).sort()) out[`${key}:${f}`] = sha256File(path.join(file, f));
    } else if (fs.existsSync(file)) out[key] = sha256File(file);
  }
  return out;
}

export function stepKey(step: string, inputs: Record<string, string>, settings: unknown, machine: MachineFingerprint | null): string {
  return sha256Text(JSON.stringify({ step, tool: TOOL_VERSION, inputs, settings, machine }));
}

const recordPath = (outDir: string, step: string): string => path.join(outDir, "steps", `${step}.json`);

/** The step's record when its key matches and every output is still there with the recorded hash. */
export function validRecord(outDir: string, step: string, key: string): StepRecord | undefined {
  const file = recordPath(outDir, step);
  if (!fs.existsSync(file)) return undefined;
  let rec: StepRecord;
  try {
    rec = JSON.parse(fs.readFileSync(file, "utf8")) as StepRecord;
  } catch {
    return undefined;
  }
  if (rec.key !== key) return undefined;
  for (const [rel, hash] of Object.entries(rec.outputs)) {
    const p = path.join(outDir, rel);
    if (!fs.existsSync(p) || sha256File(p) !== hash) return undefined;
  }
  return rec;
}

export function writeRecord(outDir: string, rec: Omit<StepRecord, "outputs" | "tool" | "finished">, outputs: string[]): StepRecord {
  const full: StepRecord = {
    ...rec,
    tool: TOOL_VERSION,
    finished: new Date().toISOString(),
    outputs: Object.fromEntries(outputs.map((p) => [path.relative(outDir, p), sha256File(p)])),
  };
  fs.mkdirSync(path.join(outDir, "steps"), { recursive: true });
  writeBytesAtomic(recordPath(outDir, rec.step), JSON.stringify(full, null, 1) + "\n");
  return full;
}

/** Forget a step (before it runs again), so that a failed re-run never leaves a stale record behind. */
export function dropRecord(outDir: string, step: string): void {
  fs.rmSync(recordPath(outDir, step), { force: true });
}
