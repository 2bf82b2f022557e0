/**
 * `ee-tool eval` for decoder plans: the full model (one session, its KV cache) and the early-exit
 * generator generate greedily from the same prompts, interleaved prompt by prompt (the order
 * alternating), so that load drift hits both alike. Reported beside the plan's predictions:
 * per-token decode latency and tokens per second, layers run, the exit histogram, agreement of the
 * continuations with the full model's (token by token, exact match, ROUGE-L), and, on evaluation
 * text, the teacher-forced perplexity of both and the measured share of differing tokens.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import * as os from "node:os";
import { execFileSync } from "node:child_process";
import { createRequire } from "node:module";
import { loadModel, type OnnxModel } from "../onnx/model.js";
import { createSession, runtimeBytes, type SessionSettings } from "../ort/ort.js";
import { openTokens } from "../data/tokens.js";
import { readDecoderMetadata } from "../ramps/metadata.js";
import { teacherForced } from "../ramps/decoder-heads.js";
import { originalDecoder, truncatedDecoder } from "../stages/decoder-split.js";
import { checkModelHash } from "../plan/write.js";
import type { DecoderKvMode, DecoderPlan } from "../plan/decoder.js";
import { EarlyExitGenerator, type GeneratedToken } from "../runtime/generator.js";
import { EeToolError } from "../errors.js";
import { decoderFeeds, type DecoderLayout } from "../analysis/decoder.js";
import { tensorByteSize } from "../onnx/tensor.js";
import { scoreLogits, confidenceOf } from "../util/logits.js";

const require = createRequire(import.meta.url);

export interface DecoderEvalOptions {
  prompts: string;
  maxNewTokens?: number;
  /** Evaluation text windows [sequences, length] for teacher-forced perplexity and differing share. */
  text?: string;
  eos?: number;
  /** Evaluate the plan's truncated decoder (HELIOS) instead of the plan. */
  truncated?: boolean;
  settings?: SessionSettings;
  onProgress?: (phase: string, done: number, total: number) => void;
}

export interface LatencySummary {
  mean: number;
  p50: number;
  p99: number;
  tokensPerSecond: number;
  prefillMs: number;
}

export interface DecoderEvalReport {
  kind: "decoder";
  mode: "plan" | "truncated";
  /** speculative: lossless, so the teacher-forced figures of the early-exit side are the full model's. */
  kvMode: DecoderKvMode;
  ep: string;
  /** The provider the plan's profile measured on (its latency predictions are for that one). */
  planEp: string;
  /** Intra-op threads both models ran with (null: onnxruntime's default). */
  threads: number | null;
  prompts: number;
  maxNewTokens: number;
  tokens: number;
  full: LatencySummary;
  earlyExit: LatencySummary;
  /** 1 - mean per-token decode latency of the early-exit generator / the full model's. */
  saving: number;
  layers: { total: number; meanAtExit: number; meanRun: number };
  exits: Array<{ exit: number; layers: number; measured: number }>;
  agreement: { tokens: number; exactMatch: number; rougeL: number };
  teacherForced: { sequences: number; tokens: number; perplexityFull: number; perplexityEarlyExit: number; differing: number } | null;
  memory: { weightBytesFull: number; weightBytesTruncated: number; rssFullMB: number; rssTruncatedMB: number } | null;
  /** The plan's predictions (decode latencies at the profiled contexts, teacher-forced shares). */
  predicted: { saving: number; differing: number; bound: number | null; maxDrop: number; stepMs: number; fullStepMs: number; meanExitLayers: number; exitRates: Record<string, number> };
  assertions: { passed: boolean; failures: string[] };
}

function quantile(sorted: Float64Array, q: number): number {
  if (!sorted.length) return NaN;
  const pos = (sorted.length - 1) * q;
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  return sorted[lo]! + (sorted[hi]! - sorted[lo]!) * (pos - lo);
}

function summary(decode: number[], prefill: number[]): LatencySummary {
  const s = Float64Array.from(decode).sort();
  const total = decode.reduce((a, b) => a + b, 0);
  return {
    mean: total / Math.max(1, decode.length), p50: quantile(s, 0.5), p99: quantile(s, 0.99),
    tokensPerSecond: total > 0 ? (1000 * decode.length) / total : 0,
    prefillMs: prefill.reduce((a, b) => a + b, 0) / Math.max(1, prefill.length),
  };
}

/** ROUGE-L F1 of two token sequences (longest common subsequence). */
export function rougeL(a: readonly number[], b: readonly number[]): number {
  if (!a.length || !b.length) return a.length === b.length ? 1 : 0;
  let prev = new Int32Array(b.length + 1);
  let cur = new Int32Array(b.length + 1);
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) cur[j] = a[i - 1] === b[j - 1] ? prev[j - 1]! + 1 : Math.max(prev[j]!, cur[j - 1]!);
    [prev, cur] = [cur, prev];
  }
  const lcs = prev[b.length]!;
  if (lcs === 0) return 0;
  const p = lcs / a.length;
  const r = lcs / b.length;
  return (2 * p * r) / (p + r);
}

async function collect(g: EarlyExitGenerator, prompt: Int32Array, maxNewTokens: number, eos?: number): Promise<GeneratedToken[]> {
  const out: GeneratedToken[] = [];
  for await (const t of g.generate(prompt, { maxNewTokens, ...(eos !== undefined ? { eos } : {}) })) out.push(t);
  return out;
}

function weightBytes(proto: OnnxModel["proto"]): number {
  return (proto.graph!.initializer ?? []).reduce((s, t) => s + tensorByteSize(t), 0);
}

/**
 * Resident memory of a fresh process that loads `proto` into an onnxruntime session and runs one
 * decode step, less that of the same process before loading (MB). A child process each, so that
 * neither model's pages linger in the other's figure.
 */
async function residentMB(model: OnnxModel, proto: OnnxModel["proto"], layout: DecoderLayout): Promise<number> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "ee-rss-"));
  try {
    const file = path.join(dir, "model.onnx");
    fs.writeFileSync(file, runtimeBytes(proto, model.readExternal));
    const feeds = decoderFeeds(proto, layout, [1], 1, 0);
    const spec = Object.fromEntries(Object.entries(feeds).filter(([k]) => (proto.graph!.input ?? []).some((i) => i.name === k)).map(([k, t]) => [k, { type: t.type, dims: t.dims }]));
    const script = `
      const ort = require(${JSON.stringify(require.resolve("onnxruntime-node"))});
      (async () => {
        const before = process.memoryUsage().rss;
        const s = await ort.InferenceSession.create(${JSON.stringify(file)});
        const spec = ${JSON.stringify(spec)};
        const feeds = {};
        for (const [k, v] of Object.entries(spec)) {
          const n = v.dims.reduce((a, b) => a * b, 1);
          feeds[k] = new ort.Tensor(v.type, v.type === "int64" ? new BigInt64Array(n).fill(1n) : v.type === "int32" ? new Int32Array(n).fill(1) : new Float32Array(n), v.dims);
        }
        await s.run(feeds);
        process.stdout.write(String(process.memoryUsage().rss - before));
      })();`;
    const out = execFileSync(process.execPath, ["-e", script], { encoding: "utf8" });
    return Number(out) / 2 ** 20;
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

export async function evaluateDecoderPlan(planPath: string, plan: DecoderPlan, options: DecoderEvalOptions): Promise<DecoderEvalReport> {
  const modelPath = path.resolve(path.dirname(planPath), plan.model.file);
  checkModelHash(modelPath, plan.model.sha256);
  const model = loadModel(modelPath);
  const meta = readDecoderMetadata(model.proto);
  if (!meta) throw new EeToolError("NO_RAMPS", `${modelPath} has no ee-tool exit heads`);
  // The threads the plan's latencies were measured with, unless the caller says otherwise.
  const threads = options.settings?.threads ?? plan.profile.threads ?? undefined;
  const settings: SessionSettings = { ...options.settings, ...(threads ? { threads } : {}) };
  const truncated = options.truncated ?? false;
  const trunc = plan.truncation.chosen;
  if (truncated && !trunc) throw new EeToolError("CONSTRAINT_INFEASIBLE", "the plan has no certified truncation to evaluate", { hint: "Plan with a looser --max-drop, or evaluate the plan itself (without --truncated)." });
  const spec = !truncated && plan.kvMode === "speculative" ? plan.speculative : null;
  if (!truncated && plan.kvMode === "speculative" && !spec) throw new EeToolError("PROFILE_INVALID", "the plan's kv mode is speculative but it holds no speculative configuration", { hint: "Plan again with `ee-tool plan <profile> --kv-mode speculative`." });
  const exitSettings = truncated
    ? [...trunc!.earlier.map((e) => ({ exit: e.id, threshold: e.threshold })), { exit: trunc!.exit, threshold: -Infinity }]
    : spec ? [{ exit: spec.exit, threshold: spec.threshold }] : plan.exits.map((e) => ({ exit: e.id, threshold: e.threshold }));
  const prompts = openTokens(options.prompts, "prompts", meta.layout.vocab, meta.layout.maxPositions);
  const maxNewTokens = options.maxNewTokens ?? 64;
  const full = await EarlyExitGenerator.open(model, { settings });
  const early = await EarlyExitGenerator.open(model, spec
    ? { speculative: { exit: spec.exit, threshold: spec.threshold, maxDraft: spec.maxDraft }, metric: plan.settings.metric, settings }
    : { exits: exitSettings, truncate: truncated, metric: plan.settings.metric, settings });
  const fullDecode: number[] = [];
  const fullPrefill: number[] = [];
  const eeDecode: number[] = [];
  const eePrefill: number[] = [];
  const exitCounts = new Map<number, number>();
  let layersAtExit = 0;
  let layerPasses = 0;
  let generated = 0;
  let agreeTokens = 0;
  let compared = 0;
  let exact = 0;
  let rouge = 0;
  try {
    // Warm both up once.
    await collect(full, prompts.row(0), 4, options.eos);
    await collect(early, prompts.row(0), 4, options.eos);
    for (let i = 0; i < prompts.sequences; i++) {
      const prompt = prompts.row(i);
      const runFull = (): Promise<GeneratedToken[]> => collect(full, prompt, maxNewTokens, options.eos);
      const runEarly = (): Promise<GeneratedToken[]> => collect(early, prompt, maxNewTokens, options.eos);
      let a: GeneratedToken[];
      let b: GeneratedToken[];
      if (i % 2 === 0) {
        a = await runFull();
        b = await runEarly();
      } else {
        b = await runEarly();
        a = await runFull();
      }
      layerPasses += early.stats.layerPasses;
      fullPrefill.push(a[0]!.ms);
      eePrefill.push(b[0]!.ms);
      for (const t of a.slice(1)) fullDecode.push(t.ms);
      for (const t of b.slice(1)) {
        eeDecode.push(t.ms);
        exitCounts.set(t.exit, (exitCounts.get(t.exit) ?? 0) + 1);
        layersAtExit += t.layers;
      }
      generated += b.length - 1;
      const ta = a.map((t) => t.token);
      const tb = b.map((t) => t.token);
      const n = Math.min(ta.length, tb.length);
      for (let j = 0; j < n; j++) if (ta[j] === tb[j]) agreeTokens++;
      compared += Math.max(ta.length, tb.length);
      if (ta.length === tb.length && ta.every((x, j) => x === tb[j])) exact++;
      rouge += rougeL(tb, ta);
      options.onProgress?.("generating", i + 1, prompts.sequences);
    }
  } finally {
    await full.release();
    await early.release();
  }
  const fullS = summary(fullDecode, fullPrefill);
  const eeS = summary(eeDecode, eePrefill);
  const layers = meta.layers;
  const exits = [...exitSettings.map((e) => e.exit), -1]
    .filter((id, i, all) => all.indexOf(id) === i)
    .map((id) => ({ exit: id, layers: id === -1 ? layers : meta.exits.find((e) => e.id === id)!.layers, measured: (exitCounts.get(id) ?? 0) / Math.max(1, generated) }))
    .filter((e) => !(truncated && e.exit === -1));

  // Teacher-forced perplexity and differing share on evaluation text.
  let teacher: DecoderEvalReport["teacherForced"] = null;
  if (options.text) {
    const text = openTokens(options.text, "evaluation text", meta.layout.vocab, meta.layout.maxPositions);
    const session = await createSession(runtimeBytes(model.proto, model.readExternal), settings);
    // Speculative decoding yields the full model's tokens: its teacher-forced figures are the full model's.
    const order = spec ? [] : exitSettings.map((s) => ({ ...s, rec: meta.exits.find((e) => e.id === s.exit)! })).sort((x, y) => x.rec.layers - y.rec.layers);
    let nllFull = 0;
    let nllEarly = 0;
    let differ = 0;
    let count = 0;
    try {
      const rows = Array.from({ length: text.sequences }, (_, i) => i);
      await teacherForced(session, model.proto, meta.layout, text, rows, 16, [meta.layout.logits, ...order.map((o) => o.rec.output)], (out, part) => {
        const v = out[meta.layout.logits]!.dims[2]!;
        const f = out[meta.layout.logits]!.data as Float32Array;
        const xs = order.map((o) => out[o.rec.output]!.data as Float32Array);
        part.forEach((seq, b) => {
          const ids = text.row(seq);
          for (let t = 0; t < text.length - 1; t++) {
            const row = b * text.length + t;
            const target = ids[t + 1]!;
            const fs0 = scoreLogits(f, v, row);
            let chosen = f;
            let pred = fs0.pred;
            for (let k = 0; k < order.length; k++) {
              const sc = scoreLogits(xs[k]!, v, row);
              if (confidenceOf(sc, plan.settings.metric) >= order[k]!.threshold) {
                chosen = xs[k]!;
                pred = sc.pred;
                break;
              }
            }
            nllFull += -logProb(f, v, row, target);
            nllEarly += -logProb(chosen, v, row, target);
            if (pred !== fs0.pred) differ++;
            count++;
          }
        });
      });
    } finally {
      await session.release();
    }
    teacher = { sequences: text.sequences, tokens: count, perplexityFull: Math.exp(nllFull / count), perplexityEarlyExit: Math.exp(nllEarly / count), differing: differ / count };
  }

  let memory: DecoderEvalReport["memory"] = null;
  if (truncated) {
    const small = truncatedDecoder(model.proto, meta, trunc!.exit, trunc!.earlier.map((e) => e.id));
    const orig = originalDecoder(model.proto, meta);
    memory = {
      weightBytesFull: weightBytes(orig), weightBytesTruncated: weightBytes(small),
      rssTruncatedMB: await residentMB(model, small, meta.layout), rssFullMB: await residentMB(model, orig, meta.layout),
    };
  }
  const predicted = truncated ? trunc!.predicted : spec ? spec.predicted : plan.predicted;
  const cert = truncated ? trunc!.certificate : spec ? null : plan.certificate;
  const failures: string[] = [];
  const saving = fullS.mean > 0 ? 1 - eeS.mean / fullS.mean : 0;
  if (teacher && teacher.differing > plan.settings.maxDrop) failures.push(`differing tokens ${(teacher.differing * 100).toFixed(2)}% on the evaluation text exceed the plan's maximum ${(plan.settings.maxDrop * 100).toFixed(2)}%`);
  if (spec && agreeTokens < compared) failures.push(`speculative decoding gave ${compared - agreeTokens} of ${compared} tokens that differ from the full model's greedy ones (it must give none; a near-tie of two logits computed in different passes can flip one)`);
  if ((plan.exits.length || truncated || spec) && saving <= 0) failures.push(`the early-exit generator is not faster than the full model (saving ${(saving * 100).toFixed(1)}%)`);
  return {
    kind: "decoder", mode: truncated ? "truncated" : "plan", kvMode: spec ? "speculative" : meta.layout.cache === "kv" ? "exact" : "recompute", ep: settings.ep ?? "cpu", planEp: plan.profile.ep, threads: settings.threads ?? null,
    prompts: prompts.sequences, maxNewTokens, tokens: generated, full: fullS, earlyExit: eeS, saving,
    layers: { total: layers, meanAtExit: layersAtExit / Math.max(1, generated), meanRun: layerPasses / Math.max(1, generated) },
    exits, agreement: { tokens: agreeTokens / Math.max(1, compared), exactMatch: exact / prompts.sequences, rougeL: rouge / prompts.sequences },
    teacherForced: teacher, memory,
    predicted: {
      saving: predicted.saving, differing: predicted.differingCertify, bound: cert?.bound ?? null, maxDrop: plan.settings.maxDrop,
      stepMs: predicted.stepMs, fullStepMs: predicted.fullStepMs, meanExitLayers: predicted.meanExitLayers,
      exitRates: truncated ? {} : spec ? { [String(spec.exit)]: spec.draftedCertify } : Object.fromEntries(plan.exits.map((e) => [String(e.id), e.rateCertify])),
    },
    assertions: { passed: failures.length === 0, failures },
  };
}

function logProb(x: Float32Array, v: number, row: number, target: number): number {
  let max = -Infinity;
  for (let j = 0; j < v; j++) max = Math.max(max, x[row * v + j]!);
  let sum = 0;
  for (let j = 0; j < v; j++) sum += Math.exp(x[row * v + j]! - max);
  return x[row * v + target]! - max - Math.log(sum);
}
