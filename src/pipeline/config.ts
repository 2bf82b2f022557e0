/**
 * The `ee-tool run` configuration: one JSON file that names the model, its data and the settings of
 * every step. RUN_CONFIG_SCHEMA is the JSON Schema (docs/run.schema.json is this object, checked by
 * a test); loadRunConfig validates a file against it and fills in the defaults, with relative paths
 * resolved from the file's directory.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { EeToolError } from "../errors.js";
import { validate, type Schema } from "../util/schema.js";
import { DEFAULT_TUNE_FRACTION } from "../plan/plan.js";
import { DEFAULT_MEASURE_BUDGET_MS } from "../eval/paths.js";

const dataSet = (what: string): Schema => ({
  description: `${what}: a path in any form --calib takes (.npz keyed by input name, one .npy for a single-input model, name=a.npy,name2=b.npy, or a directory of input_N.pb), or an object with labels`,
  type: ["string", "object"],
  additionalProperties: false,
  required: ["data"],
  properties: {
    data: { type: "string", description: "inputs, in any form --calib takes" },
    labels: { type: "string", description: "integer class labels (.npy), one per sample" },
  },
});

export const RUN_CONFIG_SCHEMA: Schema = {
  $schema: "https://json-schema.org/draft/2020-12/schema",
  $id: "https://ee-tool.dev/schemas/run.schema.json",
  title: "ee-tool run configuration",
  description: "Read by `ee-tool run <config.json>`: insert, profile, plan, eval and report of one model into one output directory, ending with a verdict. Relative paths are resolved from the configuration file's directory. Drops are fractions (0.01 = one percentage point).",
  type: "object",
  additionalProperties: false,
  required: ["model", "calibration", "evaluation"],
  properties: {
    $schema: { type: "string" },
    model: { type: "string", description: "the ONNX classifier (its external data files beside it)" },
    calibration: dataSet("calibration set for insert, profile and plan"),
    evaluation: dataSet("held-out set for eval, never seen by the other steps"),
    out: { type: "string", description: "output directory (default: ee-tool-run beside the configuration); --out overrides it" },
    ep: { type: "string", description: "execution provider for every step (default cpu)" },
    threads: { type: "integer", minimum: 1, description: "onnxruntime intra-op threads (default: onnxruntime's choice)" },
    maxDrop: { type: "number", minimum: 0, maximum: 1, description: "the constraint: maximum accuracy drop (default 0.01)" },
    against: { enum: ["model", "labels"], description: "drop against the model's predictions (default) or the labels" },
    batch: { type: "integer", minimum: 1, description: "batch size the plan optimises and eval measures (default 1)" },
    insert: {
      type: "object",
      additionalProperties: false,
      properties: {
        exits: { type: "string", description: "auto, all, a count or ids/names (default auto)" },
        ramp: { enum: ["auto", "linear", "mlp"], description: "default auto" },
        pool: { enum: ["auto", "cls", "mean", "gap", "grid"], description: "default auto" },
        hidden: { type: "integer", minimum: 1, description: "mlp hidden width (default 64)" },
        output: { type: "string", description: "the logits output, when the model has several" },
        seed: { type: "integer", minimum: 0, description: "default 0" },
        fitFraction: { type: "number", minimum: 0, maximum: 1, description: "share of the calibration set that fits the ramps (default 0.4)" },
      },
    },
    profile: {
      type: "object",
      additionalProperties: false,
      properties: {
        batches: { type: "array", items: { type: "integer", minimum: 1 }, description: "batch sizes to time (default: the run's batch)" },
        budgetMs: { type: "number", minimum: 1, description: "latency budget per batch size in ms (default 10000)" },
      },
    },
    plan: {
      type: "object",
      additionalProperties: false,
      properties: {
        metric: { enum: ["maxprob", "margin", "entropy"], description: "default maxprob" },
        confidence: { type: "number", minimum: 0, maximum: 1, description: "probability that the true drop stays within maxDrop (default 0.95)" },
        tuneFraction: { type: "number", minimum: 0, maximum: 1, description: `share of scored samples that tune thresholds (default ${DEFAULT_TUNE_FRACTION})` },
        emit: { type: "array", items: { enum: ["stages", "single", "truncated"] }, description: "artifacts to write beside the plan (default [\"single\"])" },
        points: { type: "array", items: { type: "number", minimum: 0, maximum: 1 }, description: "also certify operating points at these drops, switched per request in one model (plan --points; docs/serve.md)" },
        measure: { type: "boolean", description: "measure the chosen plan's paths in its runtime on the calibration data and predict its latency from them (default true; false: plan --no-measure, the profile's cost model alone; docs/plan.md)" },
        measureBudgetMs: { type: "number", minimum: 0, description: "time for that measurement's timed calls after a warm-up, in ms (default 8000)" },
      },
    },
    eval: {
      type: "object",
      additionalProperties: false,
      properties: {
        savingTolerance: { type: "number", minimum: 0, description: "allowed shortfall of the measured mean saving below the predicted one, absolute (default 0.1)" },
      },
    },
    report: { type: "boolean", description: "write report.html (default true)" },
    cache: {
      type: "object",
      additionalProperties: false,
      properties: {
        latency: {
          enum: ["same-machine", "any-machine", "never"],
          description: "what a cached profile and eval (the steps that time the model) are worth: same-machine (default) reuses them only where the machine fingerprint (CPU model, cores, memory, platform, onnxruntime, provider, threads) is the one they were measured on, any-machine reuses them wherever, never measures anew on every run",
        },
      },
    },
  },
};

export type LatencyCache = "same-machine" | "any-machine" | "never";

/** A validated configuration with defaults filled in and absolute paths. */
export interface RunConfig {
  file: string;
  model: string;
  calibration: { data: string; labels?: string };
  evaluation: { data: string; labels?: string };
  out: string;
  ep: string;
  threads?: number;
  maxDrop: number;
  against: "model" | "labels";
  batch: number;
  insert: { exits: string; ramp: "auto" | "linear" | "mlp"; pool: "auto" | "cls" | "mean" | "gap" | "grid"; hidden: number; output?: string; seed: number; fitFraction: number };
  profile: { batches: number[]; budgetMs: number };
  plan: { metric: "maxprob" | "margin" | "entropy"; confidence: number; tuneFraction: number; emit: Array<"stages" | "single" | "truncated">; points?: number[]; measure: boolean; measureBudgetMs: number };
  eval: { savingTolerance: number };
  report: boolean;
  cache: { latency: LatencyCache };
}

interface RawConfig {
  model: string;
  calibration: string | { data: string; labels?: string };
  evaluation: string | { data: string; labels?: string };
  out?: string;
  ep?: string;
  threads?: number;
  maxDrop?: number;
  against?: "model" | "labels";
  batch?: number;
  insert?: Partial<RunConfig["insert"]>;
  profile?: Partial<RunConfig["profile"]>;
  plan?: Partial<RunConfig["plan"]>;
  eval?: Partial<RunConfig["eval"]>;
  report?: boolean;
  cache?: Partial<RunConfig["cache"]>;
}

/** Read, validate and complete a configuration; `out` (from --out) overrides the file's. */
export function loadRunConfig(file: string, overrides: { out?: string } = {}): RunConfig {
  if (!fs.existsSync(file)) throw new EeToolError("FILE_NOT_FOUND", `configuration not found: ${file}`);
  let raw: unknown;
  try {
    raw = JSON.parse(fs.readFileSync(file, "utf8"));
  } catch (e) {
    throw new EeToolError("CONFIG_INVALID", `${file} is not JSON: ${(e as Error).message}`);
  }
  const errors = validate(raw, RUN_CONFIG_SCHEMA);
  if (errors.length) {
    throw new EeToolError("CONFIG_INVALID", `${file}: ${errors.slice(0, 3).join("; ")}${errors.length > 3 ? ` (and ${errors.length - 3} more)` : ""}`);
  }
  return completeConfig(raw as RawConfig, path.resolve(file), overrides);
}

function completeConfig(c: RawConfig, file: string, overrides: { out?: string }): RunConfig {
  const dir = path.dirname(file);
  const at = (p: string): string => path.resolve(dir, p);
  // A --calib-style list (name=a.npy,name2=b.npy) resolves each file.
  const dataPath = (p: string): string => (p.includes("=") ? p.split(",").map((part) => { const eq = part.indexOf("="); return `${part.slice(0, eq)}=${at(part.slice(eq + 1))}`; }).join(",") : at(p));
  const set = (s: RawConfig["calibration"]): { data: string; labels?: string } =>
    typeof s === "string" ? { data: dataPath(s) } : { data: dataPath(s.data), ...(s.labels ? { labels: at(s.labels) } : {}) };
  const batch = c.batch ?? 1;
  const batches = c.profile?.batches ?? [batch];
  if (!batches.includes(batch)) {
    throw new EeToolError("CONFIG_INVALID", `${file}: profile.batches ${JSON.stringify(batches)} does not include the run's batch ${batch}`, {
      hint: "The plan is made at `batch` from the profile's latency at that batch size: list it in profile.batches.",
    });
  }
  return {
    file,
    model: at(c.model),
    calibration: set(c.calibration),
    evaluation: set(c.evaluation),
    out: overrides.out ? path.resolve(overrides.out) : at(c.out ?? "ee-tool-run"),
    ep: c.ep ?? "cpu",
    ...(c.threads ? { threads: c.threads } : {}),
    maxDrop: c.maxDrop ?? 0.01,
    against: c.against ?? "model",
    batch,
    insert: {
      exits: c.insert?.exits ?? "auto", ramp: c.insert?.ramp ?? "auto", pool: c.insert?.pool ?? "auto", hidden: c.insert?.hidden ?? 64,
      ...(c.insert?.output ? { output: c.insert.output } : {}), seed: c.insert?.seed ?? 0, fitFraction: c.insert?.fitFraction ?? 0.4,
    },
    profile: { batches: [...new Set(batches)], budgetMs: c.profile?.budgetMs ?? 10000 },
    plan: { metric: c.plan?.metric ?? "maxprob", confidence: c.plan?.confidence ?? 0.95, tuneFraction: c.plan?.tuneFraction ?? DEFAULT_TUNE_FRACTION, emit: c.plan?.emit ?? ["single"], ...(c.plan?.points ? { points: c.plan.points } : {}), measure: c.plan?.measure ?? true, measureBudgetMs: c.plan?.measureBudgetMs ?? DEFAULT_MEASURE_BUDGET_MS },
    eval: { savingTolerance: c.eval?.savingTolerance ?? 0.1 },
    report: c.report ?? true,
    cache: { latency: c.cache?.latency ?? "same-machine" },
  };
}
