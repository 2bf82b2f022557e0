import { createSession, runSession, ort, type SessionSettings } from "../../src/ort/ort.js";
import type { CalibrationSet } from "../../src/data/calib.js";
import { argmaxRows } from "../../src/util/logits.js";

/** Run a model (bytes) over samples [0, n) of a calibration set, batched; returns each output concatenated. */
export async function runAll(bytes: Uint8Array, data: CalibrationSet, outputs: string[], opts: { n?: number; batch?: number; settings?: SessionSettings } = {}): Promise<Map<string, Float32Array>> {
  const session = await createSession(bytes, opts.settings ?? {});
  const n = opts.n ?? data.size;
  const batch = opts.batch ?? 100;
  const parts = new Map<string, Float32Array[]>(outputs.map((o) => [o, []]));
  try {
    for (let s = 0; s < n; s += batch) {
      const r = await runSession(session, data.feeds(s, Math.min(n, s + batch)), outputs);
      for (const o of outputs) parts.get(o)!.push(r[o]!.data as Float32Array);
    }
  } finally {
    await session.release();
  }
  const out = new Map<string, Float32Array>();
  for (const [o, list] of parts) {
    const all = new Float32Array(list.reduce((a, p) => a + p.length, 0));
    let off = 0;
    for (const p of list) {
      all.set(p, off);
      off += p.length;
    }
    out.set(o, all);
  }
  return out;
}

/** Row-wise argmax of logits with k classes. */
export function argmax(x: Float32Array, k: number): Int32Array {
  return argmaxRows(x, x.length / k, k);
}

export function agreement(a: Int32Array, b: Int32Array): number {
  let same = 0;
  for (let i = 0; i < a.length; i++) if (a[i] === b[i]) same++;
  return same / a.length;
}

export { ort };
