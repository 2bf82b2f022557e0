/** Row-wise argmax of logits [n, k] (row-major). */
export function argmaxRows(x: Float32Array, n: number, k: number): Int32Array {
  const out = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    let best = 0;
    for (let j = 1; j < k; j++) if (x[i * k + j]! > x[i * k + best]!) best = j;
    out[i] = best;
  }
  return out;
}

/** Prediction and confidence measures of logit rows. */
export function scoreLogits(logits: Float32Array, k: number, row: number): { pred: number; maxprob: number; margin: number; entropy: number } {
  let max = -Infinity;
  let arg = 0;
  for (let j = 0; j < k; j++) {
    const v = logits[row * k + j]!;
    if (v > max) {
      max = v;
      arg = j;
    }
  }
  let sum = 0;
  for (let j = 0; j < k; j++) sum += Math.exp(logits[row * k + j]! - max);
  let p1 = 0;
  let p2 = 0;
  let entropy = 0;
  for (let j = 0; j < k; j++) {
    const p = Math.exp(logits[row * k + j]! - max) / sum;
    if (p > p1) {
      p2 = p1;
      p1 = p;
    } else if (p > p2) p2 = p;
    if (p > 0) entropy -= p * Math.log(p);
  }
  return { pred: arg, maxprob: p1, margin: p1 - p2, entropy };
}

/** A row's confidence under a metric (higher is more confident; entropy is negated), as the plan scores it. */
export function confidenceOf(s: { maxprob: number; margin: number; entropy: number }, metric: "maxprob" | "margin" | "entropy"): number {
  return metric === "maxprob" ? s.maxprob : metric === "margin" ? s.margin : -s.entropy;
}
