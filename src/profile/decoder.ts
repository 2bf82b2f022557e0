/**
 * `ee-tool profile` for decoder LMs.
 *
 * Tokens: every exit head's greedy token and confidence (max probability, margin, entropy) at every
 * position of the calibration sequences that did not fit the heads, teacher-forced (the exact KV
 * mode keeps the cache what the full model computes, so under teacher forcing each token sees
 * the hidden states the profile sees), with the full model's greedy token and the text's next
 * token. Stored in the sample sidecar format, one row per token, the rows of a sequence together
 * (`index` is the sequence, `hash` its content hash).
 *
 * Latency: every segment the runtime could run, that is every stretch of layers between two of
 * the inserted exits (first stretch from the tokens, last to the model's own head), one decode
 * call after a past of each context length, carrying 1, 2, 4 or 8 positions (deferred layers in
 * the exact KV mode run the tokens that exited earlier together with the next one). Also the full
 * model's decode step and its prefill at each context length, and each head alone.
 */
import { mean } from "../util/stats.js";
import * as os from "node:os";
import { createHash } from "node:crypto";
import type { OnnxModel } from "../onnx/model.js";
import type { ModelProto } from "../onnx/types.js";
import { ort, createSession, runtimeBytes, type SessionSettings } from "../ort/ort.js";
import { createRunnable, type RunnableSession } from "../ort/sync.js";
import { decoderFeeds, cacheTensor, type DecoderLayout } from "../analysis/decoder.js";
import { openTokens, tokenSetHash, type TokenSet } from "../data/tokens.js";
import { readDecoderMetadata, unpackHashes, type DecoderMetadata } from "../ramps/metadata.js";
import { teacherForced } from "../ramps/decoder-heads.js";
import { decoderSegments, originalDecoder, type DecoderSegment } from "../stages/decoder-split.js";
import { Graph } from "../ir/graph.js";
import { needed } from "../ir/needed.js";
import { tensorByteSize } from "../onnx/tensor.js";
import { EeToolError } from "../errors.js";
import { TOOL_VERSION } from "../ramps/insert.js";
import { emptySamples, type ArraySpec, type SampleData } from "./samples.js";
import { measure, type LatencyStats, type TimedItem } from "./timing.js";
import { freshFeeds, modelHash, PROFILE_FORMAT, writeWithSidecar } from "./profile.js";
import { scoreLogits } from "../util/logits.js";
import { oneThreadWins, shouldChooseThreads } from "./threads.js";

export const DEFAULT_CONTEXTS = [32, 128, 512];
export const CARRIED = [1, 2, 4, 8];
/** Positions a speculative check is timed on (the token fed and up to 15 drafts). */
export const VERIFY_CARRIED = [1, 2, 4, 8, 16];

export interface SegmentLatency {
  /** Exit ids bounding the stretch: from (null: the tokens) to (null: the model's own head). */
  from: number | null;
  to: number | null;
  layers: [number, number];
  /** p50 ms, [context][carried]. */
  p50: number[][];
}

export interface VerifyLatency extends SegmentLatency {
  /**
   * A cycle's first draft call: one position through the layers up to the exit, timed right after
   * this check (carrying 4 positions), p50 ms per context. The later draft calls of a cycle follow
   * a draft call: the segment's own p50 (timed after itself).
   */
  firstDraft: number[];
}

export interface DecoderLatency {
  contexts: number[];
  carried: number[];
  segments: SegmentLatency[];
  /** The full model's decode step (one token) at each context, p50 ms. */
  fullStep: number[];
  /** The full model's prefill of `contexts[i]` tokens, p50 ms. */
  prefill: number[];
  /** Each exit head alone on one position (id -> p50 ms), and the model's own head. */
  heads: Record<string, number>;
  /**
   * Speculative mode's check: the layers after each exit with the model's own head at every
   * position, at each context, on `carried` positions, each timed right after a draft call (the
   * layers up to the exit on one position), as a cycle runs them (a model with a KV cache; absent
   * in older profiles).
   */
  verify?: { carried: number[]; segments: VerifyLatency[] };
  /** Runs that converged / all. */
  converged: [number, number];
}

export interface DecoderProfile {
  format: typeof PROFILE_FORMAT;
  kind: "decoder";
  tool: string;
  created: string;
  model: { file: string; sha256: string };
  decoder: {
    layers: number;
    /** "kv": exact KV mode; "none": an export without a cache, every step recomputes the prefix. */
    cache: "kv" | "none";
    vocab: number;
    exits: Array<{ id: number; layers: number; depth: number }>;
    /** Bytes of KV cache one token adds per layer (key and value). */
    kvBytesPerTokenPerLayer: number;
    /** Bytes of weights the whole model holds, and those only layers after each exit need. */
    weightBytes: number;
    weightBytesAfter: Record<string, number>;
  };
  environment: {
    onnxruntime: string; node: string; platform: string; cpu: string; cores: number; executionProvider: string; threads: number | null;
    /** How `threads` was chosen when the user did not set it: the full model's greedy decoding timed both ways. */
    threadChoice?: ThreadChoice;
  };
  settings: { calibrationHash: string; sequences: number; budgetMs: number };
  samples: {
    /** Token rows (sequences x (length - 1)). */
    scored: number;
    sequences: number;
    tokensPerSequence: number;
    skippedFitted: number;
    /**
     * The full model's own greedy continuations, scored teacher-forced like the text: sequence
     * `rows[g]` (an index into the scored sequences) cut to its first `prompt` tokens and continued
     * to the window's length. Their token rows follow the text's in the sidecar; positions from
     * prompt - 1 on predict generated tokens. What the runtime meets when it generates, so the
     * speculative search is tuned on them (absent in older profiles).
     */
    generated?: { sequences: number; prompt: number; rows: number[] };
    file: string;
    sha256: string;
    arrays: ArraySpec[];
  };
  summary: {
    /** Teacher-forced next-token accuracy of the full model, and of each exit against the full model's token. */
    finalAccuracy: number;
    exits: Array<{ id: number; layers: number; agreement: number; meanMaxprob: number; accuracy: number }>;
  };
  latency: DecoderLatency | null;
}

export interface DecoderProfileOptions {
  calib: string;
  settings?: SessionSettings;
  contexts?: number[];
  budgetMs?: number;
  latency?: boolean;
  batchSize?: number;
  /** Profiled sequences continued by the full model's greedy decoding and scored too (default 64; 0: none). */
  generate?: number;
  onProgress?: (phase: string, done: number, total: number) => void;
}

/** Default count of profiled sequences continued by the full model (generated text for speculative tuning). */
export const DEFAULT_GENERATED = 64;

/**
 * Past lengths to time at: the requested ones, which must leave room for the most carried
 * positions within a learned position table; by default DEFAULT_CONTEXTS, those that fit, and the
 * longest that fits when some do not.
 */
export function profileContexts(requested: readonly number[] | undefined, maxPositions: number | null, carried: number): number[] {
  const room = maxPositions === null ? Infinity : maxPositions - carried;
  if (requested) {
    const over = requested.filter((c) => c > room);
    if (over.length) {
      throw new EeToolError("USAGE", `--contexts ${over.join(",")}: the model has ${maxPositions} positions, and a timed step after a past of c tokens carries up to ${carried}`, {
        hint: `Use contexts of at most ${room}.`,
      });
    }
    return [...requested];
  }
  if (room < 1) throw new EeToolError("USAGE", `the model has ${maxPositions} positions: too few to time a decode step carrying ${carried}`);
  const fit = DEFAULT_CONTEXTS.filter((c) => c <= room);
  return fit.length === DEFAULT_CONTEXTS.length ? fit : [...fit, room];
}

export function decoderMetadataOrThrow(model: OnnxModel): DecoderMetadata {
  const meta = readDecoderMetadata(model.proto);
  if (!meta) throw new EeToolError("NO_RAMPS", "the decoder has no ee-tool exit heads", { hint: "Run `ee-tool insert <decoder.onnx> --calib <ids.npy> -o model.ee.onnx` first, and profile its output." });
  return meta;
}

/** Bytes of weights only the layers after each exit need (what loading up to that exit leaves out). */
export function weightsAfter(augmented: ModelProto, meta: DecoderMetadata): { total: number; after: Record<string, number> } {
  const view = new Graph(augmented.graph!);
  const original = originalDecoder(augmented, meta);
  const bytesOf = (names: Set<string>): number => {
    let s = 0;
    for (const t of augmented.graph!.initializer ?? []) if (names.has(t.name ?? "")) s += tensorByteSize(t);
    return s;
  };
  const initsOf = (targets: string[]): Set<string> => {
    const s = new Set<string>();
    for (const n of needed(view, targets, new Set())) for (const i of view.inputsOf(n)) if (view.isInitializer(i)) s.add(i);
    return s;
  };
  const allOutputs = (original.graph!.output ?? []).map((o) => o.name ?? "");
  const full = initsOf(allOutputs);
  const total = bytesOf(full);
  const after: Record<string, number> = {};
  for (const e of meta.exits) {
    const kept = initsOf([e.output, ...meta.layout.layers.slice(0, e.layers).flatMap((l) => [l.presentKey, l.presentValue])]);
    const only = new Set([...full].filter((n) => !kept.has(n)));
    after[String(e.id)] = bytesOf(only);
  }
  return { total, after };
}

function ms(s: LatencyStats | undefined): number {
  return s ? s.p50 : NaN;
}

export interface ThreadChoice {
  /** 1 when one intra-op thread was faster, null: onnxruntime's default. */
  threads: number | null;
  /** Mean full decode step (ms) of greedy continuations of calibration prompts, each way. */
  oneThreadMs: number;
  defaultMs: number;
}

/**
 * The full model's greedy continuation of `prompt` by `count` tokens, each decode step feeding the
 * previous step's presents (a model without a cache recomputes the prefix), and the mean
 * milliseconds of one decode step (the prefill not counted).
 */
async function greedy(session: RunnableSession, original: ModelProto, layout: DecoderLayout, outs: readonly string[], prompt: ArrayLike<number>, count: number): Promise<{ tokens: number[]; stepMs: number }> {
  let ids: number[] = Array.from(prompt);
  let past = 0;
  let caches: Record<string, ort.Tensor> = {};
  let total = 0;
  const tokens: number[] = [];
  for (let t = 0; t < count; t++) {
    const feeds = layout.cache === "kv" ? decoderFeeds(original, layout, ids, 1, past, caches) : decoderFeeds(original, layout, ids, 1, 0);
    const t0 = performance.now();
    const out = await session.run(feeds, [...outs]);
    if (t > 0) total += performance.now() - t0;
    const logits = out[layout.logits]!.data as Float32Array;
    const vocab = out[layout.logits]!.dims.at(-1)!;
    const next = scoreLogits(logits.subarray(logits.length - vocab), vocab, 0).pred;
    tokens.push(next);
    if (layout.cache === "kv") {
      past += ids.length;
      caches = Object.fromEntries(layout.layers.flatMap((l) => [[l.pastKey, out[l.presentKey]!], [l.pastValue, out[l.presentValue]!]]));
      ids = [next];
    } else ids = [...ids, next];
  }
  return { tokens, stepMs: total / Math.max(1, count - 1) };
}

/**
 * Time the full model's greedy decoding with one intra-op thread and with onnxruntime's default,
 * alternating: a few prompts from the calibration windows, each step feeding the previous step's
 * presents, as generation runs it. (Back-to-back calls of one step would keep the default's
 * worker threads spinning and hide the wake-ups a real decode loop pays between steps.)
 */
async function chooseThreads(model: OnnxModel, meta: DecoderMetadata, tokens: TokenSet, rows: readonly number[], settings: SessionSettings): Promise<ThreadChoice> {
  const layout = meta.layout;
  const original = originalDecoder(model.proto, meta);
  const outs = (original.graph!.output ?? []).map((o) => o.name ?? "");
  const one = await createRunnable(runtimeBytes(original, model.readExternal), { ...settings, threads: 1 }, outs);
  const dflt = await createRunnable(runtimeBytes(original, model.readExternal), settings, outs);
  const prompt = Math.max(1, Math.floor(tokens.length / 2));
  const steps = Math.min(32, layout.maxPositions === null ? 32 : layout.maxPositions - prompt);
  const decode = async (session: RunnableSession, row: number): Promise<number> =>
    (await greedy(session, original, layout, outs, tokens.row(row).subarray(0, prompt), steps + 1)).stepMs;
  try {
    const a: number[] = [];
    const b: number[] = [];
    const use = rows.slice(0, 8);
    for (let round = 0; round < 2; round++) {
      for (const [i, row] of use.entries()) {
        if ((i + round) % 2 === 0) {
          a.push(await decode(one, row));
          b.push(await decode(dflt, row));
        } else {
          b.push(await decode(dflt, row));
          a.push(await decode(one, row));
        }
      }
    }
    // The first pair warms both sessions up.
    const oneThreadMs = mean(a.slice(1));
    const defaultMs = mean(b.slice(1));
    return { threads: oneThreadWins(oneThreadMs, defaultMs) ? 1 : null, oneThreadMs, defaultMs };
  } finally {
    await one.release();
    await dflt.release();
  }
}

async function measureLatency(model: OnnxModel, meta: DecoderMetadata, contexts: number[], settings: SessionSettings, budgetMs: number, onProgress?: DecoderProfileOptions["onProgress"]): Promise<DecoderLatency> {
  const layout = meta.layout;
  const ids = meta.exits.map((e) => e.id);
  const s: SessionSettings = { spinning: false, ...settings };
  const opened: RunnableSession[] = [];
  const open = async (proto: ModelProto, outputs: string[], own: SessionSettings = s): Promise<RunnableSession> => {
    const r = await createRunnable(runtimeBytes(proto, model.readExternal), own, outputs);
    opened.push(r);
    return r;
  };
  const width = meta.exits[0]?.width ?? 0;
  // Every timed call gets fresh copies of its inputs, as a decode step feeds the previous step's
  // presents: a tensor onnxruntime-node has not seen costs it more per call than a reused one, and
  // a decode step feeds two per layer.
  const items: TimedItem[] = [];
  const timed = (name: string, session: RunnableSession, feeds: Record<string, ort.Tensor>, outputs: readonly string[]): TimedItem => ({
    name, prepare: () => freshFeeds(feeds), run: (f) => session.run(f as Record<string, ort.Tensor>, outputs),
  });
  const hidden = (n: number): ort.Tensor => new ort.Tensor("float32", new Float32Array(n * width).map((_, i) => Math.sin(i)), [1, n, width]);
  const cached = layout.cache === "kv";
  const carried = cached ? CARRIED : [1];
  const feedsFor = (proto: ModelProto, inputs: string[], carry: number, context: number, hiddenIn: string | null): Record<string, ort.Tensor> => {
    // Without a cache a decode step recomputes every position: context + 1 of them, no past.
    const n = cached ? carry : context + 1;
    const past = cached ? context : 0;
    const all = decoderFeeds(proto, layout, new Array<number>(n).fill(1), 1, past, Object.fromEntries(layout.layers.flatMap((l) => [[l.pastKey, cacheTensor(layout, 1, past)], [l.pastValue, cacheTensor(layout, 1, past)]])));
    const f: Record<string, ort.Tensor> = {};
    for (const i of inputs) f[i] = i === hiddenIn ? hidden(n) : all[i]!;
    return f;
  };
  // Every stretch between two inserted exits.
  const bounds: Array<number | null> = [null, ...ids];
  const segs: SegmentLatency[] = [];
  const stretches = new Map<string, { session: RunnableSession; seg: DecoderSegment }>();
  for (let a = 0; a < bounds.length; a++) {
    for (let b = a; b <= ids.length; b++) {
      const use = [...(a > 0 ? [ids[a - 1]!] : []), ...(b < ids.length ? [ids[b]!] : [])];
      const parts = decoderSegments(model.proto, meta, use);
      const seg = parts[a > 0 ? 1 : 0]!;
      const session = await open(seg.proto, seg.outputs);
      stretches.set(`${a}-${b}`, { session, seg });
      const entry: SegmentLatency = { from: a > 0 ? ids[a - 1]! : null, to: b < ids.length ? ids[b]! : null, layers: [seg.firstLayer, seg.lastLayer], p50: [] };
      segs.push(entry);
      contexts.forEach((c, ci) => carried.forEach((n, ni) => {
        const feeds = feedsFor(seg.proto, seg.inputs, n, c, seg.hiddenIn);
        items.push(timed(`seg ${a}-${b} c${ci} n${ni}`, session, feeds, seg.outputs));
      }));
    }
  }
  // Speculative mode's check after each exit: the rest of the model, every position's logits, timed
  // right after a draft call; and a cycle's first draft call, timed right after a check.
  const verify: VerifyLatency[] = [];
  if (cached) {
    for (const [b, id] of ids.entries()) {
      const { session: draftSession, seg: draft } = stretches.get(`0-${b}`)!;
      const seg = decoderSegments(model.proto, meta, [id], { verify: true })[1]!;
      const session = await open(seg.proto, seg.outputs);
      verify.push({ from: id, to: null, layers: [seg.firstLayer, seg.lastLayer], p50: [], firstDraft: [] });
      contexts.forEach((c, ci) => {
        const one = feedsFor(draft.proto, draft.inputs, 1, c, null);
        const four = feedsFor(seg.proto, seg.inputs, 4, c, seg.hiddenIn);
        const afterCheck = (): Promise<unknown> => session.run(freshFeeds(four), seg.outputs);
        const afterDraft = (): Promise<unknown> => draftSession.run(freshFeeds(one), draft.outputs);
        items.push({ ...timed(`first draft ${id} c${ci}`, draftSession, one, draft.outputs), before: afterCheck });
        VERIFY_CARRIED.forEach((n, ni) => {
          items.push({ ...timed(`verify ${id} c${ci} n${ni}`, session, feedsFor(seg.proto, seg.inputs, n, c, seg.hiddenIn), seg.outputs), before: afterDraft });
        });
      });
    }
  }
  const original = originalDecoder(model.proto, meta);
  const outs = (original.graph!.output ?? []).map((o) => o.name ?? "");
  // The full model runs alone in one session, with onnxruntime's default spinning (as EarlyExitGenerator runs it).
  const full = await open(original, outs, settings);
  contexts.forEach((c, ci) => {
    const step = cached ? decoderFeeds(original, layout, [1], 1, c) : decoderFeeds(original, layout, new Array<number>(c + 1).fill(1), 1, 0);
    items.push(timed(`full c${ci}`, full, step, outs));
    const pre = decoderFeeds(original, layout, new Array<number>(c).fill(1), 1, 0);
    items.push(timed(`prefill c${ci}`, full, pre, outs));
  });
  const heads: Record<string, number> = {};
  const headItems: Array<[string, string]> = [];
  for (const e of meta.exits) {
    const view = new Graph(model.proto.graph!);
    const nodes = needed(view, [e.output], new Set([e.tensor]));
    const g = view.sortedNodes().filter((n) => nodes.has(n));
    const used = new Set(g.flatMap((n) => n.input ?? []));
    // A head may read the token ids (for their shape), fed as one position.
    const inputsRead = (model.proto.graph!.input ?? []).filter((i) => used.has(i.name ?? ""));
    const proto: ModelProto = {
      ...model.proto, metadata_props: [],
      graph: {
        name: "head", node: g, initializer: (model.proto.graph!.initializer ?? []).filter((t) => used.has(t.name ?? "")),
        input: [{ name: e.tensor, type: { tensor_type: { elem_type: 1, shape: { dim: [{ dim_value: 1 }, { dim_value: 1 }, { dim_value: width }] } } } }, ...inputsRead],
        output: [{ name: e.output, type: { tensor_type: { elem_type: 1 } } }],
      },
    };
    const session = await open(proto, [e.output]);
    const one = decoderFeeds(model.proto, layout, [1], 1, 0);
    const feeds = { [e.tensor]: hidden(1), ...Object.fromEntries(inputsRead.map((i) => [i.name!, one[i.name!]!])) };
    items.push(timed(`head ${e.id}`, session, feeds, [e.output]));
    headItems.push([String(e.id), `head ${e.id}`]);
  }
  try {
    const stats = await measure(items, { budgetMs, onRound: (d, t) => onProgress?.("timing decode steps", d, t) });
    let conv = 0;
    for (const v of stats.values()) if (v.converged) conv++;
    let k = 0;
    for (let a = 0; a < bounds.length; a++) {
      for (let b = a; b <= ids.length; b++) {
        segs[k]!.p50 = contexts.map((_, ci) => carried.map((_, ni) => ms(stats.get(`seg ${a}-${b} c${ci} n${ni}`))));
        k++;
      }
    }
    for (const [id, name] of headItems) heads[id] = ms(stats.get(name));
    for (const v of verify) {
      v.p50 = contexts.map((_, ci) => VERIFY_CARRIED.map((_, ni) => ms(stats.get(`verify ${v.from} c${ci} n${ni}`))));
      v.firstDraft = contexts.map((_, ci) => ms(stats.get(`first draft ${v.from} c${ci}`)));
    }
    return {
      contexts, carried, segments: segs, heads, ...(cached ? { verify: { carried: VERIFY_CARRIED, segments: verify } } : {}),
      fullStep: contexts.map((_, ci) => ms(stats.get(`full c${ci}`))),
      prefill: contexts.map((_, ci) => ms(stats.get(`prefill c${ci}`))),
      converged: [conv, stats.size],
    };
  } finally {
    for (const r of opened) await r.release();
  }
}

/**
 * The full model's greedy continuations of sequences `which` of `tokens`: each cut to its first
 * `prompt` tokens and continued to the window's length, as a token set (row g: sequence which[g]).
 */
async function continueGreedily(model: OnnxModel, meta: DecoderMetadata, tokens: TokenSet, which: readonly number[], prompt: number, settings: SessionSettings, progress: (done: number) => void): Promise<TokenSet & { rows: number[] }> {
  const all = new Int32Array(which.length * tokens.length);
  if (which.length) {
    const original = originalDecoder(model.proto, meta);
    const outs = (original.graph!.output ?? []).map((o) => o.name ?? "");
    const session = await createRunnable(runtimeBytes(original, model.readExternal), settings, outs);
    try {
      for (const [g, seq] of which.entries()) {
        const row = all.subarray(g * tokens.length, (g + 1) * tokens.length);
        row.set(tokens.row(seq).subarray(0, prompt));
        row.set((await greedy(session, original, meta.layout, outs, row.subarray(0, prompt), tokens.length - prompt)).tokens, prompt);
        progress(g + 1);
      }
    } finally {
      await session.release();
    }
  }
  return {
    source: `${tokens.source} (greedy continuations)`, sequences: which.length, length: tokens.length, rows: which.map((_, g) => g),
    row: (i) => all.subarray(i * tokens.length, (i + 1) * tokens.length),
    hash: (i) => createHash("sha256").update(Buffer.from(all.buffer, i * tokens.length * 4, tokens.length * 4)).digest("hex").slice(0, 16),
  };
}

export async function profileDecoder(model: OnnxModel, options: DecoderProfileOptions): Promise<{ profile: DecoderProfile; samples: SampleData }> {
  const meta = decoderMetadataOrThrow(model);
  const layout: DecoderLayout = meta.layout;
  let settings = options.settings ?? {};
  // Checked before the scoring pass, so that a context the model cannot take fails at once.
  const contexts = profileContexts(options.contexts, layout.maxPositions, layout.cache === "kv" ? VERIFY_CARRIED.at(-1)! : 1);
  const tokens = openTokens(options.calib, "calibration tokens", layout.vocab, layout.maxPositions);
  const fitted = unpackHashes(meta.calibration.fitHashes);
  const rows: number[] = [];
  for (let i = 0; i < tokens.sequences; i++) if (!fitted.has(tokens.hash(i))) rows.push(i);
  const perSeq = tokens.length - 1;
  if (rows.length < 20) {
    throw new EeToolError("TOO_FEW_SAMPLES", `${rows.length} calibration sequences did not fit the heads (of ${tokens.sequences}); plan needs at least 20 to tune and certify on`);
  }
  // The full model's greedy continuations of evenly spread scored sequences (cut at half the window).
  const prompt = Math.max(1, Math.floor(tokens.length / 2));
  const genCount = layout.cache === "kv" ? Math.min(rows.length, Math.max(0, Math.floor(options.generate ?? DEFAULT_GENERATED))) : 0;
  const genRows = Array.from({ length: genCount }, (_, g) => Math.floor((g * rows.length) / genCount));
  const generated = await continueGreedily(model, meta, tokens, genRows.map((j) => rows[j]!), prompt, settings, (d) => options.onProgress?.("generating continuations", d, genCount));
  const samples = emptySamples((rows.length + genCount) * perSeq, meta.exits.length);
  const session = await createSession(runtimeBytes(model.proto, model.readExternal), settings);
  const outputs = [layout.logits, ...meta.exits.map((e) => e.output)];
  let at = 0;
  const vocab = layout.vocab ?? 0;
  const score = (set: TokenSet, which: readonly number[], phase: string): Promise<void> =>
    teacherForced(session, model.proto, layout, set, which, options.batchSize ?? 16, outputs, (out, part) => {
      const v = vocab || out[layout.logits]!.dims[2]!;
      const final = out[layout.logits]!.data as Float32Array;
      const exitsOut = meta.exits.map((e) => out[e.output]!.data as Float32Array);
      part.forEach((seq, b) => {
        const ids = set.row(seq);
        const hash = Buffer.from(set.hash(seq), "hex");
        for (let t = 0; t < perSeq; t++) {
          const row = b * set.length + t;
          samples.index[at] = seq;
          samples.hash.set(hash, at * 8);
          samples.final[at] = scoreLogits(final, v, row).pred;
          samples.label[at] = ids[t + 1]!;
          exitsOut.forEach((x, e) => {
            const sc = scoreLogits(x, v, row);
            const r = samples.ramps[e]!;
            r.pred[at] = sc.pred;
            r.maxprob[at] = sc.maxprob;
            r.margin[at] = sc.margin;
            r.entropy[at] = sc.entropy;
          });
          at++;
        }
      });
    }, (d) => options.onProgress?.(phase, d, which.length));
  try {
    await score(tokens, rows, "scoring tokens");
    if (genCount) await score(generated, generated.rows, "scoring continuations");
  } finally {
    await session.release();
  }
  const n = rows.length * perSeq;
  let finalRight = 0;
  for (let i = 0; i < n; i++) if (samples.final[i] === samples.label[i]) finalRight++;
  const summary = {
    finalAccuracy: finalRight / n,
    exits: meta.exits.map((e, k) => {
      const r = samples.ramps[k]!;
      let agree = 0;
      let right = 0;
      let conf = 0;
      for (let i = 0; i < n; i++) {
        if (r.pred[i] === samples.final[i]) agree++;
        if (r.pred[i] === samples.label[i]) right++;
        conf += r.maxprob[i]!;
      }
      return { id: e.id, layers: e.layers, agreement: agree / n, meanMaxprob: conf / n, accuracy: right / n };
    }),
  };
  const budgetMs = options.budgetMs ?? 20_000;
  // Unless told, the thread count is measured: on a small decoder at batch 1 one intra-op thread
  // can beat onnxruntime's default (no wake-ups between many small ops); a large one needs them all.
  const threadChoice = options.latency === false || !shouldChooseThreads(settings, os.cpus().length) ? undefined : await chooseThreads(model, meta, tokens, rows, settings);
  if (threadChoice?.threads) settings = { ...settings, threads: threadChoice.threads };
  const latency = options.latency === false ? null : await measureLatency(model, meta, contexts, settings, budgetMs, options.onProgress);
  const w = weightsAfter(model.proto, meta);
  const elem = layout.cacheType === 10 ? 2 : 4;
  const profile: DecoderProfile = {
    format: PROFILE_FORMAT, kind: "decoder", tool: TOOL_VERSION, created: new Date().toISOString(),
    model: { file: model.path ?? "", sha256: modelHash(model) },
    decoder: {
      layers: meta.layers, cache: layout.cache, vocab: vocab || 0,
      exits: meta.exits.map((e) => ({ id: e.id, layers: e.layers, depth: e.depth })),
      kvBytesPerTokenPerLayer: 2 * (layout.heads ?? 0) * (layout.headDim ?? 0) * elem,
      weightBytes: w.total, weightBytesAfter: w.after,
    },
    environment: {
      onnxruntime: ort.env.versions?.common ?? "unknown", node: process.version, platform: `${process.platform}-${process.arch}`,
      cpu: os.cpus()[0]?.model ?? "unknown", cores: os.cpus().length, executionProvider: settings.ep ?? "cpu", threads: settings.threads ?? null,
      ...(threadChoice ? { threadChoice } : {}),
    },
    settings: { calibrationHash: tokenSetHash(tokens), sequences: tokens.sequences, budgetMs },
    samples: {
      scored: n, sequences: rows.length, tokensPerSequence: perSeq, skippedFitted: tokens.sequences - rows.length,
      ...(genCount ? { generated: { sequences: genCount, prompt, rows: genRows } } : {}), file: "", sha256: "", arrays: [],
    },
    summary, latency,
  };
  return { profile, samples };
}

export function writeDecoderProfile(file: string, result: { profile: DecoderProfile; samples: SampleData }, modelPath?: string): { json: string; sidecar: string } {
  return writeWithSidecar(file, result.profile, result.samples, modelPath);
}
