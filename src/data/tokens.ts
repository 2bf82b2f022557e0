/**
 * Token sequences for decoder LMs: an .npy of integer token ids [sequences, length] (calibration
 * and evaluation text windows, or prompts). Whole sequences are the unit: they fit heads, tune
 * thresholds and certify plans, never single tokens.
 */
import * as fs from "node:fs";
import { createHash } from "node:crypto";
import { EeToolError } from "../errors.js";
import { openNpy } from "./npy.js";
import { typedArray } from "./calib.js";

export interface TokenSet {
  source: string;
  sequences: number;
  length: number;
  /** Token ids of sequence i. */
  row(i: number): Int32Array;
  /** 16 hex digits of SHA-256 over sequence i's ids (as int32 little-endian). */
  hash(i: number): string;
}

export function openTokens(file: string, what = "token data", vocab?: number | null, maxPositions?: number | null): TokenSet {
  if (!fs.existsSync(file)) throw new EeToolError("FILE_NOT_FOUND", `${what} not found: ${file}`);
  if (!file.endsWith(".npy")) {
    throw new EeToolError("CALIB_INVALID", `${what} for a decoder must be an .npy of token ids [sequences, length], got ${file}`, {
      hint: "Save the tokenized text windows with numpy: np.save('calib.npy', ids.astype(np.int64)), one row per sequence.",
    });
  }
  const a = openNpy(file);
  if (a.shape.length !== 2 || a.shape[0]! < 1 || a.shape[1]! < 2) {
    throw new EeToolError("CALIB_MISMATCH", `${what} ${file} has shape (${a.shape.join(", ")}); a decoder needs token ids [sequences, length >= 2]`, {
      hint: "One row per text window (or prompt), all of one length; cut or pad them to one length first.",
    });
  }
  if (!["int64", "int32", "uint16", "int16", "uint8", "uint32"].includes(a.type)) {
    throw new EeToolError("CALIB_MISMATCH", `${what} ${file} holds ${a.type}; token ids must be integers`);
  }
  const [n, len] = a.shape as [number, number];
  if (maxPositions && len > maxPositions) {
    throw new EeToolError("CALIB_MISMATCH", `${what} ${file} has sequences of ${len} tokens; the model has ${maxPositions} positions`, {
      hint: `Cut the windows to at most ${maxPositions} tokens.`,
    });
  }
  const all = Int32Array.from(typedArray(a.type, a.rows(0, n)) as ArrayLike<number | bigint>, (v) => Number(v));
  for (let i = 0; i < all.length; i++) {
    const v = all[i]!;
    if (v < 0 || (vocab && v >= vocab)) {
      throw new EeToolError("CALIB_MISMATCH", `${what} ${file}: token id ${v} at sequence ${Math.floor(i / len)} is outside the model's vocabulary of ${vocab ?? "?"}`, {
        hint: "Tokenize with the model's own tokenizer.",
      });
    }
  }
  return {
    source: file,
    sequences: n,
    length: len,
    row: (i) => all.subarray(i * len, (i + 1) * len),
    hash: (i) => createHash("sha256").update(Buffer.from(all.buffer, all.byteOffset + i * len * 4, len * 4)).digest("hex").slice(0, 16),
  };
}

/** SHA-256 over all sequence hashes in order. */
export function tokenSetHash(t: TokenSet): string {
  const h = createHash("sha256");
  for (let i = 0; i < t.sequences; i++) h.update(t.hash(i));
  return h.digest("hex");
}
