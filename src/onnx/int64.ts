/** Helpers for protobuf 64-bit integers, which decode as `Long`. */
import Long from "long";
import type { Int64 } from "./types.js";
import { EeToolError } from "../errors.js";

/** As a JS number; throws when it does not fit exactly (use toBigInt for such values). */
export function toNumber(v: Int64 | undefined, what = "value"): number {
  if (v === undefined) return 0;
  if (typeof v === "number") return v;
  const n = v.toNumber();
  if (!Number.isSafeInteger(n)) throw new EeToolError("UNSUPPORTED", `${what} ${v.toString()} does not fit a JS number`);
  return n;
}

export function toBigInt(v: Int64 | undefined): bigint {
  if (v === undefined) return 0n;
  if (typeof v === "number") return BigInt(v);
  return BigInt(v.toString());
}

export function fromBigInt(v: bigint, unsigned = false): Long {
  return Long.fromString(v.toString(), unsigned);
}
