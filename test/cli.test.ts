import { describe, expect, it } from "vitest";
import * as fs from "node:fs";
import * as path from "node:path";
import { CNN, runCli, tmpDir } from "./helpers/fixtures.js";
import { loadModel, saveModel } from "../src/onnx/model.js";

/** One line saying what is wrong, one hint, no stack trace. */
function expectCleanError(r: { code: number; stderr: string; stdout: string }, code: string, exit = 2): void {
  expect(r.code).toBe(exit);
  const lines = r.stderr.trim().split("\n");
  expect(lines[0]).toMatch(new RegExp(`^ee-tool: error \\[${code}\\]: `));
  expect(lines[1]).toMatch(/^ {2}hint: /);
  expect(lines.length).toBe(2);
  expect(r.stderr).not.toMatch(/\n\s+at /);
  expect(r.stdout).toBe("");
}

describe("ee-tool CLI", () => {
  it("lists its commands and documents every option with an example", () => {
    const r = runCli(["--help"]);
    expect(r.code).toBe(0);
    for (const cmd of ["inspect", "convert", "insert", "profile", "merge", "plan", "eval", "report", "run"]) expect(r.stdout).toMatch(new RegExp(`\\n  ${cmd} `));
    for (const cmd of ["inspect", "convert", "insert", "profile", "merge", "plan", "eval", "report", "run"]) {
      const h = runCli([cmd, "--help"]);
      expect(h.code).toBe(0);
      expect(h.stdout).toMatch(/Examples:\n\s+\$ ee-tool /);
    }
  });

  it("inspect prints the model's facts, and --json the same as one document", () => {
    const r = runCli(["inspect", CNN]);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/ir\s+8\s+opsets ai\.onnx:17/);
    expect(r.stdout).toMatch(/producer\s+pytorch/);
    expect(r.stdout).toMatch(/image\s+float\s+\[batch,1,28,28\]/);
    expect(r.stdout).toMatch(/Conv\s+15/);
    const j = runCli(["inspect", CNN, "--json"]);
    const s = JSON.parse(j.stdout);
    expect(s.irVersion).toBe(8);
    expect(s.opsets).toEqual([{ domain: "ai.onnx", version: 17 }]);
    expect(s.inputs).toEqual([{ name: "image", type: "float", shape: ["batch", 1, 28, 28] }]);
    expect(s.outputs).toEqual([{ name: "logits", type: "float", shape: ["batch", 10] }]);
    expect(s.ops.find((o: { op: string }) => o.op === "Conv").count).toBe(15);
    expect(s.parameters.count).toBeGreaterThan(100_000);
    expect(j.stderr).toBe("");
  });

  it("inspect lists external data files", () => {
    const dir = tmpDir();
    saveModel(loadModel(CNN), path.join(dir, "m.onnx"), { externalData: "m.weights" });
    const s = JSON.parse(runCli(["inspect", path.join(dir, "m.onnx"), "--json"]).stdout);
    expect(s.externalData).toHaveLength(1);
    expect(s.externalData[0].location).toBe("m.weights");
    expect(s.externalData[0].tensors).toBeGreaterThan(10);
  });

  it("convert without options is a byte-identical round trip; --external-data and --inline move tensors", () => {
    const dir = tmpDir();
    const copy = path.join(dir, "copy.onnx");
    let r = runCli(["convert", CNN, "-o", copy]);
    expect(r.code).toBe(0);
    expect(fs.readFileSync(copy).equals(fs.readFileSync(CNN))).toBe(true);
    r = runCli(["convert", CNN, "-o", path.join(dir, "ext.onnx"), "--external-data", "ext.data"]);
    expect(r.code).toBe(0);
    expect(r.stderr).toMatch(/wrote .*ext\.data \(\d+ tensors/);
    r = runCli(["convert", path.join(dir, "ext.onnx"), "-o", path.join(dir, "inline.onnx"), "--inline"]);
    expect(r.code).toBe(0);
    expect(fs.readFileSync(path.join(dir, "inline.onnx")).equals(fs.readFileSync(CNN))).toBe(true);
  });

  it("bad input: one clear line and a hint, exit 2, no stack trace", () => {
    const dir = tmpDir();
    expectCleanError(runCli(["inspect", path.join(dir, "missing.onnx")]), "FILE_NOT_FOUND");
    expectCleanError(runCli(["inspect", dir]), "NOT_A_FILE");
    fs.writeFileSync(path.join(dir, "junk.onnx"), "definitely not protobuf");
    expectCleanError(runCli(["inspect", path.join(dir, "junk.onnx")]), "NOT_ONNX");
    fs.writeFileSync(path.join(dir, "cut.onnx"), fs.readFileSync(CNN).subarray(0, 200_000));
    expectCleanError(runCli(["inspect", path.join(dir, "cut.onnx")]), "NOT_ONNX");
    saveModel(loadModel(CNN), path.join(dir, "e.onnx"), { externalData: "e.data" });
    fs.rmSync(path.join(dir, "e.data"));
    expectCleanError(runCli(["inspect", path.join(dir, "e.onnx")]), "EXTERNAL_DATA_MISSING");
    const withDebug = runCli(["inspect", path.join(dir, "e.onnx"), "--debug"]);
    expect(withDebug.stderr).toMatch(/\n\s+at /);
  });

  it("usage errors exit 1; an unwritable output leaves nothing behind", () => {
    expect(runCli(["inspect"]).code).toBe(1);
    expect(runCli(["frobnicate"]).code).toBe(1);
    const dir = tmpDir();
    expectCleanError(runCli(["convert", CNN, "-o", path.join(dir, "no/such/dir/out.onnx")]), "WRITE_FAILED");
    expectCleanError(runCli(["convert", CNN, "-o", path.join(dir, "x.onnx"), "--inline", "--external-data", "x.data"]), "USAGE", 1);
    expect(fs.readdirSync(dir)).toEqual([]);
  });
});
