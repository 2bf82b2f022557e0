/**
 * Atomic output: every file ee-tool writes goes to a temporary file in the destination's
 * directory and is renamed into place once complete. A process killed at any moment leaves the
 * previous file or none, never a partial one. Temporary files of an interrupted run (SIGINT,
 * SIGTERM) are removed before the process exits. Like onnx.save, the data is not fsync'ed (that
 * would guard against power loss, at the cost of a disk flush per output); set EE_TOOL_FSYNC=1
 * to flush every output before the rename.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { randomBytes } from "node:crypto";
import { EeToolError, messageOf } from "../errors.js";

const inFlight = new Set<string>();
let handlersInstalled = false;

function installSignalCleanup(): void {
  if (handlersInstalled) return;
  handlersInstalled = true;
  for (const signal of ["SIGINT", "SIGTERM"] as const) {
    process.once(signal, () => {
      for (const tmp of inFlight) {
        try {
          fs.unlinkSync(tmp);
        } catch {
          /* already gone */
        }
      }
      process.exit(signal === "SIGINT" ? 130 : 143);
    });
  }
}

/** Bytes gathered before one write(2); pieces at least this large are written directly. */
const CHUNK = 4 * 1024 * 1024;

function writeAll(fd: number, data: Uint8Array): void {
  let off = 0;
  while (off < data.length) {
    // writeSync takes at most 2 GiB at a time.
    const n = fs.writeSync(fd, data, off, Math.min(data.length - off, 1 << 30));
    off += n;
  }
}

/** A sink that coalesces small pieces into large writes. */
export class PieceWriter {
  private chunk = Buffer.allocUnsafe(CHUNK);
  private used = 0;
  bytesWritten = 0;

  constructor(private readonly fd: number) {}

  write(piece: Uint8Array): void {
    this.bytesWritten += piece.length;
    if (piece.length >= CHUNK / 4) {
      this.flush();
      writeAll(this.fd, piece);
      return;
    }
    if (this.used + piece.length > CHUNK) this.flush();
    this.chunk.set(piece, this.used);
    this.used += piece.length;
  }

  flush(): void {
    if (this.used > 0) writeAll(this.fd, this.chunk.subarray(0, this.used));
    this.used = 0;
  }
}

/**
 * Write a file atomically: `fill` receives a PieceWriter on a temporary file in the same directory;
 * when it returns the file is flushed and renamed over `target`.
 */
export function writeFileAtomic(target: string, fill: (out: PieceWriter) => void): void {
  installSignalCleanup();
  const dir = path.dirname(path.resolve(target));
  const tmp = path.join(dir, `.${path.basename(target)}.tmp-${process.pid}-${randomBytes(4).toString("hex")}`);
  let fd: number;
  try {
    fd = fs.openSync(tmp, "wx", 0o644);
  } catch (e) {
    throw new EeToolError("WRITE_FAILED", `cannot write ${target}: ${messageOf(e)}`, { cause: e });
  }
  inFlight.add(tmp);
  try {
    const out = new PieceWriter(fd);
    fill(out);
    out.flush();
    if (process.env.EE_TOOL_FSYNC === "1") fs.fsyncSync(fd);
    fs.closeSync(fd);
    fs.renameSync(tmp, target);
  } catch (e) {
    try {
      fs.closeSync(fd);
    } catch {
      /* closed already */
    }
    try {
      fs.unlinkSync(tmp);
    } catch {
      /* never created */
    }
    if (e instanceof EeToolError) throw e;
    throw new EeToolError("WRITE_FAILED", `cannot write ${target}: ${messageOf(e)}`, { cause: e });
  } finally {
    inFlight.delete(tmp);
  }
}

/** Atomically write a whole buffer or string. */
export function writeBytesAtomic(target: string, data: Uint8Array | string): void {
  const bytes = typeof data === "string" ? Buffer.from(data, "utf8") : data;
  writeFileAtomic(target, (out) => out.write(bytes));
}
