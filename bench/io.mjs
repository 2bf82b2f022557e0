// I/O benchmark: load and save large models with ee-tool and with Python onnx (C++ protobuf) in
// the same run; prints the time ratio and ee-tool's peak RSS against the file size.
//
//   /usr/bin/python3 bench/make-large-models.py .bench     # once: resnet50 (~100 MB), vit_b_16 (~330 MB)
//   npm run build && node bench/io.mjs [models...] [--repeat 5]
import { execFileSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";

const args = process.argv.slice(2);
const repeatAt = args.indexOf("--repeat");
const repeat = repeatAt >= 0 ? Number(args.splice(repeatAt, 2)[1]) : 5;
const models = args.length ? args : [".bench/resnet50.onnx", ".bench/vit_b_16.onnx"];
const python = process.env.PYTHON ?? "/usr/bin/python3";
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "ee-bench-io-"));
const here = path.dirname(new URL(import.meta.url).pathname);

const PY = `
import json, resource, sys, time, onnx
t0 = time.perf_counter(); m = onnx.load(sys.argv[1]); t1 = time.perf_counter()
rss_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
onnx.save(m, sys.argv[2]); t2 = time.perf_counter()
print(json.dumps({"loadMs": (t1 - t0) * 1e3, "saveMs": (t2 - t1) * 1e3, "rssAfterLoad": rss_load,
                  "peakRss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
`;

// Compare files in chunks: a parent holding them whole would inflate the children's max RSS
// (Linux keeps ru_maxrss across fork and exec).
function sameFile(a, b) {
  const fa = fs.openSync(a, "r"), fb = fs.openSync(b, "r");
  const ba = Buffer.alloc(1 << 20), bb = Buffer.alloc(1 << 20);
  try {
    for (let pos = 0; ; pos += ba.length) {
      const na = fs.readSync(fa, ba, 0, ba.length, pos), nb = fs.readSync(fb, bb, 0, bb.length, pos);
      if (na !== nb || !ba.subarray(0, na).equals(bb.subarray(0, nb))) return false;
      if (na === 0) return true;
    }
  } finally {
    fs.closeSync(fa);
    fs.closeSync(fb);
  }
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const mb = (b) => (b / 1e6).toFixed(0) + " MB";

const baseline = JSON.parse(execFileSync(process.execPath, [path.join(here, "io-child.mjs"), "baseline"], { encoding: "utf8" })).peakRss;
console.log(`Node with ee-tool's modules, nothing loaded: ${(baseline / 1e6).toFixed(0)} MB RSS`);
for (const model of models) {
  if (!fs.existsSync(model)) {
    console.error(`${model} not found: run /usr/bin/python3 bench/make-large-models.py .bench first`);
    process.exitCode = 2;
    continue;
  }
  const size = fs.statSync(model).size;
  const ee = [];
  const py = [];
  // Interleave the two tools so drift in machine load hits both alike.
  for (let i = 0; i < repeat; i++) {
    const outEe = path.join(tmp, "ee.onnx");
    const outPy = path.join(tmp, "py.onnx");
    ee.push(JSON.parse(execFileSync(process.execPath, [path.join(here, "io-child.mjs"), "load-save", model, outEe], { encoding: "utf8" })));
    py.push(JSON.parse(execFileSync(python, ["-c", PY, model, outPy], { encoding: "utf8" })));
    if (!sameFile(outEe, model)) throw new Error(`${model}: ee-tool's copy is not byte-identical`);
  }
  const pick = (rs, k) => median(rs.map((r) => r[k]));
  const eeLoad = pick(ee, "loadMs"), eeSave = pick(ee, "saveMs"), pyLoad = pick(py, "loadMs"), pySave = pick(py, "saveMs");
  const eeRssLoad = Math.max(...ee.map((r) => r.rssAfterLoad));
  const eePeak = Math.max(...ee.map((r) => r.peakRss));
  console.log(`${path.basename(model)} (${mb(size)}), median of ${repeat}:`);
  console.log(`  load       ee-tool ${eeLoad.toFixed(0)} ms  python onnx ${pyLoad.toFixed(0)} ms  ratio ${(eeLoad / pyLoad).toFixed(2)}`);
  console.log(`  save       ee-tool ${eeSave.toFixed(0)} ms  python onnx ${pySave.toFixed(0)} ms  ratio ${(eeSave / pySave).toFixed(2)}`);
  console.log(`  load+save  ratio ${((eeLoad + eeSave) / (pyLoad + pySave)).toFixed(2)} (ee-tool / python; below 1 is faster)`);
  console.log(`  ee-tool peak RSS: after load ${mb(eeRssLoad)} = ${(eeRssLoad / size).toFixed(2)}x file, load+save ${mb(eePeak)} = ${(eePeak / size).toFixed(2)}x file (above the empty process: ${((eePeak - baseline) / size).toFixed(2)}x)`);
  console.log(`  python  peak RSS: after load ${mb(Math.max(...py.map((r) => r.rssAfterLoad)))}, load+save ${mb(Math.max(...py.map((r) => r.peakRss)))}`);
}
fs.rmSync(tmp, { recursive: true, force: true });
