import { describe, expect, it } from "vitest";
import * as fs from "node:fs";
import * as path from "node:path";
import { zipSync } from "./helpers/zip.js";
import { encodeNpy, openNpy } from "../src/data/npy.js";
import { openNpz } from "../src/data/npz.js";
import { openCalibration, openLabels } from "../src/data/calib.js";
import { loadModel } from "../src/onnx/model.js";
import { EeToolError } from "../src/errors.js";
import { CNN, ROOT, tmpDir } from "./helpers/fixtures.js";

function code(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(EeToolError);
    return `${(e as EeToolError).code}: ${(e as EeToolError).message}`;
  }
  return "no error";
}

describe("calibration data files", () => {
  const dir = tmpDir();
  const write = (name: string, data: Uint8Array | string): string => {
    const p = path.join(dir, name);
    fs.writeFileSync(p, data);
    return p;
  };
  const good = encodeNpy("float32", [3, 2], new Uint8Array(Float32Array.of(1, 2, 3, 4, 5, 6).buffer));

  it("reads .npy rows with positioned reads", () => {
    const a = openNpy(write("a.npy", good));
    expect(a.shape).toEqual([3, 2]);
    expect(Array.from(new Float32Array(new Uint8Array(a.rows(1, 3)).buffer))).toEqual([3, 4, 5, 6]);
  });

  it("refuses truncated files, bad magic, Fortran order, big-endian and unsupported dtypes", () => {
    expect(code(() => openNpy(write("t.npy", good.subarray(0, good.length - 4))))).toMatch(/CALIB_INVALID: .*truncated/);
    expect(code(() => openNpy(write("m.npy", "not an npy file at all")))).toMatch(/CALIB_INVALID: .*bad magic/);
    const header = (descr: string, fortran = "False"): Buffer => {
      const h = `{'descr': '${descr}', 'fortran_order': ${fortran}, 'shape': (2,), }`.padEnd(117) + "\n";
      return Buffer.concat([Buffer.from([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, 1, 0]), Buffer.from([h.length, 0]), Buffer.from(h), Buffer.alloc(16)]);
    };
    expect(code(() => openNpy(write("f.npy", header("<f4", "True"))))).toMatch(/CALIB_INVALID: .*Fortran/);
    expect(code(() => openNpy(write("b.npy", header(">f4"))))).toMatch(/CALIB_INVALID: .*unsupported dtype '>f4'/);
    expect(code(() => openNpy(write("c.npy", header("<c8"))))).toMatch(/CALIB_INVALID: .*unsupported dtype '<c8'/);
    expect(code(() => openNpy(write("o.npy", header("|O"))))).toMatch(/CALIB_INVALID: .*unsupported dtype/);
  });

  it("reads stored and deflated .npz members; refuses broken archives", () => {
    const stored = write("s.npz", zipSync({ "x.npy": good }, false));
    const deflated = write("d.npz", zipSync({ "x.npy": good }, true));
    for (const f of [stored, deflated]) {
      const a = openNpz(f).get("x")!;
      expect(Array.from(new Float32Array(new Uint8Array(a.rows(0, 3)).buffer))).toEqual([1, 2, 3, 4, 5, 6]);
    }
    expect(code(() => openNpz(write("z.npz", fs.readFileSync(stored).subarray(0, 40))))).toMatch(/CALIB_INVALID/);
  });

  it("names the sample holding NaN or Inf", () => {
    const model = loadModel(CNN);
    const x = new Float32Array(12 * 784);
    x[5 * 784 + 17] = NaN;
    const f = write("nan.npy", encodeNpy("float32", [12, 1, 28, 28], new Uint8Array(x.buffer)));
    const calib = openCalibration(f, model.proto);
    expect(code(() => calib.feeds(0, 12))).toMatch(/CALIB_MISMATCH: input 'image', sample 5: value NaN is not finite/);
    x[5 * 784 + 17] = 0;
    x[9 * 784] = Infinity;
    const g = write("inf.npy", encodeNpy("float32", [12, 1, 28, 28], new Uint8Array(x.buffer)));
    expect(code(() => openCalibration(g, model.proto).feedsFor([2, 9]))).toMatch(/sample 9: value Infinity/);
  });

  it("checks labels", () => {
    const labels = openLabels(path.join(ROOT, "fixtures/cnn/calib_labels.npy"), 4000);
    expect(labels.length).toBe(4000);
    expect(code(() => openLabels(path.join(ROOT, "fixtures/cnn/calib_labels.npy"), 10))).toMatch(/CALIB_MISMATCH: .*4000 entries for 10 samples/);
    expect(code(() => openLabels(write("fl.npy", good), 3))).toMatch(/1-D array|integers/);
  });
});
