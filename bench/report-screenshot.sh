#!/usr/bin/env bash
# Render an ee-tool HTML report in headless Chromium (Debian package chromium) and save a PNG.
#   bash bench/report-screenshot.sh report.html report.png
set -euo pipefail
html=$(realpath "$1"); png=${2:-report.png}
profile=$(mktemp -d)
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
  --disable-component-update --disable-sync --user-data-dir="$profile" --window-size=1000,2200 \
  --screenshot="$png" "file://$html" 2>/dev/null
rm -rf "$profile"
echo "wrote $png"
