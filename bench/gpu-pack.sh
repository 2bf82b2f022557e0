#!/usr/bin/env bash
# Packs what bench/gpu.sh needs on a Linux x86-64 machine that has nothing but its GPU driver:
# this node binary (xz) and the production node_modules with onnxruntime-node's linux/x64 binaries
# only (xz), into .gpu/ in the checkout (with the CUDA providers too, when they are installed here).
# Prints the sizes: the two archives are about 45 MB together.
#   npm ci && bench/gpu-pack.sh        then carry .gpu/ with the checkout and run bench/gpu.sh there
set -euo pipefail
cd "$(dirname "$0")/.."
out=.gpu
rm -rf "$out" && mkdir -p "$out"
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
xz -T0 -6 -c "$(command -v node)" > "$out/node.xz"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
cp package.json package-lock.json "$stage/"
(cd "$stage" && ONNXRUNTIME_NODE_INSTALL=skip npm ci --omit=dev --ignore-scripts --no-audit --no-fund --loglevel=error)
# Only this platform's onnxruntime binaries (and the CUDA providers, where installed here).
find "$stage/node_modules/onnxruntime-node/bin/napi-v6" -mindepth 1 -maxdepth 1 ! -name linux -exec rm -rf {} +
rm -rf "$stage/node_modules/onnxruntime-node/bin/napi-v6/linux/arm64"
cp node_modules/onnxruntime-node/bin/napi-v6/linux/x64/libonnxruntime_providers_*.so "$stage/node_modules/onnxruntime-node/bin/napi-v6/linux/x64/" 2>/dev/null || true
tar -C "$stage" -cf - node_modules | xz -T0 -6 > "$out/modules.tar.xz"
du -h "$out"/*
