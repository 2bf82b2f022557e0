/**
 * NumPy .npy files (format versions 1 to 3), read row by row with positioned reads so a
 * calibration set larger than memory streams from disk.
 */
import * as fs from "node:fs";
import { EeToolError } from "../errors.js";

/** Element types ee-tool reads, by onnxruntime tensor type. */
export type ElemType = "float32" | "float64" | "float16" | "int8" | "uint8" | "int16" | "uint16" | "int32" | "uint32" | "int64" | "uint64" | "bool";

const DESCR: Record<string, { type: ElemType; bytes: number }> = {
  "<f4": { type: "float32", bytes: 4 }, "<f8": { type: "float64", bytes: 8 }, "<f2": { type: "float16", bytes: 2 },
  "|i1": { type: "int8", bytes: 1 }, "|u1": { type: "uint8", bytes: 1 }, "<i2": { type: "int16", bytes: 2 },
  "<u2": { type: "uint16", bytes: 2 }, "<i4": { type: "int32", bytes: 4 }, "<u4": { type: "uint32", bytes: 4 },
  "<i8": { type: "int64", bytes: 8 }, "<u8": { type: "uint64", bytes: 8 }, "|b1": { type: "bool", bytes: 1 },
};

export interface NpyHeader {
  type: ElemType;
  itemBytes: number;
  shape: number[];
  /** Offset of the first data byte from the start of the array's bytes. */
  dataOffset: number;
}

const MAGIC = Buffer.from([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]);

/** Parse an .npy header from the first bytes of the array (at least 10; more when the header is long). */
export function parseNpyHeader(head: Buffer, source: string, totalBytes: number): NpyHeader {
  if (head.length < 10 || !head.subarray(0, 6).equals(MAGIC)) {
    throw new EeToolError("CALIB_INVALID", `${source} is not a .npy array (bad magic)`);
  }
  const major = head[6]!;
  if (major < 1 || major > 3) throw new EeToolError("CALIB_INVALID", `${source}: unsupported .npy format version ${major}`);
  const lenBytes = major === 1 ? 2 : 4;
  const headerLen = major === 1 ? head.readUInt16LE(8) : head.readUInt32LE(8);
  const start = 8 + lenBytes;
  if (start + headerLen > head.length) {
    throw new EeToolError("CALIB_INVALID", `${source}: .npy header of ${headerLen} bytes is longer than the file`);
  }
  const text = head.subarray(start, start + headerLen).toString(major === 3 ? "utf8" : "latin1");
  const descr = /'descr':\s*'([^']*)'/.exec(text)?.[1];
  const fortran = /'fortran_order':\s*(True|False)/.exec(text)?.[1];
  const shapeText = /'shape':\s*\(([^)]*)\)/.exec(text)?.[1];
  if (descr === undefined || fortran === undefined || shapeText === undefined) {
    throw new EeToolError("CALIB_INVALID", `${source}: malformed .npy header ${JSON.stringify(text.trim().slice(0, 120))}`);
  }
  if (fortran === "True") {
    throw new EeToolError("CALIB_INVALID", `${source}: Fortran-ordered arrays are not supported`, {
      hint: "Save the array in C order: np.save(path, np.ascontiguousarray(a)).",
    });
  }
  const dt = DESCR[descr] ?? (descr.startsWith("=") ? DESCR[`<${descr.slice(1)}`] : undefined);
  if (!dt) {
    throw new EeToolError("CALIB_INVALID", `${source}: unsupported dtype '${descr}'`, {
      hint: "Use a little-endian numeric dtype (float32, float16, int64, int32, uint8, bool, ...).",
    });
  }
  const shape = shapeText.split(",").map((s) => s.trim()).filter((s) => s.length > 0).map(Number);
  if (shape.some((d) => !Number.isSafeInteger(d) || d < 0)) throw new EeToolError("CALIB_INVALID", `${source}: bad shape (${shapeText})`);
  const dataOffset = start + headerLen;
  const need = shape.reduce((a, b) => a * b, 1) * dt.bytes;
  if (dataOffset + need > totalBytes) {
    throw new EeToolError("CALIB_INVALID", `${source} is truncated: shape (${shape.join(", ")}) needs ${need} bytes of data, the file has ${Math.max(0, totalBytes - dataOffset)}`);
  }
  return { type: dt.type, itemBytes: dt.bytes, shape, dataOffset };
}

/** A source of rows (first-axis slices) of one array. */
export interface ArraySource {
  /** Where the array came from, for messages. */
  source: string;
  type: ElemType;
  shape: number[];
  itemBytes: number;
  /** Raw little-endian bytes of rows [start, end). */
  rows(start: number, end: number): Buffer;
}

export function rowBytes(a: Pick<ArraySource, "shape" | "itemBytes">): number {
  return a.shape.slice(1).reduce((x, y) => x * y, 1) * a.itemBytes;
}

/** An array stored uncompressed at `base` in `file` (an .npy file, or a stored .npz member). */
export function fileArray(file: string, base: number, length: number, source: string): ArraySource {
  const fd = fs.openSync(file, "r");
  try {
    const first = Buffer.alloc(Math.min(length, 4096));
    fs.readSync(fd, first, 0, first.length, base);
    let head = first;
    const major = first[6];
    const declared = first.length >= 12 ? (major === 1 ? first.readUInt16LE(8) + 10 : first.readUInt32LE(8) + 12) : 0;
    if (declared > first.length && declared <= length) {
      head = Buffer.alloc(declared);
      fs.readSync(fd, head, 0, declared, base);
    }
    const h = parseNpyHeader(head, source, length);
    const rb = rowBytes(h);
    return {
      source, type: h.type, shape: h.shape, itemBytes: h.itemBytes,
      rows(start, end) {
        const out = Buffer.allocUnsafe((end - start) * rb);
        const fd2 = fs.openSync(file, "r");
        try {
          let done = 0;
          while (done < out.length) {
            const n = fs.readSync(fd2, out, done, Math.min(out.length - done, 1 << 30), base + h.dataOffset + start * rb + done);
            if (n === 0) throw new EeToolError("CALIB_INVALID", `${source} ended early`);
            done += n;
          }
        } finally {
          fs.closeSync(fd2);
        }
        return out;
      },
    };
  } finally {
    fs.closeSync(fd);
  }
}

/** An array held in memory (a decompressed .npz member). */
export function memoryArray(bytes: Buffer, source: string): ArraySource {
  const h = parseNpyHeader(bytes, source, bytes.length);
  const rb = rowBytes(h);
  return {
    source, type: h.type, shape: h.shape, itemBytes: h.itemBytes,
    rows: (start, end) => bytes.subarray(h.dataOffset + start * rb, h.dataOffset + end * rb),
  };
}

export function openNpy(file: string): ArraySource {
  return fileArray(file, 0, fs.statSync(file).size, file);
}

/** Write an .npy file (format 1.0, C order). */
export function encodeNpy(type: ElemType, shape: readonly number[], data: Uint8Array): Buffer {
  const descr = Object.entries(DESCR).find(([, v]) => v.type === type)![0];
  let header = `{'descr': '${descr}', 'fortran_order': False, 'shape': (${shape.join(", ")}${shape.length === 1 ? "," : ""}), }`;
  const total = 10 + header.length + 1;
  header += " ".repeat((64 - (total % 64)) % 64) + "\n";
  const head = Buffer.alloc(10);
  MAGIC.copy(head, 0);
  head[6] = 1;
  head[7] = 0;
  head.writeUInt16LE(header.length, 8);
  return Buffer.concat([head, Buffer.from(header, "latin1"), data]);
}
