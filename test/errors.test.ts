import { describe, expect, it } from "vitest";
import * as fs from "node:fs";
import * as path from "node:path";
import { ErrorCodes, EeToolError, ExitCode } from "../src/errors.js";
import { ROOT } from "./helpers/fixtures.js";

describe("error catalogue", () => {
  it("documents every error code with its exit status in docs/errors.md", () => {
    const doc = fs.readFileSync(path.join(ROOT, "docs/errors.md"), "utf8");
    for (const [code, def] of Object.entries(ErrorCodes)) {
      expect(doc, code).toMatch(new RegExp(`\\| \`${code}\` \\| ${def.exit} \\|`));
    }
    const documented = [...doc.matchAll(/^\| `([A-Z_]+)` \|/gm)].map((m) => m[1]);
    expect(documented.sort()).toEqual(Object.keys(ErrorCodes).sort());
  });

  it("carries code, hint and exit status", () => {
    const e = new EeToolError("NOT_ONNX", "x");
    expect(e.exitCode).toBe(ExitCode.INPUT);
    expect(e.hint).toMatch(/ONNX/);
    expect(new EeToolError("USAGE", "y").exitCode).toBe(1);
    expect(new EeToolError("INTERNAL", "z").exitCode).toBe(4);
  });
});
