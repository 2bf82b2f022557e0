/** Numeric comparison helpers for tests. */
import type { ort } from "../../src/ort/ort.js";

export interface Mismatch {
  index: number;
  actual: unknown;
  expected: unknown;
}

/** Compare as onnx's backend tests do: |a - e| <= atol + rtol * |e|, NaN equal to NaN. */
export function compareTensors(actual: ort.Tensor, expected: ort.Tensor, rtol = 1e-3, atol = 1e-7): Mismatch | "shape" | "type" | null {
  if (actual.dims.join(",") !== expected.dims.join(",")) return "shape";
  if (actual.type !== expected.type) return "type";
  const a = actual.data as ArrayLike<number | bigint | string>;
  const e = expected.data as ArrayLike<number | bigint | string>;
  const float = actual.type === "float32" || actual.type === "float64" || actual.type === "float16";
  for (let i = 0; i < e.length; i++) {
    let av = a[i];
    let ev = e[i];
    if (actual.type === "float16") {
      av = f16(av as number);
      ev = f16(ev as number);
    }
    if (float) {
      const x = av as number;
      const y = ev as number;
      if (Number.isNaN(x) && Number.isNaN(y)) continue;
      if (x === y) continue;
      if (!(Math.abs(x - y) <= atol + rtol * Math.abs(y))) return { index: i, actual: x, expected: y };
    } else if (av !== ev) {
      return { index: i, actual: av, expected: ev };
    }
  }
  return null;
}

function f16(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24;
  if (exp === 31) return frac ? NaN : sign * Infinity;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}
