/** SHA-256 of files, read in 1 MiB blocks (models and data sets may not fit in memory twice). */
import * as fs from "node:fs";
import { createHash } from "node:crypto";

export function sha256File(file: string): string {
  const h = createHash("sha256");
  const fd = fs.openSync(file, "r");
  const buf = Buffer.alloc(1 << 20);
  try {
    for (let pos = 0; ; ) {
      const n = fs.readSync(fd, buf, 0, buf.length, pos);
      if (n === 0) break;
      h.update(buf.subarray(0, n));
      pos += n;
    }
  } finally {
    fs.closeSync(fd);
  }
  return h.digest("hex");
}

/** SHA-256 of a string (hex). */
export function sha256Text(text: string): string {
  return createHash("sha256").update(text).digest("hex");
}
