/**
 * NumPy .npz archives (zip files of .npy members). Stored members (np.savez) stream from disk;
 * deflated members (np.savez_compressed) are decompressed into memory.
 */
import * as fs from "node:fs";
import * as zlib from "node:zlib";
import { EeToolError } from "../errors.js";
import { fileArray, memoryArray, type ArraySource } from "./npy.js";

interface ZipEntry {
  name: string;
  method: number;
  compressedSize: number;
  size: number;
  localHeader: number;
}

function readAt(fd: number, pos: number, len: number): Buffer {
  const b = Buffer.alloc(len);
  const n = fs.readSync(fd, b, 0, len, pos);
  return b.subarray(0, n);
}

function zip64Values(extra: Buffer, want: { size: boolean; csize: boolean; offset: boolean }): { size?: number; csize?: number; offset?: number } {
  let p = 0;
  while (p + 4 <= extra.length) {
    const id = extra.readUInt16LE(p);
    const len = extra.readUInt16LE(p + 2);
    if (id === 0x0001) {
      let q = p + 4;
      const out: { size?: number; csize?: number; offset?: number } = {};
      const next = (): number => {
        const v = Number(extra.readBigUInt64LE(q));
        q += 8;
        return v;
      };
      if (want.size) out.size = next();
      if (want.csize) out.csize = next();
      if (want.offset) out.offset = next();
      return out;
    }
    p += 4 + len;
  }
  return {};
}

function listEntries(file: string, fd: number, fileSize: number): ZipEntry[] {
  const tailLen = Math.min(fileSize, 65557);
  const tail = readAt(fd, fileSize - tailLen, tailLen);
  let eocd = -1;
  for (let i = tail.length - 22; i >= 0; i--) if (tail.readUInt32LE(i) === 0x06054b50) { eocd = i; break; }
  if (eocd < 0) throw new EeToolError("CALIB_INVALID", `${file} is not an .npz archive (no zip directory)`);
  let count = tail.readUInt16LE(eocd + 10);
  let cdSize = tail.readUInt32LE(eocd + 12);
  let cdOffset = tail.readUInt32LE(eocd + 16);
  if (cdOffset === 0xffffffff || count === 0xffff) {
    const loc = eocd - 20;
    if (loc < 0 || tail.readUInt32LE(loc) !== 0x07064b50) throw new EeToolError("CALIB_INVALID", `${file}: broken zip64 directory`);
    const eocd64 = readAt(fd, Number(tail.readBigUInt64LE(loc + 8)), 56);
    count = Number(eocd64.readBigUInt64LE(32));
    cdSize = Number(eocd64.readBigUInt64LE(40));
    cdOffset = Number(eocd64.readBigUInt64LE(48));
  }
  if (cdOffset + cdSize > fileSize) throw new EeToolError("CALIB_INVALID", `${file} is truncated (zip directory beyond the end)`);
  const cd = readAt(fd, cdOffset, cdSize);
  const entries: ZipEntry[] = [];
  let p = 0;
  for (let i = 0; i < count; i++) {
    if (p + 46 > cd.length || cd.readUInt32LE(p) !== 0x02014b50) throw new EeToolError("CALIB_INVALID", `${file}: broken zip directory entry ${i}`);
    const method = cd.readUInt16LE(p + 10);
    let csize = cd.readUInt32LE(p + 20);
    let size = cd.readUInt32LE(p + 24);
    const nameLen = cd.readUInt16LE(p + 28);
    const extraLen = cd.readUInt16LE(p + 30);
    const commentLen = cd.readUInt16LE(p + 32);
    let offset = cd.readUInt32LE(p + 42);
    const name = cd.subarray(p + 46, p + 46 + nameLen).toString("utf8");
    const extra = cd.subarray(p + 46 + nameLen, p + 46 + nameLen + extraLen);
    const z = zip64Values(extra, { size: size === 0xffffffff, csize: csize === 0xffffffff, offset: offset === 0xffffffff });
    size = z.size ?? size;
    csize = z.csize ?? csize;
    offset = z.offset ?? offset;
    entries.push({ name, method, compressedSize: csize, size, localHeader: offset });
    p += 46 + nameLen + extraLen + commentLen;
  }
  return entries;
}

/** The arrays of an .npz file by key (member name without '.npy'). */
export function openNpz(file: string): Map<string, ArraySource> {
  const fd = fs.openSync(file, "r");
  try {
    const fileSize = fs.fstatSync(fd).size;
    const out = new Map<string, ArraySource>();
    for (const e of listEntries(file, fd, fileSize)) {
      if (!e.name.endsWith(".npy")) continue;
      const key = e.name.slice(0, -4);
      const local = readAt(fd, e.localHeader, 30);
      if (local.length < 30 || local.readUInt32LE(0) !== 0x04034b50) throw new EeToolError("CALIB_INVALID", `${file}: member '${e.name}' has a broken header`);
      const dataStart = e.localHeader + 30 + local.readUInt16LE(26) + local.readUInt16LE(28);
      if (dataStart + e.compressedSize > fileSize) throw new EeToolError("CALIB_INVALID", `${file} is truncated (member '${e.name}')`);
      const source = `${file}:${key}`;
      if (e.method === 0) {
        out.set(key, fileArray(file, dataStart, e.size, source));
      } else if (e.method === 8) {
        let bytes: Buffer;
        try {
          bytes = zlib.inflateRawSync(readAt(fd, dataStart, e.compressedSize), { maxOutputLength: Math.max(e.size, 1) });
        } catch (err) {
          throw new EeToolError("CALIB_INVALID", `${file}: member '${e.name}' does not decompress (${(err as Error).message})`);
        }
        out.set(key, memoryArray(bytes, source));
      } else {
        throw new EeToolError("CALIB_INVALID", `${file}: member '${e.name}' uses zip compression method ${e.method}; only stored and deflate are supported`);
      }
    }
    return out;
  } finally {
    fs.closeSync(fd);
  }
}
