import { describe, expect, it } from "vitest";
import * as fs from "node:fs";
import * as path from "node:path";
import { loadModel, saveModel } from "../src/onnx/model.js";
import { createSession, ortMessage, runSession, runtimeBytes } from "../src/ort/ort.js";
import { openCalibration } from "../src/data/calib.js";
import { isEeToolError } from "../src/errors.js";
import { ROOT, TEXT, runCli, tmpDir } from "./helpers/fixtures.js";

const FIX = (p: string): string => path.join(ROOT, "fixtures", p);

/** The text fixture as a torch export without dynamic axes would declare it: batch fixed at 4. */
function fixedBatchModel(dir: string): string {
  const m = loadModel(TEXT);
  for (const i of m.proto.graph!.input ?? []) i.type!.tensor_type!.shape!.dim![0] = { dim_value: 4 };
  return saveModel(m, path.join(dir, "text_b4.onnx")).path;
}

describe("onnxruntime's messages keep their detail", () => {
  it("joins the lines that say what is wrong and drops the boilerplate", () => {
    const raw = "Got invalid dimensions for input: input_ids for the following indices\n index: 0 Got: 8 Expected: 4\n Please fix either the inputs/outputs or the model.";
    expect(ortMessage(raw)).toBe("Got invalid dimensions for input: input_ids for the following indices: index: 0 Got: 8 Expected: 4");
    expect(ortMessage("Invalid rank for input: x Got: 3 Expected: 2 Please fix either the inputs/outputs or the model.")).toBe("Invalid rank for input: x Got: 3 Expected: 2");
    expect(ortMessage("a\n\n  b\n    at Object.run (x.js:1:1)")).toBe("a; b");
  });

  it("a real wrong-batch run names the input, the index and both sizes on one line", async () => {
    const file = fixedBatchModel(tmpDir());
    const model = loadModel(file);
    const session = await createSession(runtimeBytes(model.proto));
    // Bypass ee-tool's own up-front check: feed 8 rows straight to onnxruntime.
    const data = openCalibration(FIX("text/calib.npz"), loadModel(TEXT).proto);
    const err = await runSession(session, data.feeds(0, 8)).then(() => undefined, (e: unknown) => e);
    await session.release();
    expect(isEeToolError(err) && err.code).toBe("RUNTIME_FAILED");
    const msg = (err as Error).message;
    expect(msg).not.toMatch(/\n/);
    expect(msg).toMatch(/input_ids.*index: 0 Got: 8 Expected: 4/);
  });
});

describe("a model whose batch dimension is fixed", () => {
  it("insert handles it; profile and eval refuse other batch sizes up front, and run at the fixed one", () => {
    const dir = tmpDir();
    const model = fixedBatchModel(dir);
    const ee = path.join(dir, "ee.onnx");
    const ins = runCli(["insert", model, "--calib", FIX("text/calib.npz"), "--exits", "2", "--ramp", "linear", "-o", ee]);
    expect(ins.stderr).not.toMatch(/error/);
    expect(ins.code).toBe(0);

    const prof = path.join(dir, "p.json");
    const refused = runCli(["profile", ee, "--calib", FIX("text/calib.npz"), "-o", prof]);
    expect(refused.code).toBe(2);
    const lines = refused.stderr.trim().split("\n");
    expect(lines.length).toBe(2);
    expect(lines[0]).toBe("ee-tool: error [FIXED_BATCH]: input 'input_ids' has a fixed batch dimension of 4, so profile --batch 1 cannot run");
    expect(lines[1]).toMatch(/hint: Re-export with a dynamic batch axis .*dynamic_axes=\{'input_ids': \{0: 'batch'\}\}.*use batch 4/);
    expect(fs.existsSync(prof)).toBe(false);

    expect(runCli(["profile", ee, "--calib", FIX("text/calib.npz"), "--batch", "4", "--budget", "300", "-o", prof, "-q"]).code).toBe(0);
    const plan = path.join(dir, "plan.json");
    expect(runCli(["plan", prof, "--batch", "4", "--measure-budget", "300", "-o", plan, "-q"]).code).toBe(0);
    const wrong = runCli(["eval", plan, "--data", FIX("text/eval.npz"), "--batch", "2"]);
    expect(wrong.code).toBe(2);
    expect(wrong.stderr).toMatch(/^ee-tool: error \[FIXED_BATCH\]: input 'input_ids' has a fixed batch dimension of 4, so eval --batch 2 cannot run/);
    const ok = runCli(["eval", plan, "--data", FIX("text/eval.npz"), "--json", "-q"]);
    expect(ok.code).toBe(0);
    const report = JSON.parse(ok.stdout) as { batch: number; samples: number; runtime: { rowRemoval: boolean; threads: number | null }; accuracy: { dropVsModel: number } };
    expect(report.batch).toBe(4);
    // Both ran with the threads the profile chose and the plan records.
    expect(report.runtime.threads).toBe((JSON.parse(fs.readFileSync(plan, "utf8")) as { profile: { threads: number | null } }).profile.threads);
    expect(report.samples).toBe(2000);
    // Rows of a fixed batch cannot leave it: the runtime keeps all four and picks each row's exit.
    expect(report.runtime.rowRemoval).toBe(false);
    expect(report.accuracy.dropVsModel).toBeLessThan(0.03);
  });
});
