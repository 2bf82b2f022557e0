/**
 * Fitted drops for the tuning search. On a few hundred tuning samples a ramp's disagreements at the
 * thresholds that matter are a handful of events, so the observed drop of a configuration jumps by
 * a whole sample as a threshold crosses one of them, and the search shapes its sequence around
 * those few samples. Instead, each ramp's chance of a loss is fitted as a smooth, monotone
 * function of its confidence (logistic regression on the tuning set alone), and the search sees
 * each sample's expected loss. Certification still counts the real losses on the samples it
 * holds (plan.ts), so the guarantee does not depend on the fit being right; a better-shaped
 * sequence only lets it certify a faster plan (docs/plan.md, "Fitted drops").
 */
import type { Metric, Problem } from "./problem.js";

/** A monotone transform of a confidence that spreads its useful range for the fit. */
function feature(c: number, metric: Metric): number {
  if (metric === "entropy") return -Math.log(Math.max(-c, 1e-9)); // c = -entropy <= 0
  const q = Math.min(1 - 1e-6, Math.max(1e-6, c));
  return Math.log(q / (1 - q));
}

/**
 * P(event | x) = sigmoid(a + b x) by Newton's method with a small ridge (x standardised first).
 * Returns null when the fit does not converge to finite values; zeros when there is no event.
 */
export function logisticFit(x: Float64Array, y: Uint8Array): Float64Array | null {
  const n = x.length;
  let events = 0;
  for (let s = 0; s < n; s++) events += y[s]!;
  if (events === 0) return new Float64Array(n);
  let mean = 0;
  for (let s = 0; s < n; s++) mean += x[s]!;
  mean /= n;
  let sd = 0;
  for (let s = 0; s < n; s++) sd += (x[s]! - mean) ** 2;
  sd = Math.sqrt(sd / n) || 1;
  const z = Float64Array.from(x, (v) => (v - mean) / sd);
  const ridge = 1e-3;
  let a = Math.log((events + 0.5) / (n - events + 0.5));
  let b = 0;
  for (let it = 0; it < 100; it++) {
    let g0 = -ridge * a, g1 = -ridge * b, h00 = ridge, h01 = 0, h11 = ridge;
    for (let s = 0; s < n; s++) {
      const p = 1 / (1 + Math.exp(-(a + b * z[s]!)));
      const w = p * (1 - p);
      const r = y[s]! - p;
      g0 += r;
      g1 += r * z[s]!;
      h00 += w;
      h01 += w * z[s]!;
      h11 += w * z[s]! * z[s]!;
    }
    const det = h00 * h11 - h01 * h01;
    const da = (h11 * g0 - h01 * g1) / det;
    const db = (h00 * g1 - h01 * g0) / det;
    a += da;
    b += db;
    if (!Number.isFinite(a) || !Number.isFinite(b)) return null;
    if (Math.abs(da) + Math.abs(db) < 1e-9) break;
  }
  return Float64Array.from(z, (v) => 1 / (1 + Math.exp(-(a + b * v))));
}

/**
 * The same problem with each ramp's observed losses replaced by fitted expected losses. A loss is
 * +1 (the ramp is wrong where the reference is right) or, against labels, -1 (the other way round);
 * the expected loss is P(+1 | confidence) - P(-1 | confidence). A ramp whose fit fails keeps its
 * observed losses.
 */
export function withFittedLosses(p: Problem, metric: Metric): Problem {
  const loss = p.loss.map((observed, j) => {
    const x = Float64Array.from(p.conf[j]!, (c) => feature(c, metric));
    const pos = logisticFit(x, Uint8Array.from(observed, (l) => (l > 0 ? 1 : 0)));
    const neg = logisticFit(x, Uint8Array.from(observed, (l) => (l < 0 ? 1 : 0)));
    if (!pos || !neg) return observed;
    return Float32Array.from(pos, (v, s) => v - neg[s]!);
  });
  return { ...p, loss };
}
