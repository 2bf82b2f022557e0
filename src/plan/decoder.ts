/**
 * Plans for decoder LMs: exits and thresholds under a token-level constraint, the share of tokens
 * whose greedy token differs from the full model's (teacher-forced), certified with the sequence
 * as the unit.
 *
 * Tokens of one sequence are not independent, so each held-back sequence contributes one loss in
 * [0, 1], its share of differing tokens; H0 for a configuration is "the expected share is above
 * --max-drop", tested with a betting p-value (certify.ts bettingPValue), along the tuned frontier
 * from the safest configuration with fixed-sequence testing, as for classifiers.
 *
 * Cost: the runtime's schedule is replayed on the profiled tokens (exact KV mode: a deeper segment
 * runs the positions still pending with the token that needs it), each call priced by the
 * profile's measured latency of that segment, at that context, carrying that many positions.
 * The baseline is the full model's measured decode step at the same context.
 *
 * Speculative mode (lossless): every exit with a measured check is tried as the drafter, over a
 * grid of thresholds and draft lengths; its cycles are replayed on the profiled tokens (drafts
 * while the exit is confident, kept up to the first one whose token differs from the full
 * model's), each call priced by its measured latency. Its output is the full model's, so it needs
 * no certificate; `auto` runs it when it is predicted faster than the certified exits.
 */
import { mean } from "../util/stats.js";
import * as fs from "node:fs";
import * as path from "node:path";
import type { DecoderProfile, SegmentLatency, VerifyLatency } from "../profile/decoder.js";
import { PROFILE_FORMAT } from "../profile/profile.js";
import { decodeSamples, type SampleData } from "../profile/samples.js";
import type { Metric } from "../stages/exit-graph.js";
import { bettingPValue, bettingUpperBound } from "./certify.js";
import { Rng } from "../util/rng.js";
import { EeToolError } from "../errors.js";
import { TOOL_VERSION } from "../ramps/insert.js";
import { PLAN_FORMAT } from "./plan.js";
import { confidenceOf } from "../util/logits.js";

export interface DecoderCertificate {
  method: "betting (Waudby-Smith-Ramdas), one loss per sequence";
  unit: "sequence";
  n: number;
  observed: number;
  pValue: number;
  /** Upper confidence bound on the expected share of differing tokens. */
  bound: number;
  confidence: number;
  maxDrop: number;
  tested: number;
}

export interface DecoderPlanExit {
  id: number;
  layers: number;
  threshold: number;
  /** Share of tokens leaving here (tuning, certification sequences). */
  rateTune: number;
  rateCertify: number;
}

export interface Prediction {
  /** Mean per-token decode latency of the plan and of the full model (ms), and the saving. */
  stepMs: number;
  fullStepMs: number;
  saving: number;
  /** Share of tokens differing from the full model's, on the tuning and certification sequences. */
  differingTune: number;
  differingCertify: number;
  /** Mean decoder layers a token runs before its logits are read, and with the deferred layers. */
  meanExitLayers: number;
}

export interface TruncationRow {
  exit: number;
  layers: number;
  /** Share of tokens (certification sequences) that need layers after this exit under the plan. */
  needDeeper: number;
  /** Bytes of weights and of KV cache per token that loading only up to here never needs. */
  weightBytesSaved: number;
  kvBytesPerTokenSaved: number;
  /** Tokens still not confident at this exit leave here. */
  differingTune: number;
  differingCertify: number;
  saving: number;
}

export interface SpeculativePlan {
  /** The exit whose layers and head draft. */
  exit: number;
  layers: number;
  /** Drafting continues while the exit's confidence reaches this, at most maxDraft tokens a cycle. */
  threshold: number;
  maxDraft: number;
  /** What the cycles were replayed on: the full model's own continuations of profiled sequences, or (older profiles) the text. */
  tunedOn: "generated" | "text";
  /** Share of tokens that are kept drafts (tuning, certification sequences). */
  draftedTune: number;
  draftedCertify: number;
  /** Of the drafted tokens, the share the full model agreed with (certification sequences). */
  keptShare: number;
  /** Differing shares are 0: every token is the full model's. */
  predicted: Prediction;
}

export type DecoderKvMode = "exact" | "recompute" | "speculative";

export interface DecoderPlan {
  format: typeof PLAN_FORMAT;
  kind: "decoder";
  tool: string;
  model: { file: string; sha256: string };
  /** threads: the intra-op threads the latencies were measured with (null: onnxruntime's default); eval and EarlyExitGenerator users run with them. */
  profile: { file: string; ep: string; threads?: number | null };
  settings: { maxDrop: number; confidence: number; metric: Metric; tuneFraction: number; seed: number; maxExits: number; kvMode: "auto" | "exact" | "speculative" };
  /**
   * What the runtime runs. exact: the exits below, deferred layers keep the cache what the full
   * model computes; recompute: the same for a model without a cache; speculative: `speculative`
   * (lossless), the exits below being the certified alternative.
   */
  kvMode: DecoderKvMode;
  layers: number;
  /** The certified exits (exact or recompute mode), their prediction and certificate. */
  exits: DecoderPlanExit[];
  predicted: Prediction;
  certificate: DecoderCertificate | null;
  /** The fastest speculative configuration (null: no KV cache, or an older profile). */
  speculative: SpeculativePlan | null;
  data: { tuneSequences: number; certifySequences: number; tokensPerSequence: number };
  truncation: {
    rows: TruncationRow[];
    /** The shallowest truncation certified (tested from the deepest), or null. */
    chosen: {
      exit: number;
      layers: number;
      /** The certified configuration: earlier exits with their thresholds (at most one), then `exit`, where every token left leaves. */
      earlier: Array<{ id: number; threshold: number }>;
      certificate: DecoderCertificate;
      predicted: Prediction;
    } | null;
  };
  /** Tuned (differing share, saving) of the frontier's configurations. */
  frontier: Array<{ differing: number; saving: number; exits: Array<{ id: number; threshold: number }> }>;
  artifacts?: Record<string, unknown>;
}

export interface DecoderPlanOptions {
  maxDrop: number;
  confidence: number;
  metric?: Metric;
  tuneFraction?: number;
  seed?: number;
  maxExits?: number;
  /** auto (default): speculative when it is predicted faster than the certified exits. */
  kvMode?: "auto" | "exact" | "speculative";
}

export function loadDecoderSamples(profile: DecoderProfile, profileFile: string): SampleData {
  const sidecar = path.resolve(path.dirname(profileFile), profile.samples.file);
  const generated = (profile.samples.generated?.sequences ?? 0) * profile.samples.tokensPerSequence;
  return decodeSamples(sidecar, profile.samples.arrays, profile.samples.scored + generated, profile.decoder.exits.length, profile.samples.sha256);
}

interface Config {
  exits: number[];
  thresholds: number[];
  terminal: boolean;
}

interface Outcome {
  /** Per sequence share of differing tokens. */
  losses: Float64Array;
  cost: number;
  full: number;
  exitCounts: number[];
  exitLayerSum: number;
  tokens: number;
}

/** Linear interpolation over a sorted grid, clamped at its ends. */
function interp(grid: readonly number[], values: readonly number[], x: number): number {
  if (x <= grid[0]!) return values[0]!;
  for (let i = 1; i < grid.length; i++) {
    if (x <= grid[i]!) {
      const t = (x - grid[i - 1]!) / (grid[i]! - grid[i - 1]!);
      return values[i - 1]! + t * (values[i]! - values[i - 1]!);
    }
  }
  const k = grid.length - 1;
  return values[k]!;
}

/** Measured cost of a segment at context c carrying n positions (linear in n beyond the grid `ns`). */
function segmentCost(contexts: readonly number[], ns: readonly number[], seg: SegmentLatency, c: number, n: number): number {
  const atN = (ni: number): number => interp(contexts, seg.p50.map((row) => row[ni]!), c);
  if (n <= ns[0]! || ns.length === 1) return atN(0);
  for (let i = 1; i < ns.length; i++) {
    if (n <= ns[i]!) {
      const t = (n - ns[i - 1]!) / (ns[i]! - ns[i - 1]!);
      return atN(i - 1) + t * (atN(i) - atN(i - 1));
    }
  }
  const k = ns.length - 1;
  const slope = (atN(k) - atN(k - 1)) / (ns[k]! - ns[k - 1]!);
  return atN(k) + slope * (n - ns[k]!);
}

/** Positions a call may carry that the cost tables hold; beyond, the cost is extrapolated. */
const TABLE_CARRY = 64;

class Simulator {
  private readonly byId: Map<number, number>;
  private readonly segCache = new Map<string, SegmentLatency>();
  /** Each exit's confidence under the metric, per token row. */
  private readonly confs: Float64Array[];
  /** Per segment: cost at context t carrying n, [t * (TABLE_CARRY + 1) + n]. */
  private readonly tables = new Map<SegmentLatency, Float64Array>();
  private readonly fullAt: Float64Array;

  constructor(readonly profile: DecoderProfile, readonly samples: SampleData, readonly metric: Metric, readonly perSeq: number) {
    this.byId = new Map(profile.decoder.exits.map((e, i) => [e.id, i]));
    const lat = profile.latency;
    for (const seg of lat?.segments ?? []) this.segCache.set(`${seg.from}-${seg.to}`, seg);
    this.confs = samples.ramps.map((r) => {
      const out = new Float64Array(samples.count);
      for (let i = 0; i < samples.count; i++) out[i] = confidenceOf({ maxprob: r.maxprob[i]!, margin: r.margin[i]!, entropy: r.entropy[i]! }, metric);
      return out;
    });
    this.fullAt = new Float64Array(perSeq + 1);
    if (lat) {
      for (let t = 0; t <= perSeq; t++) this.fullAt[t] = interp(lat.contexts, lat.fullStep, t);
      const tabulate = (seg: SegmentLatency, carried: readonly number[]): void => {
        const table = new Float64Array((perSeq + 1) * (TABLE_CARRY + 1));
        for (let t = 0; t <= perSeq; t++) for (let n = 1; n <= TABLE_CARRY; n++) table[t * (TABLE_CARRY + 1) + n] = segmentCost(lat.contexts, carried, seg, t, n);
        this.tables.set(seg, table);
      };
      for (const seg of lat.segments) tabulate(seg, lat.carried);
      for (const seg of lat.verify?.segments ?? []) tabulate(seg, lat.verify!.carried);
    }
  }

  /** Exits that can draft: a measured prefix (tokens to the exit) and a measured check after it. */
  drafters(): Array<{ id: number; prefix: SegmentLatency; check: VerifyLatency }> {
    return this.profile.decoder.exits.flatMap((e) => {
      const prefix = this.segCache.get(`null-${e.id}`);
      const check = this.profile.latency?.verify?.segments.find((v) => v.from === e.id);
      return prefix && check ? [{ id: e.id, prefix, check }] : [];
    });
  }

  /**
   * Replay speculative cycles on sequences `rows`: from position t, draft while the exit is
   * confident (at most maxDraft), check every fed position at once, keep the drafts up to the
   * first differing one and the full model's token after them.
   */
  speculate(d: { id: number; prefix: SegmentLatency; check: VerifyLatency }, threshold: number, maxDraft: number, rows: readonly number[], from = 0): SpeculativeOutcome {
    const k = this.byId.get(d.id)!;
    const pred = this.samples.ramps[k]!.pred;
    const lat = this.profile.latency!;
    const first = Float64Array.from({ length: this.perSeq + 1 }, (_, t) => interp(lat.contexts, d.check.firstDraft, t));
    let cost = 0;
    let full = 0;
    let kept = 0;
    let drafted = 0;
    for (const seq of rows) {
      const at = seq * this.perSeq;
      for (let t = from; t < this.perSeq;) {
        let j = 0;
        while (j < maxDraft && t + j < this.perSeq - 1 && this.conf(k, at + t + j) >= threshold) j++;
        let a = 0;
        while (a < j && pred[at + t + a] === this.samples.final[at + t + a]) a++;
        // The first draft call follows a check; the others follow a draft call.
        cost += first[t]! + j * this.cost(d.prefix, t, 1) + this.cost(d.check, t, j + 1);
        for (let i = 0; i <= a; i++) full += this.fullAt[t + i]!;
        kept += a;
        drafted += j;
        t += a + 1;
      }
    }
    return { cost, full, kept, drafted, tokens: rows.length * (this.perSeq - from) };
  }

  private cost(seg: SegmentLatency, t: number, n: number): number {
    if (n <= TABLE_CARRY && t <= this.perSeq) return this.tables.get(seg)![t * (TABLE_CARRY + 1) + n]!;
    const lat = this.profile.latency!;
    const verify = lat.verify?.segments.some((v) => v === seg) ?? false;
    return segmentCost(lat.contexts, verify ? lat.verify!.carried : lat.carried, seg, t, n);
  }

  private conf(k: number, i: number): number {
    return this.confs[k]![i]!;
  }

  /** Confidences of exit `id` on the tokens of sequences `rows`, from position `from` of each. */
  confidences(id: number, rows: readonly number[], from = 0): Float64Array {
    const k = this.byId.get(id)!;
    const per = this.perSeq - from;
    const out = new Float64Array(rows.length * per);
    rows.forEach((s, j) => out.set(this.confs[k]!.subarray(s * this.perSeq + from, (s + 1) * this.perSeq), j * per));
    return out;
  }

  /** Replay the exact-KV schedule of a configuration on sequences `rows` (indices into the profiled sequences). */
  run(c: Config, rows: readonly number[]): Outcome {
    const lat = this.profile.latency;
    const ids = c.exits;
    const ends: Array<number | null> = c.terminal ? ids : [...ids, null];
    const segs = ends.map((to, s) => {
      const from = s > 0 ? ids[s - 1]! : null;
      return lat ? this.segCache.get(`${from}-${to}`) : undefined;
    });
    const layersAt = ends.map((to) => (to === null ? this.profile.decoder.layers : this.profile.decoder.exits[this.byId.get(to)!]!.layers));
    const ks = ids.map((id) => this.byId.get(id)!);
    const losses = new Float64Array(rows.length);
    const exitCounts = new Array<number>(ends.length).fill(0);
    let cost = 0;
    let full = 0;
    let layerSum = 0;
    const S = ends.length;
    const pending = new Array<number>(S).fill(0);
    rows.forEach((seq, j) => {
      pending.fill(0);
      let differ = 0;
      for (let t = 0; t < this.perSeq; t++) {
        const i = seq * this.perSeq + t;
        let n = 1;
        let s = 0;
        for (;;) {
          if (lat) cost += this.cost(segs[s]!, t, n);
          const last = s === S - 1;
          if (last || this.conf(ks[s]!, i) >= c.thresholds[s]!) {
            if (!last) pending[s + 1]! += n;
            exitCounts[s]!++;
            layerSum += layersAt[s]!;
            const pred = last && !c.terminal ? this.samples.final[i]! : this.samples.ramps[ks[s]!]!.pred[i]!;
            if (pred !== this.samples.final[i]) differ++;
            break;
          }
          s++;
          n = pending[s]! + n;
          pending[s] = 0;
        }
        if (lat) full += this.fullAt[t]!;
      }
      losses[j] = differ / this.perSeq;
    });
    // Without exits the runtime runs the original model: the full step's cost, not a segment's.
    if (ids.length === 0 && !c.terminal) cost = full;
    return { losses, cost, full, exitCounts, exitLayerSum: layerSum, tokens: rows.length * this.perSeq };
  }
}

interface SpeculativeOutcome {
  cost: number;
  full: number;
  /** Drafted tokens the full model agreed with (kept), and all drafted. */
  kept: number;
  drafted: number;
  tokens: number;
}

/** Draft lengths the speculative search tries (a check then carries at most 16 positions, as profiled). */
const DRAFT_LENGTHS = [1, 2, 3, 4, 6, 8, 12, 15];

/**
 * Where the speculative search replays: the full model's own continuations when the profile has
 * them (what the runtime meets when it generates; positions from the prompt's last on), split by
 * the sequence each continues; otherwise the text.
 */
function speculativeRows(profile: DecoderProfile, tune: readonly number[], certify: readonly number[]): { tune: number[]; certify: number[]; from: number; source: "generated" | "text" } {
  const g = profile.samples.generated;
  if (!g?.sequences) return { tune: [...tune], certify: [...certify], from: 0, source: "text" };
  const inTune = new Set(tune);
  const rows = g.rows.map((src, i) => ({ src, row: profile.samples.sequences + i }));
  const t = rows.filter((r) => inTune.has(r.src)).map((r) => r.row);
  const c = rows.filter((r) => !inTune.has(r.src)).map((r) => r.row);
  // A split that leaves one side empty tunes and predicts on all of them.
  return { tune: t.length ? t : c, certify: c.length ? c : t, from: g.prompt - 1, source: "generated" };
}

/** The fastest speculative configuration on the tuning sequences, predicted on the certification ones. */
function planSpeculative(sim: Simulator, profile: DecoderProfile, textTune: readonly number[], textCertify: readonly number[]): SpeculativePlan | null {
  const { tune, certify, from, source } = speculativeRows(profile, textTune, textCertify);
  let best: { d: ReturnType<Simulator["drafters"]>[number]; threshold: number; maxDraft: number; o: SpeculativeOutcome } | null = null;
  for (const d of sim.drafters()) {
    for (const threshold of draftLevels(sim.confidences(d.id, tune, from))) {
      for (const maxDraft of DRAFT_LENGTHS) {
        const o = sim.speculate(d, threshold, maxDraft, tune, from);
        if (!best || o.cost / o.full < best.o.cost / best.o.full) best = { d, threshold, maxDraft, o };
      }
    }
  }
  if (!best) return null;
  const cert = sim.speculate(best.d, best.threshold, best.maxDraft, certify, from);
  const layers = profile.decoder.exits.find((e) => e.id === best!.d.id)!.layers;
  return {
    exit: best.d.id, layers, threshold: best.threshold, maxDraft: best.maxDraft, tunedOn: source,
    draftedTune: best.o.kept / Math.max(1, best.o.tokens), draftedCertify: cert.kept / Math.max(1, cert.tokens), keptShare: cert.drafted ? cert.kept / cert.drafted : 0,
    predicted: {
      stepMs: cert.cost / Math.max(1, cert.tokens), fullStepMs: cert.full / Math.max(1, cert.tokens), saving: cert.full > 0 ? 1 - cert.cost / cert.full : 0,
      differingTune: 0, differingCertify: 0,
      // Layers before a token's logits are read: the draft's for kept drafts (the check runs the rest later).
      meanExitLayers: (cert.kept * layers + (cert.tokens - cert.kept) * profile.decoder.layers) / Math.max(1, cert.tokens),
    },
  };
}

/** Draft thresholds: the least confidence on the tuning tokens (draft nearly always) and every twentieth quantile. */
function draftLevels(conf: Float64Array): number[] {
  const sorted = Float64Array.from(conf).sort();
  const out = new Set<number>([sorted[0]!]);
  for (let q = 1; q < 20; q++) out.add(sorted[Math.floor((q / 20) * (sorted.length - 1))]!);
  return [...out].sort((a, b) => a - b);
}

/** Candidate thresholds of one exit: quantiles of its confidence on the tuning tokens. */
function levels(conf: Float64Array, count: number): number[] {
  const sorted = Float64Array.from(conf).sort();
  const out = new Set<number>();
  for (let i = 0; i < count; i++) {
    const q = 1 - Math.pow(0.5, 1 + (i * 6) / count);
    out.add(sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!);
  }
  return [...out].sort((a, b) => a - b);
}

function combinations<T>(items: readonly T[], k: number): T[][] {
  if (k === 0) return [[]];
  const out: T[][] = [];
  items.forEach((x, i) => {
    for (const rest of combinations(items.slice(i + 1), k - 1)) out.push([x, ...rest]);
  });
  return out;
}

function cross(lists: number[][]): number[][] {
  return lists.reduce<number[][]>((acc, l) => acc.flatMap((a) => l.map((x) => [...a, x])), [[]]);
}

function certificateOf(losses: Float64Array, maxDrop: number, confidence: number, tested: number, p: number): DecoderCertificate {
  return {
    method: "betting (Waudby-Smith-Ramdas), one loss per sequence", unit: "sequence", n: losses.length, observed: mean(losses),
    pValue: p, bound: bettingUpperBound(losses, 1 - confidence), confidence, maxDrop, tested,
  };
}

function prediction(tune: Outcome, cert: Outcome): Prediction {
  return {
    stepMs: cert.cost / Math.max(1, cert.tokens), fullStepMs: cert.full / Math.max(1, cert.tokens),
    saving: cert.full > 0 ? 1 - cert.cost / cert.full : 0,
    differingTune: mean(tune.losses), differingCertify: mean(cert.losses),
    meanExitLayers: cert.exitLayerSum / Math.max(1, cert.tokens),
  };
}

export function planDecoder(profile: DecoderProfile, samples: SampleData, options: DecoderPlanOptions): DecoderPlan {
  if (!profile.latency) {
    throw new EeToolError("PROFILE_INVALID", "the decoder profile has no latency measurements (it was made with --no-latency)", { hint: "Profile again without --no-latency: the plan prices each exit by its measured cost." });
  }
  const metric = options.metric ?? "maxprob";
  const seed = options.seed ?? 0;
  const tuneFraction = options.tuneFraction ?? 0.2;
  const maxExits = options.maxExits ?? 2;
  const delta = 1 - options.confidence;
  const perSeq = profile.samples.tokensPerSequence;
  const nSeq = profile.samples.sequences;
  const order = Array.from(new Rng(seed + 7).permutation(nSeq));
  const nTune = Math.max(1, Math.round(nSeq * tuneFraction));
  const tune = order.slice(0, nTune);
  const certify = order.slice(nTune);
  const wanted = options.kvMode ?? "auto";
  // Speculative decoding needs no certificate: too few sequences then only leave the exits uncertified.
  const canSpeculate = profile.decoder.cache === "kv" && (profile.latency.verify?.segments.length ?? 0) > 0;
  if (options.confidence > 0 && !(canSpeculate && wanted !== "exact")) {
    // With zero differing tokens, the betting capital grows by at most 1 / (1 - maxDrop) a sequence.
    const need = Math.ceil(Math.log(1 / delta) / -Math.log(1 - 0.9 * options.maxDrop));
    if (certify.length < need) {
      throw new EeToolError("TOO_FEW_SAMPLES", `${certify.length} held-back sequences cannot certify a ${(options.maxDrop * 100).toFixed(2)}% share of differing tokens at confidence ${options.confidence}: at least ${need} are needed even with none differing`, {
        hint: "Profile more calibration sequences (one window of text per row), lower --tune-fraction, or relax --max-drop / --confidence.",
      });
    }
  }
  const sim = new Simulator(profile, samples, metric, perSeq);
  const ids = profile.decoder.exits.map((e) => e.id);
  const grid = new Map(ids.map((id) => [id, levels(sim.confidences(id, tune), 24)]));

  // Search on the tuning sequences: every set of up to maxExits exits, every grid of thresholds.
  const none: Config = { exits: [], thresholds: [], terminal: false };
  const baseTune = sim.run(none, tune);
  type Scored = { config: Config; loss: number; saving: number };
  const scored: Scored[] = [{ config: none, loss: 0, saving: 1 - baseTune.cost / baseTune.full }];
  for (let k = 1; k <= Math.min(maxExits, ids.length); k++) {
    for (const subset of combinations(ids, k)) {
      for (const th of cross(subset.map((id) => grid.get(id)!))) {
        const c: Config = { exits: subset, thresholds: th, terminal: false };
        const o = sim.run(c, tune);
        scored.push({ config: c, loss: mean(o.losses), saving: 1 - o.cost / o.full });
      }
    }
  }
  // The frontier: for rising tuned loss, strictly rising saving; tested from the safest.
  scored.sort((a, b) => a.loss - b.loss || b.saving - a.saving);
  const frontier: Scored[] = [];
  for (const s of scored) if (!frontier.length || s.saving > frontier[frontier.length - 1]!.saving + 1e-9) frontier.push(s);
  const candidates = frontier.filter((s) => s.loss <= options.maxDrop && s.config.exits.length > 0);

  let chosen: Config = none;
  let certificate: DecoderCertificate | null = null;
  let tested = 0;
  if (options.confidence > 0) {
    for (const s of candidates) {
      tested++;
      const o = sim.run(s.config, certify);
      const p = bettingPValue(o.losses, options.maxDrop, delta);
      if (p > delta) break;
      chosen = s.config;
      certificate = certificateOf(o.losses, options.maxDrop, options.confidence, tested, p);
    }
  } else if (candidates.length) chosen = candidates[candidates.length - 1]!.config;
  const tuneOut = sim.run(chosen, tune);
  const certOut = sim.run(chosen, certify);
  const exits: DecoderPlanExit[] = chosen.exits.map((id, s) => ({
    id, layers: profile.decoder.exits.find((e) => e.id === id)!.layers, threshold: chosen.thresholds[s]!,
    rateTune: tuneOut.exitCounts[s]! / Math.max(1, tuneOut.tokens), rateCertify: certOut.exitCounts[s]! / Math.max(1, certOut.tokens),
  }));

  // HELIOS: loading only up to each exit; tokens not confident earlier leave there.
  const rows: TruncationRow[] = [];
  const truncated: Array<{ id: number; config: Config }> = [];
  const layersOf = (id: number): number => profile.decoder.exits.find((y) => y.id === id)!.layers;
  for (const e of profile.decoder.exits) {
    // Tokens reaching this exit leave there; at most one earlier exit, its threshold tuned so the
    // truncation's own differing share stays within the budget (the fastest that does).
    let config: Config = { exits: [e.id], thresholds: [-Infinity], terminal: true };
    let best = sim.run(config, tune);
    for (const id of ids.filter((x) => layersOf(x) < e.layers)) {
      for (const th of grid.get(id)!) {
        const c: Config = { exits: [id, e.id], thresholds: [th, -Infinity], terminal: true };
        const o = sim.run(c, tune);
        if (mean(o.losses) <= options.maxDrop && o.cost < best.cost) {
          config = c;
          best = o;
        }
      }
    }
    const t = best;
    const c = sim.run(config, certify);
    let deeper = 0;
    const exitLayers = [...chosen.exits.map((id) => profile.decoder.exits.find((y) => y.id === id)!.layers), profile.decoder.layers];
    certOut.exitCounts.forEach((count, s) => {
      if (exitLayers[s]! > e.layers) deeper += count;
    });
    rows.push({
      exit: e.id, layers: e.layers, needDeeper: deeper / Math.max(1, certOut.tokens),
      weightBytesSaved: profile.decoder.weightBytesAfter[String(e.id)] ?? 0,
      kvBytesPerTokenSaved: profile.decoder.kvBytesPerTokenPerLayer * (profile.decoder.layers - e.layers),
      differingTune: mean(t.losses), differingCertify: mean(c.losses), saving: c.full > 0 ? 1 - c.cost / c.full : 0,
    });
    truncated.push({ id: e.id, config });
  }
  let chosenTruncation: DecoderPlan["truncation"]["chosen"] = null;
  if (options.confidence > 0) {
    let k = 0;
    for (const tr of [...truncated].reverse()) {
      k++;
      const row = rows.find((r) => r.exit === tr.id)!;
      if (row.differingTune > options.maxDrop) break;
      const o = sim.run(tr.config, certify);
      const p = bettingPValue(o.losses, options.maxDrop, delta);
      if (p > delta) break;
      chosenTruncation = {
        exit: tr.id, layers: row.layers,
        earlier: tr.config.exits.slice(0, -1).map((id, i) => ({ id, threshold: tr.config.thresholds[i]! })),
        certificate: certificateOf(o.losses, options.maxDrop, options.confidence, k, p),
        predicted: prediction(sim.run(tr.config, tune), o),
      };
    }
  }
  const exactPrediction = prediction(tuneOut, certOut);
  const speculative = canSpeculate ? planSpeculative(sim, profile, tune, certify) : null;
  if (wanted === "speculative" && !speculative) {
    throw new EeToolError("UNSUPPORTED", profile.decoder.cache === "kv" ? "the profile has no timings of the speculative check (an older profile)" : "speculative decoding needs a decoder with a KV cache; this export has none", {
      hint: profile.decoder.cache === "kv" ? "Profile the model again with this version of ee-tool." : "Export the decoder with use_cache=True, or plan with --kv-mode exact.",
    });
  }
  const useSpeculative = speculative !== null && (wanted === "speculative" || (wanted === "auto" && speculative.predicted.saving > Math.max(0, exactPrediction.saving)));
  const kvMode: DecoderKvMode = useSpeculative ? "speculative" : profile.decoder.cache === "none" ? "recompute" : "exact";
  return {
    format: PLAN_FORMAT, kind: "decoder", tool: TOOL_VERSION,
    model: { file: profile.model.file, sha256: profile.model.sha256 },
    profile: { file: "", ep: profile.environment.executionProvider, threads: profile.environment.threads },
    settings: { maxDrop: options.maxDrop, confidence: options.confidence, metric, tuneFraction, seed, maxExits, kvMode: wanted },
    kvMode, layers: profile.decoder.layers, exits,
    predicted: exactPrediction, certificate, speculative,
    data: { tuneSequences: tune.length, certifySequences: certify.length, tokensPerSequence: perSeq },
    truncation: { rows, chosen: chosenTruncation },
    frontier: frontier.map((s) => ({ differing: s.loss, saving: s.saving, exits: s.config.exits.map((id, i) => ({ id, threshold: s.config.thresholds[i]! })) })),
  };
}

/** The profile in `file` when it is a decoder's; null otherwise (unreadable files too: the classifier loader reports those). */
export function readDecoderProfileFile(file: string): DecoderProfile | null {
  try {
    const p = JSON.parse(fs.readFileSync(file, "utf8")) as { kind?: string; format?: string };
    // A decoder plan is kind "decoder" too: it goes on to the profile reader, which says what it is.
    return p.kind === "decoder" && p.format === PROFILE_FORMAT ? (p as DecoderProfile) : null;
  } catch {
    return null;
  }
}
