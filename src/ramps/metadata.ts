/**
 * The description of an augmented model's ramps, stored as JSON in the model's metadata_props
 * under "ee-tool.ramps", so later commands need only the model.
 */
import type { ModelProto } from "../onnx/types.js";
import type { Layout } from "../analysis/exits.js";
import type { DecoderLayout } from "../analysis/decoder.js";
import type { Pooling, RampKind } from "./build.js";
import { EeToolError } from "../errors.js";

export const METADATA_KEY = "ee-tool.ramps";

export interface RampRecord {
  id: number;
  /** Id of the exit point (candidate) the ramp is attached to. */
  exit: number;
  tensor: string;
  layout: Layout;
  shape: number[];
  depth: number;
  kind: RampKind;
  pooling: Pooling;
  featureDim: number;
  hidden: number;
  parameters: number;
  /** Graph output with this ramp's logits. */
  output: string;
  /** Side tensors crossing the cut at this exit, and graph inputs read after it. */
  crossing: string[];
  inputsAfter: string[];
  fit: {
    weightDecay: number;
    steps: number;
    trainAgreement: number;
    holdoutAgreement: number;
    holdoutSamples: number;
  };
}

export interface RampMetadata {
  format: 1;
  tool: string;
  /** The original model's logits output and its class count. */
  output: string;
  classes: number;
  mainInput: string;
  inputs: string[];
  ramps: RampRecord[];
  calibration: {
    samples: number;
    /** SHA-256 over all per-sample hashes, in order. */
    hash: string;
    seed: number;
    targets: "model" | "model+labels";
    fitSamples: number;
    /** 8-byte content hashes of the samples that fitted the ramps, sorted, base64. */
    fitHashes: string;
  };
}

/** A JSON document stored in the model's metadata_props under `key`, checked by `valid`. */
function readJsonProp<T>(model: ModelProto, key: string, valid: (v: T) => boolean): T | undefined {
  const entry = model.metadata_props?.find((m) => m.key === key);
  if (!entry?.value) return undefined;
  try {
    const meta = JSON.parse(entry.value) as T;
    if (!valid(meta)) throw new Error("unknown format");
    return meta;
  } catch (e) {
    throw new EeToolError("MODEL_INVALID", `the model's ${key} metadata is unreadable: ${(e as Error).message}`);
  }
}

function writeJsonProp(model: ModelProto, key: string, value: unknown): void {
  const props = (model.metadata_props ?? []).filter((m) => m.key !== key);
  props.push({ key, value: JSON.stringify(value) });
  model.metadata_props = props;
}

export function readRampMetadata(model: ModelProto): RampMetadata | undefined {
  return readJsonProp<RampMetadata>(model, METADATA_KEY, (m) => m.format === 1 && Array.isArray(m.ramps));
}

export function writeRampMetadata(model: ModelProto, meta: RampMetadata): void {
  writeJsonProp(model, METADATA_KEY, meta);
}

/** Pack sorted 16-hex-digit sample hashes into base64. */
export function packHashes(hashes: string[]): string {
  return Buffer.from([...hashes].sort().join(""), "hex").toString("base64");
}

export function unpackHashes(packed: string): Set<string> {
  const hex = Buffer.from(packed, "base64").toString("hex");
  const out = new Set<string>();
  for (let i = 0; i + 16 <= hex.length; i += 16) out.add(hex.slice(i, i + 16));
  return out;
}

export const DECODER_METADATA_KEY = "ee-tool.decoder";

/** An exit head of a decoder LM: the model's own final norm and LM head after a fitted affine correction. */
export interface DecoderExitRecord {
  id: number;
  /** Decoder layers that run before this exit (1 = after the first layer). */
  layers: number;
  /** Residual-stream tensor the head reads. */
  tensor: string;
  width: number;
  depth: number;
  /** Graph output with this head's logits [batch, seq, vocab]. */
  output: string;
  /** Initializers of the correction: hidden' = hidden @ weight + bias. */
  weight: string;
  bias: string;
  parameters: number;
  fit: {
    ridge: number;
    tokens: number;
    /** Greedy-token agreement with the model on held-out fitting sequences, corrected and uncorrected. */
    holdoutAgreement: number;
    identityAgreement: number;
    holdoutTokens: number;
    /** False where the uncorrected head agreed better on the held-back sequences, and the correction is the identity. */
    corrected: boolean;
  };
}

export interface DecoderMetadata {
  format: 1;
  tool: string;
  kind: "decoder";
  layout: DecoderLayout;
  /** Decoder layers (with a KV cache: one per cache pair; without: one per attention softmax). */
  layers: number;
  /** Residual stream after the last layer: where the model's own norm and head begin. */
  finalTensor: string;
  exits: DecoderExitRecord[];
  calibration: {
    sequences: number;
    length: number;
    hash: string;
    seed: number;
    fitSequences: number;
    /** 8-byte content hashes of the sequences that fitted the heads, sorted, base64. */
    fitHashes: string;
  };
}

export function readDecoderMetadata(model: ModelProto): DecoderMetadata | undefined {
  return readJsonProp<DecoderMetadata>(model, DECODER_METADATA_KEY, (m) => m.format === 1 && m.kind === "decoder" && Array.isArray(m.exits));
}

export function writeDecoderMetadata(model: ModelProto, meta: DecoderMetadata): void {
  writeJsonProp(model, DECODER_METADATA_KEY, meta);
}
