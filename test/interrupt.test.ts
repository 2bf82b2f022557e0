/**
 * Interrupted writes: killing ee-tool while it writes a large output leaves the previous file or
 * none, never a partial one; SIGINT also removes the temporary file.
 */
import { describe, expect, it } from "vitest";
import * as fs from "node:fs";
import * as path from "node:path";
import { spawn } from "node:child_process";
import { ROOT, tmpDir } from "./helpers/fixtures.js";
import { serializeModel } from "../src/onnx/model.js";
import { makeTensor } from "../src/onnx/tensor.js";
import { makeValueInfo } from "../src/ir/shapes.js";
import { DataType } from "../src/onnx/dtype.js";

function bigModel(file: string, megabytes: number): void {
  const n = (megabytes * 1024 * 1024) / 4;
  const w = new Float32Array(n).map((_, i) => i % 251);
  fs.writeFileSync(file, serializeModel({
    ir_version: 8, opset_import: [{ domain: "", version: 17 }],
    graph: {
      name: "big", node: [{ op_type: "Add", input: ["x", "w"], output: ["y"], name: "add" }],
      initializer: [makeTensor("w", DataType.FLOAT, [n], w)],
      input: [makeValueInfo("x", DataType.FLOAT, [n])], output: [makeValueInfo("y", DataType.FLOAT, [n])],
    },
  }));
}

/** Start `ee-tool convert`, wait until its temporary output file appears, then send a signal. */
async function killDuringWrite(input: string, output: string, extra: string[], signal: NodeJS.Signals): Promise<{ code: number | null; signal: NodeJS.Signals | null; sawTemp: boolean }> {
  const dir = path.dirname(output);
  const child = spawn(process.execPath, [path.join(ROOT, "bin/ee-tool.js"), "convert", input, "-o", output, ...extra], { stdio: "ignore" });
  let sawTemp = false;
  const deadline = Date.now() + 20_000;
  while (Date.now() < deadline && child.exitCode === null) {
    if (fs.readdirSync(dir).some((f) => f.includes(".tmp-"))) {
      sawTemp = true;
      child.kill(signal);
      break;
    }
    await new Promise((r) => setTimeout(r, 1));
  }
  return new Promise((resolve) => child.on("exit", (code, sig) => resolve({ code, signal: sig, sawTemp })));
}

describe("interrupted writes", () => {
  it("SIGKILL and SIGINT during a large write leave the previous file or none, never a partial one", async () => {
    const dir = tmpDir();
    const input = path.join(dir, "big.onnx");
    bigModel(input, 256);
    const expected = fs.statSync(input).size;
    let interrupted = 0;
    for (const signal of ["SIGKILL", "SIGINT"] as const) {
      // No previous file: afterwards there is none, or a complete one.
      const out = path.join(dir, `out-${signal}.onnx`);
      const r = await killDuringWrite(input, out, [], signal);
      if (r.sawTemp) interrupted++;
      if (fs.existsSync(out)) expect(fs.statSync(out).size).toBe(expected);
      // A previous file stays intact (external data and model file both).
      const prev = path.join(dir, `prev-${signal}.onnx`);
      fs.writeFileSync(prev, "previous contents");
      await killDuringWrite(input, prev, [], signal);
      const now = fs.readFileSync(prev);
      expect(now.toString() === "previous contents" || now.length === expected).toBe(true);
      if (signal === "SIGINT") expect(fs.readdirSync(dir).filter((f) => f.includes(".tmp-"))).toEqual([]);
      else for (const f of fs.readdirSync(dir).filter((x) => x.includes(".tmp-"))) fs.rmSync(path.join(dir, f));
    }
    expect(interrupted).toBeGreaterThan(0);
  }, 120_000);
});
