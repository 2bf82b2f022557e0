#!/usr/bin/env bash
# The exit-path table of docs/profile.md: for each fixture, insert (default ramps), profile at
# batch 1 and 8, plan at batch 1 and at batch 8 (max drop 1%; its paths measured in its runtime on
# the calibration data, as plan does by default, unless MODELLED=1: plan --no-measure), then bench/exit-paths.mjs at each.
#   npm run build && bench/paths.sh [budget-ms, default 30000] [fixtures or x.onnx files, default "cnn text vit"]
# The "before" rows came from the same steps at commit 619a28f with its own bench/exit-paths.mjs
# (git worktree add /tmp/old 619a28f; profile at --batch 1 only, default budget).
set -uo pipefail
cd "$(dirname "$0")/.."
budget=${1:-30000}
w=$(mktemp -d)
for f in ${2:-cnn text vit}; do
  # A fixture's name, or a model file x.onnx with x.calib.npz and x.eval.npz beside it.
  if [[ "$f" == *.onnx ]]; then
    model="$f"; calib="${f%.onnx}.calib.npz"; eval="${f%.onnx}.eval.npz"; f=$(basename "${f%.onnx}")
  else
    model="fixtures/$f/model.onnx"; calib="fixtures/$f/calib.npz"; eval="fixtures/$f/eval.npz"
  fi
  node bin/ee-tool.js insert "$model" --calib "$calib" -o "$w/$f.ee.onnx" -q
  node bin/ee-tool.js profile "$w/$f.ee.onnx" --calib "$calib" --batch 1,8 --budget "$budget" -o "$w/$f.profile.json" -q
  for b in 1 8; do
    measure=(); [[ -n "${MODELLED:-}" ]] && measure=(--no-measure)
    node bin/ee-tool.js plan "$w/$f.profile.json" --max-drop 0.01 --batch "$b" "${measure[@]}" -o "$w/$f.b$b.plan.json" -q
    echo "== $f, batch $b"
    node bench/exit-paths.mjs "$w/$f.b$b.plan.json" "$eval" --profile "$w/$f.profile.json" --batch "$b"
  done
done
echo "outputs in $w"
