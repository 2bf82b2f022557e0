#!/usr/bin/env bash
# ee-tool on a GPU: profile, plan and eval of both fixtures with --ep webgpu, and with --ep cuda
# where this onnxruntime build has its CUDA providers, at batch 1 and 32; prints each run's measured
# saving, accuracy drop, throughput (rows/s) and per-stage latency beside the model's.
#
# On a Linux machine with nothing but an NVIDIA driver: carry the checkout with its dist/ built and
# .gpu/ made by bench/gpu-pack.sh (node and production node_modules), and for WebGPU a Vulkan loader
# (libvulkan.so.1) on the library path with the driver's ICD (VK_ICD_FILENAMES or the driver's
# default). Everything is written under $1 (default: a temporary directory). Budgeted to finish in
# about 3 minutes on one GPU: small latency budgets, the first 512 evaluation samples.
#   bench/gpu.sh [out-dir]            EE_GPU_EPS="webgpu cuda" to choose providers yourself
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
out=${1:-$(mktemp -d)}
mkdir -p "$out"
start=$(date +%s)
if [ -f .gpu/node.xz ] && [ ! -x .gpu/node ]; then xz -dc .gpu/node.xz > .gpu/node && chmod +x .gpu/node; fi
if [ -f .gpu/modules.tar.xz ] && [ ! -d node_modules/onnxruntime-node ]; then xz -dc .gpu/modules.tar.xz | tar -xf -; fi
NODE=${NODE:-$( [ -x .gpu/node ] && echo "$root/.gpu/node" || command -v node )}
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-$(mktemp -d)}
ee() { "$NODE" "$root/bin/ee-tool.js" "$@"; }
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
ee inspect --providers
if [ -z "${EE_GPU_EPS:-}" ]; then
  EE_GPU_EPS=$(ee inspect --providers --json | "$NODE" --input-type=module -e 'import * as fs from "node:fs"; const p=JSON.parse(fs.readFileSync(0,"utf8")).providers; console.log(p.filter(x=>x.available&&["webgpu","cuda"].includes(x.name)).map(x=>x.name).join(" "))')
fi
[ -n "$EE_GPU_EPS" ] || { echo "no GPU provider runs here (see the table above)"; exit 1; }
echo "providers: $EE_GPU_EPS"
for f in cnn text; do
  # The first 512 evaluation samples, one .npy per input (keeps eval short on any provider).
  data=$("$NODE" --input-type=module -e '
    import * as fs from "node:fs";
    const [root, f, dir] = process.argv.slice(1);
    const { openCalibration } = await import(`${root}/dist/data/calib.js`);
    const { loadModel } = await import(`${root}/dist/onnx/model.js`);
    const { encodeNpy } = await import(`${root}/dist/data/npy.js`);
    const m = loadModel(`${root}/fixtures/${f}/model.onnx`);
    const feeds = openCalibration(`${root}/fixtures/${f}/eval.npz`, m.proto).feeds(0, 512);
    console.log(Object.entries(feeds).map(([k, t]) => {
      const file = `${dir}/${f}.eval.${k}.npy`;
      fs.writeFileSync(file, encodeNpy(t.type, t.dims, new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength)));
      return `${k}=${file}`;
    }).join(","));' "$root" "$f" "$out")
  ee insert "fixtures/$f/model.onnx" --calib "fixtures/$f/calib.npz" -o "$out/$f.ee.onnx" -q
  for ep in $EE_GPU_EPS; do
    t0=$(date +%s)
    ee profile "$out/$f.ee.onnx" --calib "fixtures/$f/calib.npz" --ep "$ep" --batch 1,32 --budget 4000 -o "$out/$f.$ep.profile.json" -q
    for b in 1 32; do
      ee plan "$out/$f.$ep.profile.json" --max-drop 0.01 --batch "$b" -o "$out/$f.$ep.b$b.plan.json" -q
      ee eval "$out/$f.$ep.b$b.plan.json" --data "$data" --ep "$ep" --batch "$b" --throughput "$b" --json -q > "$out/$f.$ep.b$b.eval.json"
    done
    "$NODE" --input-type=module -e '
      import * as fs from "node:fs";
      const [dir, f, ep] = process.argv.slice(1);
      const prof = JSON.parse(fs.readFileSync(`${dir}/${f}.${ep}.profile.json`, "utf8"));
      const pct = (x) => (x * 100).toFixed(1) + "%";
      const pl = prof.environment.placement;
      console.log(`${f} on ${ep}: placement ${pl ? JSON.stringify(pl.nodes) + ", " + pl.copies + " copies" + (Object.keys(pl.fallback).length ? ", fallen back " + JSON.stringify(pl.fallback) : "") : "-"}`);
      for (const b of ["1", "32"]) {
        const r = JSON.parse(fs.readFileSync(`${dir}/${f}.${ep}.b${b}.eval.json`, "utf8"));
        const plan = JSON.parse(fs.readFileSync(`${dir}/${f}.${ep}.b${b}.plan.json`, "utf8"));
        const l = prof.latency[b]; const t = r.throughput[0];
        console.log(`  batch ${b}: ${plan.exits.length} exits, form ${r.runtime.form}; saving ${pct(r.latency.saving)} (predicted ${pct(plan.expected.saving)}), drop ${pct(r.accuracy.dropVsModel)} (max 1%)`);
        console.log(`    rows/s: model ${t.model.rowsPerSecond.toFixed(0)}, early exit ${t.earlyExit.rowsPerSecond.toFixed(0)}, release early ${t.releaseEarly ? t.releaseEarly.rowsPerSecond.toFixed(0) : "-"}; ms per row to the answer: ${t.model.rowLatencyMs.toFixed(3)} / ${t.earlyExit.rowLatencyMs.toFixed(3)} / ${t.releaseEarly ? t.releaseEarly.rowLatencyMs.toFixed(3) : "-"}`);
        console.log(`    model ${l.model.p50.toFixed(3)} ms; stages in place ${l.inPlace.map((s) => s.p50.toFixed(3)).join(" ")} ms; exits taken ${l.exits.map((e) => e.fire.p50.toFixed(3)).join(" ")} ms; forms one-call ${l.forms.oneCall.toFixed(3)} / segments ${l.forms.segments.toFixed(3)} ms`);
      }' "$out" "$f" "$ep"
    echo "  ($(( $(date +%s) - t0 )) s)"
  done
done
echo "bench/gpu.sh: $(( $(date +%s) - start )) s in all; outputs in $out"
