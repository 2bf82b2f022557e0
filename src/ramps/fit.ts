/**
 * Fitting ramp heads with onnxruntime: one full-batch Adam step is an ONNX graph (forward,
 * softmax cross-entropy against soft targets, hand-derived gradients, update), run repeatedly.
 * Features are standardised first and the scaling folded into the first layer afterwards.
 * Weight decay is chosen, and training stopped, on a held-out part of the fitting samples.
 */
import type { GraphProto, ModelProto } from "../onnx/types.js";
import { AttributeType } from "../onnx/types.js";
import { makeTensor } from "../onnx/tensor.js";
import { NodeEmitter, attr } from "../ir/builder.js";
import { makeValueInfo } from "../ir/shapes.js";
import { DataType } from "../onnx/dtype.js";
import { serializeModel } from "../onnx/model.js";
import { createSession, ort, runSession, type SessionSettings } from "../ort/ort.js";
import { Rng } from "../util/rng.js";
import type { RampKind, RampWeights } from "./build.js";

const F = DataType.FLOAT;
const BETA1 = 0.9;
const BETA2 = 0.999;

export interface FitTargets {
  /** Soft targets [n, K] (rows sum to 1). */
  y: Float32Array;
  /** Argmax of the final model per sample, for agreement. */
  finalPred: Int32Array;
  n: number;
  k: number;
}

export interface RampFitInput {
  kind: RampKind;
  /** Feature width D and hidden width H (mlp). */
  d: number;
  hidden: number;
  /** Features [n, D] row-major. */
  x: Float32Array;
}

export interface FitOptions {
  seed: number;
  weightDecays?: number[];
  maxSteps?: number;
  /** Steps run inside onnxruntime between held-out evaluations. */
  chunk?: number;
  /** Evaluations without improvement before a configuration stops counting. */
  patience?: number;
  learningRate?: { linear: number; mlp: number };
  /** Fraction of the fitting samples held out for model selection. */
  holdout?: number;
  settings?: SessionSettings;
}

export interface FitResult {
  weights: RampWeights;
  weightDecay: number;
  steps: number;
  holdoutAgreement: number;
  trainAgreement: number;
  holdoutLoss: number;
  holdoutSamples: number;
}

interface ParamSpec {
  name: string;
  dims: number[];
}

/**
 * Parameters of a group of r same-shaped ramps for w weight decays at once: every tensor has
 * leading axes [r, w].
 */
function paramSpecs(kind: RampKind, d: number, h: number, k: number, r: number, w: number): ParamSpec[] {
  return kind === "linear"
    ? [{ name: "w1", dims: [r, w, d, k] }, { name: "b1", dims: [r, w, 1, k] }]
    : [{ name: "w1", dims: [r, w, d, h] }, { name: "b1", dims: [r, w, 1, h] }, { name: "w2", dims: [r, w, h, k] }, { name: "b2", dims: [r, w, 1, k] }];
}

/** Ramps of one shape trained together, each with all weight decays side by side (leading axes [r, w]). */
interface FitSet {
  /** Indices of the member ramps. */
  members: number[];
  kind: RampKind;
  d: number;
  h: number;
  wds: number[];
  specs: ParamSpec[];
  /** Name prefix of this set's tensors. */
  p: string;
}

/** Emit logits [w, n, K] = head(x) for a set, reading its parameters under `names`. */
function emitForward(em: NodeEmitter, set: FitSet, x: string, names: (param: string) => string): { logits: string; hidden?: string } {
  const dense = (inp: string, w: string, b: string): string => em.node("Add", [em.node("MatMul", [inp, names(w)]), names(b)]);
  if (set.kind === "linear") return { logits: dense(x, "w1", "b1") };
  const a = em.node("Tanh", [dense(x, "w1", "b1")]);
  return { logits: dense(a, "w2", "b2"), hidden: a };
}

/** Emit one Adam step of a set inside the loop body; returns the names of its updated states. */
function emitStep(em: NodeEmitter, set: FitSet, c: Record<string, string>): string[] {
  const st = (kind: "" | "m_" | "v_", param: string): string => `${set.p}${kind}${param}_in`;
  const x = `${set.p}x`;
  const xt = `${set.p}xt`;
  const fwd = emitForward(em, set, x, (q) => st("", q));
  const probs = em.node("Softmax", [fwd.logits], [attr("axis", -1)]);
  const grads = new Map<string, string>();
  const g = em.node("Mul", [em.node("Sub", [probs, "y"]), "inv_n"]);
  if (set.kind === "linear") {
    grads.set("w1", em.node("MatMul", [xt, g]));
    grads.set("b1", em.reduce("ReduceSum", g, [2], true));
  } else {
    const a = fwd.hidden!;
    grads.set("w2", em.node("MatMul", [em.node("Transpose", [a], [attr("perm", [0, 1, 3, 2])]), g]));
    grads.set("b2", em.reduce("ReduceSum", g, [2], true));
    const dA = em.node("MatMul", [g, em.node("Transpose", [st("", "w2")], [attr("perm", [0, 1, 3, 2])])]);
    const dZ = em.node("Mul", [dA, em.node("Sub", [c.one!, em.node("Mul", [a, a])])]);
    grads.set("w1", em.node("MatMul", [xt, dZ]));
    grads.set("b1", em.reduce("ReduceSum", dZ, [2], true));
  }
  const outs: string[] = [];
  for (const q of set.specs) {
    let grad = grads.get(q.name)!;
    if (q.name.startsWith("w")) grad = em.node("Add", [grad, em.node("Mul", [st("", q.name), `${set.p}wd`])]);
    const m = em.node("Add", [em.node("Mul", [st("m_", q.name), c.b1!]), em.node("Mul", [grad, c.nb1!])], [], `${set.p}m_${q.name}_out`);
    const v = em.node("Add", [em.node("Mul", [st("v_", q.name), c.b2!]), em.node("Mul", [em.node("Mul", [grad, grad]), c.nb2!])], [], `${set.p}v_${q.name}_out`);
    const denom = em.node("Add", [em.node("Sqrt", [em.node("Mul", [v, c.c2!])]), c.eps!]);
    const lr = set.kind === "linear" ? c.lrLinear! : c.lrMlp!;
    em.node("Sub", [st("", q.name), em.node("Mul", [em.node("Div", [m, denom]), lr])], [], `${set.p}${q.name}_out`);
    outs.push(`${set.p}${q.name}_out`, m, v);
  }
  return outs;
}

/** States carried through the loop for a set, in order: each parameter, then its two moments. */
function stateNames(set: FitSet): Array<{ name: string; dims: number[] }> {
  return set.specs.flatMap((q) => [
    { name: `${set.p}${q.name}`, dims: q.dims },
    { name: `${set.p}m_${q.name}`, dims: q.dims },
    { name: `${set.p}v_${q.name}`, dims: q.dims },
  ]);
}

/**
 * One model that trains every set for `trip` steps inside a Loop, then returns every set's
 * held-out logits: a single onnxruntime call per evaluation, whatever the number of ramps.
 */
function trainingModel(sets: FitSet[], k: number, lr: { linear: number; mlp: number }): ModelProto {
  const body = new NodeEmitter("body", 17);
  const c: Record<string, string> = {};
  const tOut = body.node("Add", ["t_in", body.constant("one", F, [], Float32Array.of(1))], [], "t_out");
  c.one = body.constant("one", F, [], Float32Array.of(1));
  const bias1 = body.node("Sub", [c.one, body.node("Pow", [body.constant("beta1", F, [], Float32Array.of(BETA1)), tOut])]);
  const bias2 = body.node("Sub", [c.one, body.node("Pow", [body.constant("beta2", F, [], Float32Array.of(BETA2)), tOut])]);
  c.c2 = body.node("Div", [c.one, bias2]);
  c.lrLinear = body.node("Div", [body.constant("lr_linear", F, [], Float32Array.of(lr.linear)), bias1]);
  c.lrMlp = body.node("Div", [body.constant("lr_mlp", F, [], Float32Array.of(lr.mlp)), bias1]);
  c.b1 = body.constant("b1", F, [], Float32Array.of(BETA1));
  c.nb1 = body.constant("nb1", F, [], Float32Array.of(1 - BETA1));
  c.b2 = body.constant("b2", F, [], Float32Array.of(BETA2));
  c.nb2 = body.constant("nb2", F, [], Float32Array.of(1 - BETA2));
  c.eps = body.constant("eps", F, [], Float32Array.of(1e-8));
  const bodyOutputs: string[] = [];
  for (const set of sets) bodyOutputs.push(...emitStep(body, set, c));
  body.node("Identity", ["cond_in"], [], "cond_out");
  const states = sets.flatMap(stateNames);
  const bodyGraph: GraphProto = {
    name: "fit_body",
    node: body.nodes,
    initializer: body.initializers,
    input: [makeValueInfo("iter", DataType.INT64, []), makeValueInfo("cond_in", DataType.BOOL, []), makeValueInfo("t_in", F, []), ...states.map((s) => makeValueInfo(`${s.name}_in`, F, s.dims))],
    output: [makeValueInfo("cond_out", DataType.BOOL, []), makeValueInfo("t_out", F, []), ...bodyOutputs.map((o, i) => makeValueInfo(o, F, states[i]!.dims))],
  };
  const outer = new NodeEmitter("outer", 17);
  const inits = sets.map((s) => makeTensor(`${s.p}wd`, F, [1, s.wds.length, 1, 1], Float32Array.from(s.wds)));
  outer.nodes.push({
    input: ["trip", "cond", "t", ...states.map((s) => s.name)],
    output: ["t_final", ...states.map((s) => `${s.name}_final`)],
    op_type: "Loop",
    name: "fit_loop",
    attribute: [{ name: "body", type: AttributeType.GRAPH, g: bodyGraph }],
  });
  const holdOutputs = sets.map((set, j) => {
    const names = (q: string): string => `${set.p}${q}_final`;
    return outer.node("Identity", [emitForward(outer, set, `${set.p}xh`, names).logits], [], `holdout_logits_${j}`);
  });
  return {
    ir_version: 8,
    opset_import: [{ domain: "", version: 17 }],
    producer_name: "ee-tool",
    graph: {
      name: "ramp_fit",
      node: outer.nodes,
      initializer: [...inits, ...outer.initializers],
      input: [
        makeValueInfo("trip", DataType.INT64, []), makeValueInfo("cond", DataType.BOOL, []), makeValueInfo("t", F, []),
        makeValueInfo("y", F, ["n", k]), makeValueInfo("inv_n", F, []),
        ...sets.flatMap((s) => [
          makeValueInfo(`${s.p}x`, F, [s.members.length, 1, "n", s.d]),
          makeValueInfo(`${s.p}xt`, F, [s.members.length, 1, s.d, "n"]),
          makeValueInfo(`${s.p}xh`, F, [s.members.length, 1, "h", s.d]),
        ]),
        ...states.map((s) => makeValueInfo(s.name, F, s.dims)),
      ],
      output: [makeValueInfo("t_final", F, []), ...states.map((s) => makeValueInfo(`${s.name}_final`, F, s.dims)), ...holdOutputs.map((o, j) => makeValueInfo(o, F, [sets[j]!.members.length, sets[j]!.wds.length, "h", k]))],
    },
  };
}

function transpose(x: Float32Array, n: number, d: number): Float32Array {
  const t = new Float32Array(n * d);
  for (let i = 0; i < n; i++) for (let j = 0; j < d; j++) t[j * n + i] = x[i * d + j]!;
  return t;
}

function rows(x: Float32Array, idx: Int32Array, width: number): Float32Array {
  const out = new Float32Array(idx.length * width);
  idx.forEach((r, i) => out.set(x.subarray(r * width, (r + 1) * width), i * width));
  return out;
}

/** Cross-entropy against soft targets and argmax agreement with the final model. */
function evaluate(logits: Float32Array, y: Float32Array, pred: Int32Array, n: number, k: number): { loss: number; agreement: number } {
  let loss = 0;
  let agree = 0;
  for (let i = 0; i < n; i++) {
    const row = logits.subarray(i * k, (i + 1) * k);
    let max = -Infinity;
    let arg = 0;
    for (let j = 0; j < k; j++) if (row[j]! > max) { max = row[j]!; arg = j; }
    let sum = 0;
    for (let j = 0; j < k; j++) sum += Math.exp(row[j]! - max);
    const lse = max + Math.log(sum);
    for (let j = 0; j < k; j++) loss -= y[i * k + j]! * (row[j]! - lse);
    if (arg === pred[i]) agree++;
  }
  return { loss: loss / n, agreement: agree / n };
}

/** Mean and standard deviation per feature column. */
export function standardization(x: Float32Array, n: number, d: number): { mean: Float32Array; std: Float32Array } {
  const mean = new Float64Array(d);
  const sq = new Float64Array(d);
  for (let i = 0; i < n; i++) for (let j = 0; j < d; j++) mean[j]! += x[i * d + j]!;
  for (let j = 0; j < d; j++) mean[j]! /= n;
  for (let i = 0; i < n; i++) for (let j = 0; j < d; j++) {
    const v = x[i * d + j]! - mean[j]!;
    sq[j]! += v * v;
  }
  const std = Float32Array.from(sq, (s) => Math.max(Math.sqrt(s / n), 1e-6));
  return { mean: Float32Array.from(mean), std };
}

function standardize(x: Float32Array, n: number, d: number, mean: Float32Array, std: Float32Array): Float32Array {
  const out = new Float32Array(n * d);
  for (let i = 0; i < n; i++) for (let j = 0; j < d; j++) out[i * d + j] = (x[i * d + j]! - mean[j]!) / std[j]!;
  return out;
}

/** Fold x' = (x - mean) / std into the first layer: W' = W / std, b' = b - (mean / std) · W. */
function foldStandardization(w: Float32Array, b: Float32Array, mean: Float32Array, std: Float32Array, d: number, out: number): { w: Float32Array; b: Float32Array } {
  const w2 = new Float32Array(w.length);
  const b2 = Float32Array.from(b);
  for (let j = 0; j < d; j++) {
    for (let o = 0; o < out; o++) {
      const v = w[j * out + o]! / std[j]!;
      w2[j * out + o] = v;
      b2[o]! -= mean[j]! * v;
    }
  }
  return { w: w2, b: b2 };
}

function tensor(data: Float32Array, dims: number[]): ort.Tensor {
  return new ort.Tensor("float32", data, dims);
}

/** Fit every ramp's head on its features; deterministic for a given seed. */
export async function fitRamps(ramps: RampFitInput[], targets: FitTargets, options: FitOptions): Promise<FitResult[]> {
  const { n, k } = targets;
  const rng = new Rng(options.seed);
  const perm = rng.permutation(n);
  const nHold = Math.max(1, Math.min(n - 1, Math.round(n * (options.holdout ?? 0.2))));
  const holdIdx = perm.slice(0, nHold).sort();
  const trainIdx = perm.slice(nHold).sort();
  const nTrain = trainIdx.length;
  const yTrain = rows(targets.y, trainIdx, k);
  const yHold = rows(targets.y, holdIdx, k);
  const predHold = Int32Array.from(holdIdx, (i) => targets.finalPred[i]!);
  const predTrain = Int32Array.from(trainIdx, (i) => targets.finalPred[i]!);
  const wds = options.weightDecays ?? [1e-4, 3e-3];
  const lr = options.learningRate ?? { linear: 0.4, mlp: 0.02 };
  // Group ramps of identical shape so one batched computation trains them all.
  const groups = new Map<string, number[]>();
  ramps.forEach((r, i) => {
    const key = `${r.kind}:${r.d}:${r.hidden}`;
    groups.set(key, [...(groups.get(key) ?? []), i]);
  });
  const sets: FitSet[] = [...groups.values()].map((members, g) => {
    const r = ramps[members[0]!]!;
    return { members, kind: r.kind, d: r.d, h: r.hidden, wds, specs: paramSpecs(r.kind, r.d, r.hidden, k, members.length, wds.length), p: `g${g}_` };
  });

  const feeds: Record<string, ort.Tensor> = { y: tensor(yTrain, [nTrain, k]), inv_n: tensor(Float32Array.of(1 / nTrain), []), cond: new ort.Tensor("bool", Uint8Array.of(1), []) };
  const scaling = ramps.map((r) => {
    const { mean, std } = standardization(rows(r.x, trainIdx, r.d), nTrain, r.d);
    const xs = standardize(r.x, n, r.d, mean, std);
    return { mean, std, xTrain: rows(xs, trainIdx, r.d), xHold: rows(xs, holdIdx, r.d) };
  });
  for (const set of sets) {
    const m = set.members.length;
    const stack = (pick: (i: number) => Float32Array): Float32Array => {
      const parts = set.members.map(pick);
      const out = new Float32Array(parts.reduce((a, p) => a + p.length, 0));
      let o = 0;
      for (const p of parts) {
        out.set(p, o);
        o += p.length;
      }
      return out;
    };
    feeds[`${set.p}x`] = tensor(stack((i) => scaling[i]!.xTrain), [m, 1, nTrain, set.d]);
    feeds[`${set.p}xt`] = tensor(stack((i) => transpose(scaling[i]!.xTrain, nTrain, set.d)), [m, 1, set.d, nTrain]);
    feeds[`${set.p}xh`] = tensor(stack((i) => scaling[i]!.xHold), [m, 1, nHold, set.d]);
  }
  // Seeded initialisation, the same for every weight decay of a ramp.
  const state = new Map<string, Float32Array>();
  for (const set of sets) {
    const init = new Rng((options.seed ^ 0x9e3779b9) + 7919 * set.members[0]!);
    for (const q of set.specs) {
      const size = q.dims.reduce((a, b) => a * b, 1);
      const scale = set.kind === "mlp" ? (q.name === "w1" ? 1 / Math.sqrt(set.d) : q.name === "w2" ? 0.01 : 0) : 0;
      state.set(`${set.p}${q.name}`, Float32Array.from({ length: size }, () => (scale ? init.normal() * scale : 0)));
      state.set(`${set.p}m_${q.name}`, new Float32Array(size));
      state.set(`${set.p}v_${q.name}`, new Float32Array(size));
    }
  }
  const all = sets.flatMap(stateNames);
  const session = await createSession(serializeModel(trainingModel(sets, k, lr)), { ...options.settings, optimization: "all" });
  const chunk = options.chunk ?? 20;
  const maxSteps = options.maxSteps ?? 120;
  const patience = options.patience ?? 4;
  // Best held-out loss so far for every (ramp, weight decay), with a snapshot of its parameters.
  const best = ramps.map(() => wds.map(() => ({ loss: Infinity, agreement: 0, steps: 0, params: new Map<string, Float32Array>(), stale: 0 })));
  try {
    let t = 0;
    while (t < maxSteps && best.flat().some((b) => b.stale < patience)) {
      const trip = Math.min(chunk, maxSteps - t);
      feeds.trip = new ort.Tensor("int64", BigInt64Array.of(BigInt(trip)), []);
      feeds.t = tensor(Float32Array.of(t), []);
      for (const s of all) feeds[s.name] = tensor(state.get(s.name)!, s.dims);
      const out = await runSession(session, feeds);
      t += trip;
      for (const s of all) state.set(s.name, out[`${s.name}_final`]!.data as Float32Array);
      sets.forEach((set, j) => {
        const logits = out[`holdout_logits_${j}`]!.data as Float32Array;
        set.members.forEach((ramp, r) => {
          set.wds.forEach((_, w) => {
            const at = r * set.wds.length + w;
            const ev = evaluate(logits.subarray(at * nHold * k, (at + 1) * nHold * k), yHold, predHold, nHold, k);
            const b = best[ramp]![w]!;
            if (ev.loss < b.loss - 1e-6) {
              Object.assign(b, { loss: ev.loss, agreement: ev.agreement, steps: t, stale: 0 });
              for (const q of set.specs) b.params.set(q.name, slice(state.get(`${set.p}${q.name}`)!, q.dims, at));
            } else b.stale++;
          });
        });
      });
    }
  } finally {
    await session.release();
  }
  return ramps.map((r, i) => {
    const set = sets.find((x) => x.members.includes(i))!;
    let w = 0;
    best[i]!.forEach((b, idx) => {
      if (b.loss < best[i]![w]!.loss) w = idx;
    });
    const b = best[i]![w]!;
    const out1 = r.kind === "linear" ? k : r.hidden;
    const trainLogits = forwardJs(set, b.params, scaling[i]!.xTrain, nTrain, k);
    const first = foldStandardization(b.params.get("w1")!, b.params.get("b1")!, scaling[i]!.mean, scaling[i]!.std, r.d, out1);
    const weights: RampWeights = r.kind === "linear" ? { w1: first.w, b1: first.b } : { w1: first.w, b1: first.b, w2: b.params.get("w2")!, b2: b.params.get("b2")! };
    return {
      weights, weightDecay: set.wds[w]!, steps: b.steps, holdoutAgreement: b.agreement,
      trainAgreement: evaluate(trainLogits, yTrain, predTrain, nTrain, k).agreement, holdoutLoss: b.loss, holdoutSamples: nHold,
    };
  });
}

/** The at-th slice over the two leading axes [r, w]. */
function slice(x: Float32Array, dims: number[], at: number): Float32Array {
  const size = dims.slice(2).reduce((a, b) => a * b, 1);
  return Float32Array.from(x.subarray(at * size, (at + 1) * size));
}

/** Logits of a head on standardised features, in plain JS (used once per ramp for reporting). */
function forwardJs(set: FitSet, p: Map<string, Float32Array>, x: Float32Array, n: number, k: number): Float32Array {
  const dense = (inp: Float32Array, w: Float32Array, b: Float32Array, din: number, dout: number, act?: (v: number) => number): Float32Array => {
    const o = new Float32Array(n * dout);
    for (let i = 0; i < n; i++) for (let j = 0; j < dout; j++) {
      let s = b[j]!;
      for (let q = 0; q < din; q++) s += inp[i * din + q]! * w[q * dout + j]!;
      o[i * dout + j] = act ? act(s) : s;
    }
    return o;
  };
  if (set.kind === "linear") return dense(x, p.get("w1")!, p.get("b1")!, set.d, k);
  return dense(dense(x, p.get("w1")!, p.get("b1")!, set.d, set.h, Math.tanh), p.get("w2")!, p.get("b2")!, set.h, k);
}
