import { describe, expect, it } from "vitest";
import * as fs from "node:fs";
import * as path from "node:path";
import { ROOT } from "./helpers/fixtures.js";

/**
 * The pipeline, bottom to top: a folder may import its own and those below it, never one above.
 * Folders on one line are peers and do not import each other.
 */
const LAYERS = [
  ["util"],
  ["onnx"],
  ["ort"],
  ["ir"],
  ["data"],
  ["analysis"],
  ["ramps"],
  ["stages"],
  ["profile"],
  ["plan"],
  ["emit"],
  ["runtime"],
  ["eval", "serve"],
  ["report"],
  ["pipeline"],
  ["cli"],
];

function imports(file: string): string[] {
  const src = fs.readFileSync(file, "utf8");
  return [...src.matchAll(/(?:from|import)\s*\(?\s*"(\.{1,2}\/[^"]+)"/g)].map((m) => m[1]!);
}

describe("source layout", () => {
  it("no folder of src/ imports one above it in the pipeline (types included)", () => {
    const level = new Map(LAYERS.flatMap((names, i) => names.map((n) => [n, i] as const)));
    const srcDir = path.join(ROOT, "src");
    const folders = fs.readdirSync(srcDir, { withFileTypes: true }).filter((d) => d.isDirectory()).map((d) => d.name);
    expect(folders.filter((f) => !level.has(f))).toEqual([]);
    const violations: string[] = [];
    for (const folder of folders) {
      for (const f of fs.readdirSync(path.join(srcDir, folder)).filter((x) => x.endsWith(".ts"))) {
        for (const spec of imports(path.join(srcDir, folder, f))) {
          const target = path.relative(srcDir, path.resolve(srcDir, folder, spec)).split(path.sep);
          if (target.length < 2 || target[0] === folder) continue; // a root module (errors.ts) or its own folder
          const to = level.get(target[0]!);
          if (to === undefined || to >= level.get(folder)!) violations.push(`src/${folder}/${f} imports ${spec}`);
        }
      }
    }
    expect(violations).toEqual([]);
  });
});
