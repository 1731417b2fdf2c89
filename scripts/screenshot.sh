#!/usr/bin/env bash
# Takes a screenshot of the status page, as a person would see it during a drill: runs
# `tandem demo` (demo pools, a balancer and the admin API on loopback), waits until its tour
# is done, and points a headless Chromium at http://127.0.0.1:ADMIN_PORT/.
#
#   scripts/screenshot.sh [OUT.png]      # default: status-page.png
# Needs chromium (apt-get install chromium).
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-status-page.png}")
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
listen=127.0.0.1:$(port)
admin=127.0.0.1:$(port)
cargo build --release --quiet
log=$(mktemp)
profile=$(mktemp -d)
RUST_LOG=error target/release/tandem demo --listen "$listen" --admin "$admin" >"$log" 2>&1 &
demo=$!
trap 'kill $demo 2>/dev/null || true; rm -rf "$log" "$profile"' EXIT
for _ in $(seq 600); do grep -q "Try it yourself" "$log" && break; sleep 0.1; done
chromium --headless --no-sandbox --disable-gpu --disable-dev-shm-usage --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$profile" --window-size=1280,1000 \
  --screenshot="$out" "http://$admin/" 2>/dev/null
echo "wrote $out"
