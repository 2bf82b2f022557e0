/**
 * Greedy generation with token-level early exits and an exact KV cache.
 *
 * The decoder runs as segments (stages/decoder-split.ts), one onnxruntime call each; a token leaves
 * at the first exit whose confidence reaches its threshold. Exact KV mode (as FREE's and Apparate's
 * synchronized parallel decoding): the layers a token skipped run later, stacked with the next
 * token that goes deeper, so every key and value in the cache is what the full model computes for
 * the same tokens. Segment s keeps the residual streams of the positions it has not run yet
 * (pending); they form a suffix of the sequence, so each call is one contiguous run of positions
 * after a past of the segment's own length. `flush()` runs what is still pending. A decoder
 * exported without a cache recomputes every position in every call (exits still skip the layers
 * after them; nothing is deferred).
 *
 * Speculative mode (lossless, LayerSkip's self-speculation with a confidence-bounded draft): the
 * layers up to one exit draft tokens while its head is confident (at most `maxDraft` a cycle), then
 * the rest of the model runs once on every drafted position, reusing the draft's cache of the
 * layers below, and its logits check each draft. The drafts up to the first one the full model
 * disagrees with are kept, followed by the full model's own token there; the cache of the rejected
 * positions is cut off. Every token is the full model's greedy token.
 */
import type { ModelProto } from "../onnx/types.js";
import { loadModel, type OnnxModel } from "../onnx/model.js";
import { ort, runtimeBytes, type SessionSettings } from "../ort/ort.js";
import { createRunnable, type RunnableSession } from "../ort/sync.js";
import { cacheTensor, intTensor, isInt32Input, type DecoderLayout } from "../analysis/decoder.js";
import { readDecoderMetadata, type DecoderMetadata } from "../ramps/metadata.js";
import { decoderSegments, originalDecoder, type DecoderSegment } from "../stages/decoder-split.js";
import type { Metric } from "../stages/exit-graph.js";
import { EeToolError } from "../errors.js";
import { scoreLogits, confidenceOf } from "../util/logits.js";

export interface GeneratedToken {
  token: number;
  /** Exit id the token left at; -1: the model's own head. */
  exit: number;
  /** Decoder layers this token ran before its logits were read. */
  layers: number;
  /** Milliseconds from feeding the previous token to this one (the prompt's prefill for the first). */
  ms: number;
}

export interface GenerateOptions {
  maxNewTokens: number;
  /** Stop after this token (it is yielded). */
  eos?: number;
}

export interface ExitSetting {
  exit: number;
  threshold: number;
}

export interface SpeculativeSetting {
  /** The exit whose layers and head draft tokens. */
  exit: number;
  /** A draft continues while the head's confidence reaches this. */
  threshold: number;
  /** Most tokens drafted before the full model checks them. */
  maxDraft: number;
}

export interface GeneratorOptions {
  /** Exits and thresholds, any order; none: the full model through one segment. */
  exits?: readonly ExitSetting[];
  /** Lossless self-speculative decoding instead of exits (a decoder with a KV cache). */
  speculative?: SpeculativeSetting;
  metric?: Metric;
  /** The deepest exit ends the model (HELIOS truncation): tokens still not confident exit there. */
  truncate?: boolean;
  settings?: SessionSettings;
}

interface Runner {
  seg: DecoderSegment;
  session: RunnableSession;
  threshold: number;
  /** Past names of the layers this segment runs. */
  own: Set<string>;
}

export interface CacheSnapshot {
  /** Per layer: [key, value], [1, heads, length, head_dim]. */
  layers: Array<[ort.Tensor, ort.Tensor]>;
}

/** Counters of one generation. */
export interface GenerationStats {
  /** Layer passes of every call, summed over positions (catch-up included). */
  layerPasses: number;
  calls: number;
}

export class EarlyExitGenerator {
  private ids: number[] = [];
  private cache = new Map<string, ort.Tensor>();
  private cacheLen: number[];
  private pending: Float32Array[][];
  private zeros = new Float32Array(0);
  private readonly int32: Record<string, boolean>;
  readonly stats: GenerationStats = { layerPasses: 0, calls: 0 };

  private constructor(
    readonly meta: DecoderMetadata,
    readonly proto: ModelProto,
    private readonly runners: Runner[],
    private readonly metric: Metric,
    private readonly width: number,
    private readonly speculative: SpeculativeSetting | null,
  ) {
    this.cacheLen = runners.map(() => 0);
    this.pending = runners.map(() => []);
    const l = meta.layout;
    this.int32 = Object.fromEntries([l.inputIds, l.attentionMask, l.positionIds].filter((n): n is string => !!n).map((n) => [n, isInt32Input(proto, n)]));
  }

  /** The early-exit generator of an augmented decoder (insert's output), or the full model with no exits. */
  static async open(model: OnnxModel | string, options: GeneratorOptions = {}): Promise<EarlyExitGenerator> {
    const m = typeof model === "string" ? loadModel(model) : model;
    const meta = readDecoderMetadata(m.proto);
    if (!meta) throw new EeToolError("NO_RAMPS", "the model has no ee-tool exit heads", { hint: "Run `ee-tool insert <decoder.onnx> --calib <ids.npy> -o model.ee.onnx` first." });
    const spec = options.speculative ?? null;
    if (spec && meta.layout.cache !== "kv") {
      throw new EeToolError("UNSUPPORTED", "speculative decoding needs a decoder with a KV cache; this export has none", { hint: "Export the decoder with use_cache=True, or use the exact mode (exits with thresholds)." });
    }
    if (spec && (options.exits?.length || options.truncate)) {
      throw new EeToolError("USAGE", "give exits (with thresholds, or a truncation) or speculative decoding, not both", { hint: "Speculative decoding drafts from its own exit: { speculative: { exit, threshold, maxDraft } }." });
    }
    if (spec && !(spec.maxDraft >= 1)) throw new EeToolError("USAGE", `speculative decoding drafts at least one token a cycle (maxDraft ${spec.maxDraft})`);
    const exits = spec ? [{ exit: spec.exit, threshold: spec.threshold }] : [...(options.exits ?? [])];
    const segs = exits.length === 0 && !options.truncate ? [fullSegment(m.proto, meta)] : decoderSegments(m.proto, meta, exits.map((e) => e.exit), { terminal: options.truncate ?? false, verify: spec !== null });
    // Idle threads of one session spinning would steal the cores the next segment's session
    // needs; a single session keeps onnxruntime's default.
    const settings: SessionSettings = { ...(segs.length > 1 ? { spinning: false } : {}), ...options.settings };
    const runners: Runner[] = [];
    for (const seg of segs) {
      const threshold = seg.exit ? (exits.find((e) => e.exit === seg.exit!.id)?.threshold ?? Infinity) : Infinity;
      const own = new Set(meta.layout.layers.slice(seg.firstLayer, seg.lastLayer).flatMap((l) => [l.pastKey, l.pastValue]));
      runners.push({ seg, session: await createRunnable(runtimeBytes(seg.proto, m.readExternal), settings, seg.outputs), threshold, own });
    }
    const width = meta.exits[0]?.width ?? 0;
    return new EarlyExitGenerator(meta, m.proto, runners, options.metric ?? "maxprob", width, spec);
  }

  get layout(): DecoderLayout {
    return this.meta.layout;
  }

  get segments(): number {
    return this.runners.length;
  }

  async release(): Promise<void> {
    for (const r of this.runners) await r.session.release();
  }

  /** Forget the sequence (the sessions stay open). */
  reset(): void {
    this.ids = [];
    this.cache.clear();
    this.cacheLen = this.runners.map(() => 0);
    this.pending = this.runners.map(() => []);
    this.stats.layerPasses = 0;
    this.stats.calls = 0;
  }

  private onesBuffer: BigInt64Array | Int32Array = new BigInt64Array(0);

  /** An all-ones attention mask [1, n], a view of one growing buffer. */
  private ones(name: string, n: number): ort.Tensor {
    const int32 = this.int32[name]!;
    if (this.onesBuffer.length < n || (this.onesBuffer instanceof Int32Array) !== int32) {
      const size = Math.max(n, 2 * this.onesBuffer.length, 64);
      this.onesBuffer = int32 ? new Int32Array(size).fill(1) : new BigInt64Array(size).fill(1n);
    }
    return int32 ? new ort.Tensor("int32", (this.onesBuffer as Int32Array).subarray(0, n), [1, n]) : new ort.Tensor("int64", (this.onesBuffer as BigInt64Array).subarray(0, n), [1, n]);
  }

  private zeroCache(past: number): ort.Tensor {
    const l = this.meta.layout;
    const n = (l.heads ?? 1) * past * (l.headDim ?? 1);
    if (this.zeros.length < n) this.zeros = new Float32Array(Math.max(n, 2 * this.zeros.length));
    return l.cacheType === 10 ? cacheTensor(l, 1, past) : new ort.Tensor("float32", this.zeros.subarray(0, n), [1, l.heads ?? 1, past, l.headDim ?? 1]);
  }

  /** Run segment s on everything it has not run yet; returns its logits (the last position's, or every position's for a verifying segment). */
  private async run(s: number): Promise<{ logits: Float32Array; vocab: number }> {
    const r = this.runners[s]!;
    const l = this.meta.layout;
    // Without a cache every call recomputes all positions.
    const cached = l.cache === "kv";
    const past = cached ? this.cacheLen[s]! : 0;
    const n = s === 0 ? this.ids.length - past : this.pending[s]!.length;
    const feeds: Record<string, ort.Tensor> = {};
    for (const name of r.seg.inputs) {
      if (name === l.inputIds) feeds[name] = intTensor(this.int32[name]!, name, this.ids.slice(past, past + n), [1, n]);
      else if (name === l.attentionMask) feeds[name] = this.ones(name, past + n);
      else if (name === l.positionIds) feeds[name] = intTensor(this.int32[name]!, name, Array.from({ length: n }, (_, i) => past + i), [1, n]);
      else if (name === r.seg.hiddenIn) {
        const rows = this.pending[s]!;
        const data = new Float32Array(n * this.width);
        rows.forEach((row, i) => data.set(row, i * this.width));
        feeds[name] = new ort.Tensor("float32", data, [1, n, this.width]);
      } else if (r.own.has(name)) feeds[name] = this.cache.get(name) ?? this.zeroCache(0);
      else feeds[name] = this.zeroCache(past);
    }
    const out = await r.session.run(feeds, r.seg.outputs);
    this.stats.calls++;
    this.stats.layerPasses += n * (r.seg.lastLayer - r.seg.firstLayer);
    for (const layer of l.layers.slice(r.seg.firstLayer, r.seg.lastLayer)) {
      this.cache.set(layer.pastKey, out[layer.presentKey]!);
      this.cache.set(layer.pastValue, out[layer.presentValue]!);
    }
    if (cached) this.cacheLen[s] = past + n;
    this.pending[s] = [];
    if (r.seg.hiddenOut) {
      const h = out[r.seg.hiddenOut]!.data as Float32Array;
      if (!cached) this.pending[s + 1] = [];
      const next = this.pending[s + 1]!;
      for (let i = 0; i < n; i++) next.push(h.subarray(i * this.width, (i + 1) * this.width));
    }
    return { logits: out[r.seg.logits]!.data as Float32Array, vocab: out[r.seg.logits]!.dims.at(-1)! };
  }

  /** The logits of the last position segment s ran. */
  private async runLast(s: number): Promise<Float32Array> {
    const { logits, vocab } = await this.run(s);
    return logits.subarray(logits.length - vocab);
  }

  /** Feed one token (or the prompt); returns the next token and where it exited. */
  private async advance(tokens: ArrayLike<number>, prefill: boolean): Promise<Omit<GeneratedToken, "ms">> {
    for (let i = 0; i < tokens.length; i++) this.ids.push(tokens[i]!);
    for (let s = 0; s < this.runners.length; s++) {
      const logits = await this.runLast(s);
      const r = this.runners[s]!;
      const last = s === this.runners.length - 1;
      const score = scoreLogits(logits, logits.length, 0);
      if (last || (!prefill && confidenceOf(score, this.metric) >= r.threshold)) {
        return { token: score.pred, exit: r.seg.exit?.id ?? -1, layers: r.seg.lastLayer };
      }
    }
    throw new EeToolError("INTERNAL", "generation ran past the last segment");
  }

  /** Greedy generation from a prompt, streaming tokens. */
  async *generate(prompt: ArrayLike<number>, options: GenerateOptions): AsyncGenerator<GeneratedToken> {
    if (prompt.length === 0) throw new EeToolError("USAGE", "the prompt is empty");
    const limit = this.meta.layout.maxPositions;
    if (limit !== null && prompt.length + options.maxNewTokens > limit) {
      throw new EeToolError("USAGE", `a prompt of ${prompt.length} tokens and ${options.maxNewTokens} new ones need ${prompt.length + options.maxNewTokens} positions; the model has ${limit}`, {
        hint: `Shorten the prompts or generate at most ${Math.max(0, limit - prompt.length)} tokens (--max-new-tokens).`,
      });
    }
    this.reset();
    let t = performance.now();
    const first = await this.advance(prompt, true);
    // Counters cover the decode steps (the prompt's prefill runs every layer once per position).
    this.stats.layerPasses = 0;
    this.stats.calls = 0;
    yield { ...first, ms: performance.now() - t };
    let produced = 1;
    let last = first.token;
    while (produced < options.maxNewTokens && !(options.eos !== undefined && last === options.eos)) {
      t = performance.now();
      const burst = this.speculative ? await this.speculate(last, options.maxNewTokens - produced, options.eos) : [await this.advance([last], false)];
      // A speculative cycle's tokens arrive together: each gets an equal share of its time.
      const ms = (performance.now() - t) / burst.length;
      for (const b of burst) {
        yield { ...b, ms };
        produced++;
      }
      last = burst[burst.length - 1]!.token;
    }
  }

  /**
   * One speculative cycle from `token` (the full model's, not yet fed): draft at most
   * min(maxDraft, room - 1) tokens, check them with the rest of the model, keep what it agrees
   * with, and return the tokens it yields (at most `room`; an `eos` ends them).
   */
  private async speculate(token: number, room: number, eos?: number): Promise<Array<Omit<GeneratedToken, "ms">>> {
    const spec = this.speculative!;
    const base = this.ids.length;
    const draftExit = this.runners[0]!.seg;
    const drafts: number[] = [];
    this.ids.push(token);
    const draft = async (): Promise<ReturnType<typeof scoreLogits>> => {
      const logits = await this.runLast(0);
      return scoreLogits(logits, logits.length, 0);
    };
    let score = await draft();
    while (drafts.length < Math.min(spec.maxDraft, room - 1) && confidenceOf(score, this.metric) >= spec.threshold) {
      drafts.push(score.pred);
      this.ids.push(score.pred);
      score = await draft();
    }
    const { logits, vocab } = await this.run(1);
    // Row i of the check predicts the token after fed position base + i.
    let kept = 0;
    while (kept < drafts.length && scoreLogits(logits, vocab, kept).pred === drafts[kept] && drafts[kept] !== eos) kept++;
    const out: Array<Omit<GeneratedToken, "ms">> = drafts.slice(0, kept).map((d) => ({ token: d, exit: draftExit.exit!.id, layers: draftExit.lastLayer }));
    out.push({ token: scoreLogits(logits, vocab, kept).pred, exit: -1, layers: this.meta.layers });
    if (kept < drafts.length) this.rollback(base + 1 + kept);
    return out;
  }

  /** Forget every position from `length` on: the ids and both segments' cache. */
  private rollback(length: number): void {
    this.ids.length = length;
    for (let s = 0; s < this.runners.length; s++) {
      if (this.cacheLen[s]! <= length) continue;
      for (const name of this.runners[s]!.own) {
        const t = this.cache.get(name);
        if (t) this.cache.set(name, keepPositions(t, length));
      }
      this.cacheLen[s] = length;
    }
  }

  /** Run the layers still pending for earlier tokens, so the cache covers every fed token. */
  async flush(): Promise<void> {
    if (this.meta.layout.cache !== "kv") return;
    for (let s = 1; s < this.runners.length; s++) if (this.pending[s]!.length) await this.run(s);
  }

  /** Tokens fed so far (prompt and generated, without the last generated one). */
  get tokens(): readonly number[] {
    return this.ids;
  }

  /** The cache of every layer this generator holds (call flush() first for an exact comparison). */
  snapshot(): CacheSnapshot {
    return {
      layers: this.meta.layout.layers
        .filter((l) => this.cache.has(l.pastKey))
        .map((l) => [this.cache.get(l.pastKey)!, this.cache.get(l.pastValue)!]),
    };
  }
}

/** The first `length` positions of a cache tensor [1, heads, past, head_dim]. */
function keepPositions(t: ort.Tensor, length: number): ort.Tensor {
  const [b, heads, past, dim] = t.dims as [number, number, number, number];
  const src = t.data as Float32Array;
  const out = new (src.constructor as Float32ArrayConstructor)(b * heads * length * dim);
  for (let h = 0; h < b * heads; h++) out.set(src.subarray(h * past * dim, h * past * dim + length * dim), h * length * dim);
  return new ort.Tensor(t.type, out, [b, heads, length, dim]);
}

/** The original model as one segment: every layer, the model's own logits. */
function fullSegment(augmented: ModelProto, meta: DecoderMetadata): DecoderSegment {
  const proto = originalDecoder(augmented, meta);
  const layers = meta.layers;
  return {
    index: 0, firstLayer: 0, lastLayer: layers, hiddenIn: null, hiddenOut: null, logits: meta.layout.logits, exit: null,
    inputs: (proto.graph!.input ?? []).map((i) => i.name ?? ""),
    outputs: [meta.layout.logits, ...meta.layout.layers.flatMap((l) => [l.presentKey, l.presentValue])],
    proto,
  };
}
