/**
 * Protobuf encoding and decoding of ONNX messages with protobufjs.
 *
 * Decoding keeps unknown fields (protobufjs 8: `discardUnknown = false`) and returns `bytes`
 * fields as views into the input buffer (no payload copy).
 *
 * Encoding streams: a message that holds large byte payloads is split into a "rope" of pieces,
 * small pieces encoded by protobufjs's own generated encoders and large payloads written straight
 * from their views, so saving never holds a second full copy of the model. protobufjs writes fields
 * in field-number order and unknown fields last, as C++ protobuf does, which keeps files written by
 * the PyTorch exporter and by onnx's Python API byte-identical after a load/save round trip.
 */
import protobuf from "protobufjs";
import { onnxType } from "./schema.js";
import { EeToolError, messageOf } from "../errors.js";

/** Byte payloads at least this large are written from their views instead of copied. */
export const LARGE_PAYLOAD = 64 * 1024;

/** Message types that can (transitively) hold large payloads and are therefore split into pieces. */
const CONTAINERS = new Set([
  "ModelProto", "GraphProto", "NodeProto", "AttributeProto", "TensorProto", "SparseTensorProto",
  "FunctionProto", "TrainingInfoProto",
]);

type Msg = Record<string, unknown> & { $unknowns?: Uint8Array[] };

const hasOwn = (o: object, k: string): boolean => Object.prototype.hasOwnProperty.call(o, k);

/** Decode one message of the named type from `bytes` (views into `bytes` are kept). */
export function decodeMessage<T>(typeName: string, bytes: Uint8Array): T {
  const type = onnxType(typeName);
  const reader = protobuf.Reader.create(bytes);
  reader.discardUnknown = false;
  try {
    return type.decode(reader) as unknown as T;
  } catch (e) {
    throw new EeToolError("NOT_ONNX", `not a valid ${typeName}: ${messageOf(e)}`, { cause: e });
  }
}

/** Encode a small message to one buffer (protobufjs's generated encoder). */
export function encodeMessage(typeName: string, msg: object): Uint8Array {
  return onnxType(typeName).encode(msg).finish();
}

/** A message's encoding as an ordered list of byte pieces (views, not copies, for large payloads). */
export interface Rope {
  pieces: Uint8Array[];
  length: number;
}

function varint(value: number): number[] {
  const out: number[] = [];
  let v = value;
  while (v >= 0x80) {
    out.push((v % 0x80) | 0x80);
    v = Math.floor(v / 0x80);
  }
  out.push(v);
  return out;
}

function lengthDelimitedHeader(fieldId: number, length: number): Uint8Array {
  return Uint8Array.from([...varint(fieldId * 8 + 2), ...varint(length)]);
}

type Memo = WeakMap<object, boolean>;

/** Does this message hold a byte payload of at least LARGE_PAYLOAD bytes anywhere below it? */
function holdsLarge(type: protobuf.Type, msg: Msg, largeMemo: Memo): boolean {
  if (!CONTAINERS.has(type.name)) return false;
  const memo = largeMemo.get(msg);
  if (memo !== undefined) return memo;
  let found = false;
  for (const field of type.fieldsArray) {
    if (!hasOwn(msg, field.name)) continue;
    const value = msg[field.name];
    if (value == null) continue;
    const items: unknown[] = field.repeated ? (value as unknown[]) : [value];
    if (field.resolvedType instanceof protobuf.Type) {
      const child = field.resolvedType;
      found = items.some((it) => holdsLarge(child, it as Msg, largeMemo));
    } else if (field.type === "bytes") {
      found = items.some((it) => (it as Uint8Array).length >= LARGE_PAYLOAD);
    }
    if (found) break;
  }
  largeMemo.set(msg, found);
  return found;
}

function appendRope(type: protobuf.Type, msg: Msg, rope: Rope, memo: Memo): void {
  const push = (b: Uint8Array): void => {
    if (b.length === 0) return;
    rope.pieces.push(b);
    rope.length += b.length;
  };
  if (!holdsLarge(type, msg, memo)) {
    push(type.encode(msg).finish());
    return;
  }
  const fields = type.fieldsArray.slice().sort((a, b) => a.id - b.id);
  for (const field of fields) {
    if (!hasOwn(msg, field.name)) continue;
    const value = msg[field.name];
    if (value == null) continue;
    const child = field.resolvedType;
    if (child instanceof protobuf.Type) {
      const items = field.repeated ? (value as Msg[]) : [value as Msg];
      for (const item of items) {
        if (holdsLarge(child, item, memo)) {
          const sub: Rope = { pieces: [], length: 0 };
          appendRope(child, item, sub, memo);
          push(lengthDelimitedHeader(field.id, sub.length));
          for (const p of sub.pieces) push(p);
        } else {
          push(type.encode({ [field.name]: field.repeated ? [item] : item }).finish());
        }
      }
    } else if (field.type === "bytes" && !field.repeated && (value as Uint8Array).length >= LARGE_PAYLOAD) {
      const payload = value as Uint8Array;
      push(lengthDelimitedHeader(field.id, payload.length));
      push(payload);
    } else {
      push(type.encode({ [field.name]: value }).finish());
    }
  }
  if (msg.$unknowns && hasOwn(msg, "$unknowns")) for (const u of msg.$unknowns) push(u);
}

/** Encode a message as a rope of pieces; large payloads stay views into their buffers. */
export function encodeRope(typeName: string, msg: object): Rope {
  const rope: Rope = { pieces: [], length: 0 };
  appendRope(onnxType(typeName), msg as Msg, rope, new WeakMap());
  return rope;
}

/** Concatenate a rope into one buffer (for small messages and tests). */
export function ropeToBuffer(rope: Rope): Buffer {
  return Buffer.concat(rope.pieces, rope.length);
}
