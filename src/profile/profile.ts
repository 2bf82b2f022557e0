/**
 * `ee-tool profile`: measured latency of every stage, every ramp and the whole model at each batch
 * size, and every ramp's prediction and confidence on the calibration samples that did not fit it.
 */
import * as os from "node:os";
import * as path from "node:path";
import { createHash } from "node:crypto";
import type { OnnxModel } from "../onnx/model.js";
import { checkBatch, openCalibration, openLabels, relocateDataArg } from "../data/calib.js";
import { readRampMetadata, unpackHashes, type RampMetadata } from "../ramps/metadata.js";
import { splitWithTypes, partFeeds } from "../stages/runner.js";
import { prefixPart } from "../stages/split.js";
import { createSession, runSession, runtimeBytes, sessionsThatFit, ort, type SessionSettings } from "../ort/ort.js";
import { createRunnable, type RunnableSession } from "../ort/sync.js";
import { measurePlacement, type Placement } from "../ort/placement.js";
import { ortProviderName, parseEp } from "../ort/providers.js";
import { eachRampAlone, optimizeForRuntime, partSettings, type RuntimeModel } from "../stages/optimize.js";
import { fusionChanges } from "../stages/fusion.js";
import { batchMode, batchTensorsAt, buildExitModel, exitOutputs, THRESHOLDS_INPUT, type BatchMode, type RuntimeForm } from "../stages/exit-graph.js";
import type { StagePart } from "../stages/split.js";
import { openSegmentChain, runSegments, type Segments } from "../stages/segments.js";
import { serializeModel } from "../onnx/model.js";
import { differenceName, measure, type LatencyStats, type TimedItem } from "./timing.js";
import { emptySamples, encodeSamples, type ArraySpec, type SampleData } from "./samples.js";
import { summarizeSamples, type RampSummary } from "./summary.js";
import { EeToolError } from "../errors.js";
import { makeValueInfo } from "../ir/shapes.js";
import { tensorByteSize } from "../onnx/tensor.js";
import { DataType } from "../onnx/dtype.js";
import { TOOL_VERSION } from "../ramps/insert.js";
import { sha256File } from "../util/hash.js";
import { writeFileAtomic } from "../util/atomic.js";
import { scoreLogits } from "../util/logits.js";
import { chooseClassifierThreads, groupByThreads, shouldChooseThreads, type ClassifierThreadChoice } from "./threads.js";

export const PROFILE_FORMAT = "ee-tool.profile/1";
/** Samples per shard slice: shard i of n takes slices i, i+n, i+2n, ... */
export const SHARD_SLICE = 256;
export const MIN_SCORED = 50;
/**
 * Sessions the model and the no-exit runtime are each timed in: every path is predicted as a
 * multiple of the one and from differences against the other, and one session in about four or
 * five profiles ran 3-6% off the others of its graph all along (timing.ts). The median of three
 * outvotes one.
 */
export const REFERENCE_SESSIONS = 3;

/**
 * Sessions each exit's runtime graph is timed in (fewer where memory is short): the runtime's
 * sessions of one exit path differ as the model's do (one ViT profile: exit 4's three sessions
 * 0.520, 0.553 and 0.556 ms not taken). They take turns round by round (timing.ts, `turn`), so
 * three cost a round what one does, and each exit's figures are over all its sessions' runs
 * (`pools`), as eval's saving is over its three runtime sessions. (The middle session's figures,
 * as for the references, would have a third of the runs each: noisier costs, and plans that take
 * the exits that came out cheap by chance; docs/profile.md.)
 */
export const EXIT_SESSIONS = 3;

/** The timed items of an item's sessions: `model#0`, `model#1`, ... */
function sessionItems(name: string, n = REFERENCE_SESSIONS): string[] {
  return Array.from({ length: n }, (_, k) => `${name}#${k}`);
}

export interface BatchLatency {
  /** The model, timed in REFERENCE_SESSIONS sessions: the one whose median is the middle one (timing.ts, medians). */
  model: LatencyStats;
  /**
   * The median (ms per call) of each session behind `model` and `noExit`, and behind each exit's
   * `pass` (in the order of `exits`), to see one that ran off. Absent in older profiles (`exits`
   * also in those made before exits were timed in several sessions).
   */
  sessions?: { model: number[]; noExit: number[]; exits?: number[][] };
  /** Each stage timed alone, in its own call (so each pays one call's fixed cost). */
  stages: LatencyStats[];
  /**
   * prefixes[k]: stages 0..k in one call (the tensors later stages need, reduced to one number
   * each). What reaching cut k costs in the one-call runtime, where tensors stay in place.
   */
  prefixes: LatencyStats[];
  /** Each stage in place: prefixes[k] less prefixes[k-1] (mean and median), the first with the call's fixed cost. */
  inPlace: Array<{ mean: number; p50: number }>;
  ramps: LatencyStats[];
  /** One bare onnxruntime call that reads the first exit tensor and returns its sum (ReduceSum): the fixed cost of a call. */
  callOverhead: LatencyStats;
  /**
   * The runtime's one-call early-exit model with every ramp active and thresholds that never
   * fire: what all exits cost on top of the model when no sample takes them.
   */
  allExits: LatencyStats;
  /**
   * Each ramp as the runtime runs it when it is the plan's only exit (the model optimised with that
   * ramp alone, its confidence test and If in place), in the order of `Profile.ramps`: `fire` with
   * a threshold every row meets (the whole path to that exit), `pass` with one no row meets (the
   * whole model through an exit that does not fire). The planner's cost model is built from these
   * (plan/problem.ts). Absent in profiles made before ee-tool measured them.
   *
   * `fire` is timed right after a call that took the same path, `fireAfterDeeper` right after a
   * call of the same session that went through the whole model (`pass`): what a request that exits
   * there pays when the request before it went deeper and left later layers' weights in cache
   * instead of its own (6-17% more on the first exit of the fixtures at batch 1). The planner
   * weighs the two by the share of requests that go deeper. Absent in older profiles.
   */
  exits?: Array<{ ramp: number; fire: LatencyStats; fireAfterDeeper?: LatencyStats; pass: LatencyStats; adds: LatencyStats }>;
  /**
   * The runtime's graph with no exit (the model optimised without ramps, in the early-exit model's
   * form): the reference of each exit's `adds`, the median over rounds of `pass` less this, timed
   * in the same round (timing.ts, paired differences). Timed, like the model, in REFERENCE_SESSIONS
   * sessions: the one with the middle median, and the differences against it. Present with `exits`.
   */
  noExit?: LatencyStats;
  /**
   * The two forms the runtime can take, each with every exit active and none firing (ms per call,
   * measured as the runtime runs them): `oneCall`, the If model (allExits); `segments`, one call
   * per segment with its ramp fused in, the exits decided in JavaScript. `segmentsParts`: the
   * segments form added up from its parts timed alone (the stages, and each ramp less the call it
   * no longer makes; absent in older profiles, whose `segments` was this sum). `faster` is the form
   * the plan uses on this provider.
   */
  forms?: { oneCall: number; segments: number; segmentsParts?: number; faster: RuntimeForm };
  /**
   * Sum over stages of the mean and of the median, and their ratio to the whole model's. Running
   * S stages costs S - 1 more calls than running the model; `net` subtracts those calls' overhead.
   * `inPlace`: the stages in place add up to the last prefix (all stages in one call, cut from
   * the optimised graph), a measurement separate from the whole model's.
   */
  stageSum: {
    mean: number; p50: number; ratioMean: number; ratioP50: number; netP50: number; netRatioP50: number;
    inPlaceP50: number; inPlaceRatioP50: number;
  };
}

export interface Profile {
  format: typeof PROFILE_FORMAT;
  tool: string;
  created: string;
  /** file: the model's path relative to the profile's directory. */
  model: { file: string; sha256: string; output: string; classes: number; mainInput: string };
  environment: {
    onnxruntime: string; node: string; platform: string; cpu: string; cores: number;
    executionProvider: string; threads: number | null;
    /**
     * How the threads were chosen when the user set none (CPU, unsharded, with latency): the full
     * model timed both ways at each batch size, and the threads each batch size was then measured
     * with. `threads` is theirs where all agree, else null (see threadsAt).
     */
    threadChoice?: ClassifierThreadChoice;
    /** Whether stages and ramps were cut from onnxruntime's optimised graph (stages/optimize.ts); null without latency. */
    optimizedGraph?: boolean | null;
    /**
     * Where onnxruntime ran the nodes of the runtime's graph (every exit active, none firing; ort/placement.ts):
     * nodes per provider, copy nodes added, op types that fell back from the chosen provider. Null without latency.
     */
    placement?: Placement | null;
  };
  settings: {
    batches: number[]; shard: { index: number; count: number } | null; calibrationHash: string; calibrationSamples: number;
    labels: boolean; budgetMs: number; tolerance: number;
    /**
     * The --calib argument, its files relative to the profile's directory: where plan measures the
     * chosen plan's paths by default (eval/paths.ts). Absent in older profiles.
     */
    calibrationData?: string;
  };
  /**
   * fusion: how onnxruntime's optimised graph of the model changes when this ramp alone stays in it
   * (op type -> count with the ramp less count without; ramp nodes not counted): a fused op lost at
   * the cut shows as a negative count, the ops it splits into as positive ones. Empty: the cut
   * breaks nothing; null: the graph was not optimised (another provider, or latency not measured).
   */
  ramps: Array<{ id: number; exit: number; tensor: string; depth: number; output: string; parameters: number; stage: number; fusion?: Record<string, number> | null }>;
  /** weightBytes: bytes of the initializers only this stage uses (what truncating before it saves loading). */
  stages: Array<{ index: number; inputs: string[]; outputs: string[]; weightBytes: number }>;
  latency: Record<string, BatchLatency> | null;
  samples: {
    scored: number;
    skippedFitted: number;
    skippedOtherShards: number;
    file: string;
    sha256: string;
    arrays: ArraySpec[];
  };
  summary: { finalAccuracy: number | null; ramps: RampSummary[] };
}

export interface ProfileOptions {
  calib: string;
  labels?: string;
  batches?: number[];
  settings?: SessionSettings;
  shard?: { index: number; count: number };
  budgetMs?: number;
  tolerance?: number;
  /** Skip latency measurement (per-sample data only). */
  latency?: boolean;
  onProgress?: (phase: string, done: number, total: number) => void;
}

export interface ProfileResult {
  profile: Profile;
  samples: SampleData;
}

/** Batch sizes profiled by default: 1 and 8 on the CPU; 1, 8, 32 and 64 on GPU providers, which serve batches. */
export function defaultBatches(ep: string | undefined): number[] {
  return parseEp(ep).name === "cpu" ? [1, 8] : [1, 8, 32, 64];
}

/** The intra-op threads a profile's latencies at `batch` were measured with (null: onnxruntime's default). */
export function threadsAt(profile: Pick<Profile, "environment">, batch: number): number | null {
  const env = profile.environment;
  return env.threadChoice?.batches[String(batch)]?.threads ?? env.threads;
}

export function modelHash(model: OnnxModel): string {
  if (!model.path) throw new EeToolError("INTERNAL", "model has no file to hash");
  return sha256File(model.path);
}

export function rampMetadataOrThrow(model: OnnxModel): RampMetadata {
  const meta = readRampMetadata(model.proto);
  if (!meta || meta.ramps.length === 0) {
    throw new EeToolError("NO_RAMPS", `${model.path ?? "the model"} has no ee-tool ramps`, {
      hint: "Run `ee-tool insert <model> --calib <data> -o model.ee.onnx` first, and profile its output.",
    });
  }
  return meta;
}

export async function profileModel(model: OnnxModel, options: ProfileOptions): Promise<ProfileResult> {
  const meta = rampMetadataOrThrow(model);
  const progress = options.onProgress ?? (() => undefined);
  // Spinning off: stages run as separate sessions, each with its own thread pool (see SessionSettings.spinning).
  const settings: SessionSettings = { spinning: false, ...options.settings, optimization: options.settings?.optimization ?? "all" };
  const calib = openCalibration(options.calib, model.proto);
  const labels = options.labels ? openLabels(options.labels, calib.size) : undefined;
  const batches = options.batches ?? defaultBatches(settings.ep);
  for (const b of batches) checkBatch(calib.specs, b, "profile --batch");

  // Which samples to score: not those that fitted the ramps, and only this shard's slices.
  const hashes = calib.sampleHashes();
  const fitted = unpackHashes(meta.calibration.fitHashes);
  const chosen: number[] = [];
  let skippedFitted = 0;
  let skippedOther = 0;
  for (let i = 0; i < calib.size; i++) {
    if (options.shard && Math.floor(i / SHARD_SLICE) % options.shard.count !== options.shard.index) {
      skippedOther++;
      continue;
    }
    if (fitted.has(hashes[i]!)) skippedFitted++;
    else chosen.push(i);
  }
  if (chosen.length < MIN_SCORED) {
    throw new EeToolError("TOO_FEW_SAMPLES", `only ${chosen.length} calibration samples remain to score (${skippedFitted} fitted the ramps${skippedOther ? `, ${skippedOther} belong to other shards` : ""}); at least ${MIN_SCORED} are needed`);
  }

  // Per-sample predictions and confidences, one batched pass of the augmented model.
  const samples = emptySamples(chosen.length, meta.ramps.length);
  const rampOutputs = meta.ramps.map((r) => r.output);
  const session = await createSession(runtimeBytes(model.proto, model.readExternal), settings);
  const B = calib.passBatch(64);
  try {
    for (let s = 0; s < chosen.length; s += B) {
      const idx = chosen.slice(s, s + B);
      const out = await runSession(session, calib.passFeeds(idx), [meta.output, ...rampOutputs]);
      const final = out[meta.output]!.data as Float32Array;
      idx.forEach((sample, j) => {
        const i = s + j;
        samples.index[i] = sample;
        samples.hash.set(Buffer.from(hashes[sample]!, "hex"), i * 8);
        samples.final[i] = scoreLogits(final, meta.classes, j).pred;
        samples.label[i] = labels ? labels[sample]! : -1;
        meta.ramps.forEach((r, k) => {
          const sc = scoreLogits(out[r.output]!.data as Float32Array, meta.classes, j);
          const dst = samples.ramps[k]!;
          dst.pred[i] = sc.pred;
          dst.maxprob[i] = sc.maxprob;
          dst.margin[i] = sc.margin;
          dst.entropy[i] = sc.entropy;
        });
      });
      progress("score", Math.min(chosen.length, s + B), chosen.length);
    }
  } finally {
    await session.release();
  }

  // Stages and ramps as separate models, timed at each batch size. They are cut from the graph
  // onnxruntime optimises for this machine (see stages/optimize.ts), as the runtime runs it; the
  // portable split gives the stages' structure and weight bytes.
  const probe = calib.passFeeds(chosen.slice(0, Math.min(calib.passBatch(2), chosen.length)));
  const split = await splitWithTypes(model, probe, settings);
  const rampStage = new Map<number, number>();
  split.ramps.forEach((r, i) => rampStage.set(r.index, split.stages.findIndex((s) => s.outputs.includes(split.ramps[i]!.inputs[0]!))));
  // One intra-op thread or the default at each batch size, whichever runs the model faster here
  // (profile/threads.ts); not for a shard, whose choice could differ from its siblings' and stop
  // them merging.
  let threadChoice: ClassifierThreadChoice | undefined;
  if (options.latency !== false && !options.shard && shouldChooseThreads(settings, os.cpus().length)) {
    progress("threads", 0, 1);
    const feeds = new Map(batches.filter((b) => b <= chosen.length).map((b) => [b, calib.feedsFor(chosen.slice(0, b))] as const));
    threadChoice = await chooseClassifierThreads(runtimeBytes(split.original, model.readExternal), meta.output, feeds, settings);
    progress("threads", 1, 1);
  }
  const groups = groupByThreads(batches, threadChoice, settings);
  let latency: Record<string, BatchLatency> | null = null;
  let optimizedGraph: boolean | null = null;
  let fusion: Map<number, Record<string, number> | null> = new Map();
  let placement: Placement | null = null;
  if (options.latency !== false) {
    // Each group of batch sizes timed with its threads; the graph facts (fusion, placement) are the first group's.
    const byBatch: Record<string, BatchLatency> = {};
    for (const [k, g] of groups.entries()) {
      const r = await measureLatency(model, split.original, g.batches, chosen, calib.feedsFor.bind(calib), probe, g.settings, options, progress);
      Object.assign(byBatch, r.latency);
      if (k === 0) ({ optimizedGraph, fusion, placement } = r);
    }
    latency = Object.fromEntries(batches.map((b) => [String(b), byBatch[String(b)]!]));
  }
  const encoded = encodeSamples(samples);
  const profile: Profile = {
    format: PROFILE_FORMAT,
    tool: TOOL_VERSION,
    created: new Date().toISOString(),
    model: { file: path.basename(model.path ?? "model.onnx"), sha256: modelHash(model), output: meta.output, classes: meta.classes, mainInput: meta.mainInput },
    environment: {
      onnxruntime: ort.env.versions.node ?? ort.env.versions.common, node: process.version, platform: `${process.platform}-${process.arch}`,
      cpu: os.cpus()[0]?.model ?? "unknown", cores: os.cpus().length, executionProvider: settings.ep ?? "cpu", threads: groups.length === 1 ? groups[0]!.settings.threads ?? null : null,
      ...(threadChoice ? { threadChoice } : {}), optimizedGraph, placement,
    },
    settings: {
      batches, shard: options.shard ?? null, calibrationHash: createHash("sha256").update(hashes.join("")).digest("hex"),
      calibrationSamples: calib.size, calibrationData: relocateDataArg(options.calib, (f) => path.resolve(f)), labels: !!labels, budgetMs: options.budgetMs ?? 10_000, tolerance: options.tolerance ?? 0.02,
    },
    ramps: meta.ramps.map((r) => ({ id: r.id, exit: r.exit, tensor: r.tensor, depth: r.depth, output: r.output, parameters: r.parameters, stage: rampStage.get(r.id)!, fusion: fusion.get(r.id) ?? null })),
    stages: split.stages.map((s) => ({
      index: s.index, inputs: s.inputs, outputs: s.outputs,
      weightBytes: (s.proto.graph!.initializer ?? []).reduce((a, t) => a + tensorByteSize(t), 0),
    })),
    latency,
    samples: { scored: chosen.length, skippedFitted, skippedOtherShards: skippedOther, file: "", sha256: encoded.sha256, arrays: encoded.arrays },
    summary: summarizeSamples(samples),
  };
  return { profile, samples };
}

interface TimedPart {
  part: StagePart;
  session: RunnableSession;
  /** What the timed call fetches. */
  fetches: string[];
}

/**
 * A part whose float outputs are each reduced to one number inside onnxruntime (ReduceSum), so a
 * timed call measures the part's work and not the copy of its outputs into JavaScript, which the
 * one-call runtime never makes (at batch 8 on the CNN fixture that copy costs as much as a stage).
 */
export function reducedOutputs(part: StagePart): { proto: OnnxModel["proto"]; fetches: string[] } {
  const g = part.proto.graph!;
  const nodes = [...(g.node ?? [])];
  const outputs = (g.output ?? []).map((o) => {
    if (o.type?.tensor_type?.elem_type !== DataType.FLOAT) return o;
    const name = `${o.name}/ee_timing_sum`;
    nodes.push({ op_type: "ReduceSum", input: [o.name!], output: [name], name, attribute: [{ name: "keepdims", type: 2, i: 0 }] });
    return makeValueInfo(name, DataType.FLOAT, []);
  });
  return { proto: { ...part.proto, graph: { ...g, node: nodes, output: outputs } }, fetches: outputs.map((o) => o.name!) };
}

async function openTimed(parts: StagePart[], readExternal: OnnxModel["readExternal"], settings: SessionSettings): Promise<TimedPart[]> {
  const out: TimedPart[] = [];
  for (const part of parts) {
    const r = reducedOutputs(part);
    out.push({ part, fetches: r.fetches, session: await createRunnable(runtimeBytes(r.proto, readExternal), settings, r.fetches) });
  }
  return out;
}

/**
 * Latency of the whole model, every stage, every ramp, one bare call and the all-exits model at
 * each batch size, interleaved (timing.ts). Every call goes straight to onnxruntime's native binding,
 * as the runtime's do.
 */
async function measureLatency(
  model: OnnxModel,
  original: OnnxModel["proto"],
  batches: number[],
  chosen: number[],
  feedsFor: (idx: number[]) => Record<string, ort.Tensor>,
  probe: Record<string, ort.Tensor>,
  settings: SessionSettings,
  options: ProfileOptions,
  progress: (phase: string, done: number, total: number) => void,
): Promise<{ latency: Record<string, BatchLatency>; optimizedGraph: boolean; fusion: Map<number, Record<string, number> | null>; placement: Placement | null }> {
  const rt = await optimizeForRuntime(model, settings);
  const rtSettings = partSettings(rt, settings);
  const { alone, none: noRamps } = await eachRampAlone(model, settings);
  const fusion = fusionChanges(noRamps, alone);
  const split = await splitWithTypes({ ...model, proto: rt.proto }, probe, rtSettings);
  const meta = rt.meta;
  const opened: RunnableSession[] = [];
  const openBytes = async (bytes: Uint8Array, s: SessionSettings, outputs: string[]): Promise<RunnableSession> => {
    const r = await createRunnable(bytes, s, outputs);
    opened.push(r);
    return r;
  };
  const open = (proto: OnnxModel["proto"], s: SessionSettings, outputs: string[]): Promise<RunnableSession> => openBytes(runtimeBytes(proto, model.readExternal), s, outputs);
  const latency: Record<string, BatchLatency> = {};
  let placement: Placement | undefined;
  try {
    // Every tensor the parts exchange, at each batch size, from one pass of the stages.
    const pools = new Map<number, Map<string, ort.Tensor>>();
    for (const b of batches) {
      if (b > chosen.length) throw new EeToolError("TOO_FEW_SAMPLES", `batch size ${b} is larger than the ${chosen.length} samples to profile`);
      pools.set(b, new Map(Object.entries(feedsFor(chosen.slice(0, b)))));
    }
    for (const s of split.stages) {
      const session = await createRunnable(runtimeBytes(s.proto, model.readExternal), rtSettings, s.outputs);
      try {
        for (const pool of pools.values()) for (const [k, v] of Object.entries(await session.run(partFeeds(s, pool), s.outputs))) pool.set(k, v);
      } finally {
        await session.release();
      }
    }
    const stages = await openTimed(split.stages, model.readExternal, rtSettings);
    const ramps = await openTimed(split.ramps, model.readExternal, rtSettings);
    const prefixes = await openTimed(split.stages.map((_, k) => prefixPart(split.stages, k)), model.readExternal, rtSettings);
    opened.push(...[...stages, ...ramps, ...prefixes].map((p) => p.session));
    const wholes: RunnableSession[] = [];
    for (let k = 0; k < REFERENCE_SESSIONS; k++) wholes.push(await open(original, settings, [meta.output]));
    // A bare call: read the first cut tensor, return one number (as a timed stage does).
    const bare = await open({
      ir_version: 8, opset_import: [{ domain: "", version: 13 }],
      graph: { name: "call_overhead", node: [{ op_type: "ReduceSum", input: ["x"], output: ["y"], attribute: [{ name: "keepdims", type: 2, i: 0 }] }], input: [makeValueInfo("x", DataType.FLOAT)], output: [makeValueInfo("y", DataType.FLOAT, [])] },
    }, settings, ["y"]);
    const never = meta.ramps.map((r) => ({ ramp: r.id, output: r.output, threshold: Infinity }));
    const { batchTensors, rowRemoval } = batchTensorsAt(rt.proto, never, meta.output);
    // The segments form as the runtime runs it (stages/segments.ts): every ramp fused into the
    // segment that ends at its exit, tensors handed from call to call, exits decided in JavaScript.
    const fused = await splitWithTypes({ ...model, proto: rt.proto }, probe, rtSettings, { fuse: true });
    // A fused stage's first output is its ramp's logits: the exits in the segments' order.
    const chainExits = fused.stages.slice(0, -1).map((st, i) => {
      const e = never.find((x) => x.output === st.outputs[0]);
      if (!e) throw new Error(`segment ${i} does not start its outputs with a ramp's logits`);
      return e;
    });
    const chain: Segments = { segments: await openSegmentChain(fused.stages, chainExits, meta.output, (proto, outputs) => open(proto, rtSettings, outputs)), exits: chainExits, batchTensors, rowRemoval };
    const chainThresholds = new Float64Array(chain.exits.length).fill(Infinity);
    const allExits = new Map<BatchMode, RunnableSession>();
    const single = new Map<boolean, { exits: RunnableSession[][]; none: RunnableSession[] }>();
    const cut0 = split.stages[0]!.outputs[0]!;
    for (const b of batches) {
      const mode = batchMode(b, rowRemoval);
      let ee = allExits.get(mode);
      if (!ee) {
        // As the runtime builds it: thresholds fed through the model's input (here: none fires).
        const proto = buildExitModel(rt.proto, { exits: never, metric: "maxprob", classes: meta.classes, output: meta.output, mode, batchTensors, thresholdInput: THRESHOLDS_INPUT, thresholdDefault: false });
        ee = await open(proto, rtSettings, exitOutputs(mode));
        allExits.set(mode, ee);
        const f = pools.get(b)!;
        placement ??= await measurePlacement(runtimeBytes(proto, model.readExternal), rtSettings, {
          ...Object.fromEntries(Object.keys(probe).map((k) => [k, f.get(k)!])), [THRESHOLDS_INPUT]: new ort.Tensor("float32", new Float32Array(never.length).fill(Infinity), [never.length]),
        }, exitOutputs(mode), ortProviderName(settings.ep));
      }
      // Batch 1 and larger batches differ in form (batchMode); each exit's own model decides row removal.
      let one = single.get(b === 1);
      if (!one) {
        // The runtime's graph with m's ramps as its exits, in the form of this batch size.
        const form = (m: RuntimeModel): { bytes: Uint8Array; outputs: string[] } => {
          const exit = m.meta.ramps.map((r) => ({ ramp: r.id, output: r.output, threshold: Infinity }));
          const at = batchTensorsAt(m.proto, exit, meta.output);
          const f = batchMode(b, at.rowRemoval);
          const proto = buildExitModel(m.proto, { exits: exit, metric: "maxprob", classes: meta.classes, output: meta.output, mode: f, batchTensors: at.batchTensors, thresholdInput: THRESHOLDS_INPUT, thresholdDefault: false });
          return { bytes: runtimeBytes(proto, model.readExternal), outputs: exitOutputs(f) };
        };
        const none: RunnableSession[] = [];
        const noneGraph = form(noRamps);
        for (let k = 0; k < REFERENCE_SESSIONS; k++) none.push(await openBytes(noneGraph.bytes, partSettings(noRamps, settings), noneGraph.outputs));
        // Every exit in as many sessions as fit (about twice its graph's bytes each, in half the free memory).
        let perExit = 0;
        const exits: RunnableSession[][] = [];
        for (const m of alone) {
          const g = form(m);
          perExit ||= sessionsThatFit(EXIT_SESSIONS, 2 * g.bytes.byteLength * alone.length);
          const own: RunnableSession[] = [];
          for (let k = 0; k < perExit; k++) own.push(await openBytes(g.bytes, partSettings(m, settings), g.outputs));
          exits.push(own);
        }
        one = { exits, none };
        single.set(b === 1, one);
      }
      const pool = pools.get(b)!;
      const feeds = Object.fromEntries(Object.keys(probe).map((k) => [k, pool.get(k)!]));
      const thresholds = (n: number, t: number): ort.Tensor => new ort.Tensor("float32", new Float32Array(n).fill(t), [n]);
      const eeFeeds = { ...feeds, [THRESHOLDS_INPUT]: thresholds(never.length, Infinity) };
      const fireFeeds = { ...feeds, [THRESHOLDS_INPUT]: thresholds(1, -Infinity) };
      const passFeeds = { ...feeds, [THRESHOLDS_INPUT]: thresholds(1, Infinity) };
      const noneFeeds = { ...feeds, [THRESHOLDS_INPUT]: thresholds(0, Infinity) };
      const noExits = one.none;
      const cutTensor = { x: pool.get(cut0)! };
      const eeSession = ee;
      // Each timed call gets fresh copies of its inputs, as a request brings its own: a tensor
      // onnxruntime-node has not seen before cost it 10-13 µs more per call than a reused one
      // (measured for a small thresholds tensor on the CNN fixture's runtime).
      const timed = (name: string, session: RunnableSession, f: Record<string, ort.Tensor>, fetches: readonly string[], after?: Record<string, ort.Tensor>): TimedItem => ({
        name, prepare: () => freshFeeds(f), run: (x) => session.run(x as Record<string, ort.Tensor>, fetches),
        ...(after ? { before: () => session.run(freshFeeds(after), fetches) } : {}),
      });
      const items: TimedItem[] = [
        ...wholes.map((w, k) => timed(`model#${k}`, w, feeds, [meta.output])),
        { name: "segments", prepare: () => freshFeeds(feeds), run: (x) => runSegments(chain, x as Record<string, ort.Tensor>, chainThresholds, "maxprob", meta.classes, meta.output) },
        timed("overhead", bare, cutTensor, ["y"]),
        timed("allExits", eeSession, eeFeeds, eeSession.outputNames),
        ...noExits.map((x, k) => timed(`noExit#${k}`, x, noneFeeds, x.outputNames)),
        // An exit's sessions take turns, one per round, each timed taken, taken after a deeper call, and not taken.
        ...one.exits.flatMap((own, i) => own.flatMap((x, k) => [
          timed(`fire${i}#${k}`, x, fireFeeds, x.outputNames), timed(`fireAfterDeeper${i}#${k}`, x, fireFeeds, x.outputNames, passFeeds), timed(`pass${i}#${k}`, x, passFeeds, x.outputNames),
        ].map((item) => ({ ...item, turn: { of: own.length, at: k } })))),
        ...[...stages, ...ramps, ...prefixes].map((s) => timed(`${s.part.kind}${s.part.index}`, s.session, partFeeds(s.part, pool), s.fetches)),
      ];
      const stats = await measure(items, {
        budgetMs: options.budgetMs ?? 10_000, tolerance: options.tolerance ?? 0.02,
        medians: ["model", "noExit"].map((name) => ({ name, of: sessionItems(name) })),
        pools: one.exits.flatMap((own, i) => ["fire", "fireAfterDeeper", "pass"].map((kind) => ({ name: `${kind}${i}`, of: sessionItems(`${kind}${i}`, own.length) }))),
        differences: one.exits.map((_, i) => ({ item: `pass${i}`, reference: "noExit" })),
        onRound: (d, t) => progress(`latency b=${b}`, d, t),
      });
      const st = stages.map((s) => stats.get(`stage${s.part.index}`)!);
      const whole1 = stats.get("model")!;
      const sumMean = st.reduce((a, s) => a + s.mean, 0);
      const sumP50 = st.reduce((a, s) => a + s.p50, 0);
      const overhead = stats.get("overhead")!;
      const netP50 = sumP50 - (st.length - 1) * overhead.p50;
      const pre = prefixes.map((s) => stats.get(`prefix${s.part.index}`)!);
      const inPlace = pre.map((p, k) => ({ mean: p.mean - (pre[k - 1]?.mean ?? 0), p50: p.p50 - (pre[k - 1]?.p50 ?? 0) }));
      const all = pre[pre.length - 1]!;
      const sessionsOf = (name: string, n = REFERENCE_SESSIONS): number[] => sessionItems(name, n).map((item) => stats.get(item)!.p50);
      latency[String(b)] = {
        model: whole1,
        sessions: { model: sessionsOf("model"), noExit: sessionsOf("noExit"), exits: one.exits.map((own, i) => sessionsOf(`pass${i}`, own.length)) },
        stages: st,
        prefixes: pre,
        inPlace,
        ramps: ramps.map((s) => stats.get(`ramp${s.part.index}`)!),
        callOverhead: overhead,
        allExits: stats.get("allExits")!,
        exits: alone.map((m, i) => ({ ramp: m.meta.ramps[0]!.id, fire: stats.get(`fire${i}`)!, fireAfterDeeper: stats.get(`fireAfterDeeper${i}`)!, pass: stats.get(`pass${i}`)!, adds: stats.get(differenceName(`pass${i}`, "noExit"))! })),
        noExit: stats.get("noExit")!,
        forms: runtimeForms(stats.get("allExits")!.p50, stats.get("segments")!.p50, st.map((x) => x.p50), ramps.map((r) => stats.get(`ramp${r.part.index}`)!.p50), overhead.p50),
        stageSum: {
          mean: sumMean, p50: sumP50, ratioMean: sumMean / whole1.mean, ratioP50: sumP50 / whole1.p50, netP50, netRatioP50: netP50 / whole1.p50,
          inPlaceP50: all.p50, inPlaceRatioP50: all.p50 / whole1.p50,
        },
      };
    }
  } finally {
    for (const s of opened) await s.release();
  }
  return { latency, optimizedGraph: rt.optimized, fusion, placement: placement ?? null };
}

/**
 * New tensors with the same contents (each with its own buffer, as a request's inputs are). The
 * thresholds input stays the same tensor: the runtime feeds the plan's own on every call.
 */
export function freshFeeds(feeds: Record<string, ort.Tensor>): Record<string, ort.Tensor> {
  const out: Record<string, ort.Tensor> = {};
  for (const [k, t] of Object.entries(feeds)) {
    if (k === THRESHOLDS_INPUT || !ArrayBuffer.isView(t.data)) {
      out[k] = t;
      continue;
    }
    const src = t.data as Float32Array;
    const data = new (src.constructor as Float32ArrayConstructor)(new ArrayBuffer(src.byteLength));
    data.set(src);
    out[k] = new ort.Tensor(t.type, data, t.dims);
  }
  return out;
}

/**
 * Segments must beat the one-call form by this much to be chosen: both are measured with every
 * exit active, but the one-call form's paths are also measured exit by exit, while the segments
 * form's are added up from parts timed alone, so a near tie goes to the one measured more directly.
 */
export const SEGMENTS_MARGIN = 0.05;

/**
 * Both runtime forms with every exit active and none firing (BatchLatency.forms): each measured
 * as the runtime runs it, and the segments form also added up from its parts timed alone (each
 * stage, and each ramp less the call it no longer makes), whose shortfall is the cost of handing
 * tensors from call to call.
 */
export function runtimeForms(oneCall: number, segments: number, stages: number[], ramps: number[], call: number): NonNullable<BatchLatency["forms"]> {
  const segmentsParts = stages.reduce((a, b) => a + b, 0) + ramps.reduce((a, r) => a + Math.max(0, r - call), 0);
  return { oneCall, segments, segmentsParts, faster: segments < (1 - SEGMENTS_MARGIN) * oneCall ? "segments" : "one-call" };
}

/** Write a profile and its binary sidecar (`<name>.bin`), both atomically. */
export function writeProfile(file: string, result: ProfileResult, modelPath?: string): { json: string; sidecar: string } {
  const s = result.profile.settings;
  const dir = path.dirname(path.resolve(file));
  const settings = s.calibrationData === undefined ? s : { ...s, calibrationData: relocateDataArg(s.calibrationData, (f) => path.relative(dir, path.resolve(f))) };
  return writeWithSidecar(file, { ...result.profile, settings }, result.samples, modelPath);
}

/**
 * Write a profile (classifier or decoder) and its per-sample sidecar (`<name>.bin`), both
 * atomically; the model path is stored relative to the profile.
 */
export function writeWithSidecar<P extends { model: { file: string }; samples: { file: string; sha256: string; arrays: ArraySpec[] } }>(file: string, profile: P, samples: SampleData, modelPath?: string): { json: string; sidecar: string } {
  const encoded = encodeSamples(samples);
  const sidecar = `${file.replace(/\.json$/, "")}.bin`;
  const model = modelPath ? { ...profile.model, file: path.relative(path.dirname(path.resolve(file)), path.resolve(modelPath)) } : profile.model;
  const out: P = { ...profile, model, samples: { ...profile.samples, file: path.basename(sidecar), sha256: encoded.sha256, arrays: encoded.arrays } };
  writeFileAtomic(sidecar, (w) => w.write(encoded.bytes));
  writeFileAtomic(file, (w) => w.write(Buffer.from(JSON.stringify(out, null, 1) + "\n")));
  return { json: file, sidecar };
}

export { serializeModel };
