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
