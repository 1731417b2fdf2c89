#!/usr/bin/env bash
# The failover storm, tandem vs HAProxy in the same run (benches/storm.rs does the work):
# CLIENTS clients (8000) hold connections through the local pool, the whole local pool is
# killed, every client reconnects at once (retrying 1 s after a failure) until the paired pool
# serves it. Prints, per proxy, the time from the kill until 50%, 99% and 100% of the clients are
# served again, the failed attempts the clients saw, the proxy's CPU and peak RSS, as medians of
# RUNS runs (targets take turns) with ratios tandem/HAProxy, and whether the target (tandem's
# t99 and errors no worse than HAProxy's) is met.
#
#   benches/storm.sh                      # RUNS=3 CLIENTS=8000, checks inter 2s fall 3 rise 2
#   RUNS=5 CHECK_INTER=1s benches/storm.sh
#
# The proxy gets one worker pinned to CPU 1; the clients and both pools run on CPU 0, as in
# benches/compare.sh. Every process raises its open-files limit to the hard limit (20000 here):
# the proxy holds 2 x CLIENTS descriptors. Needs haproxy (installed with apt-get when missing
# and running as root). Other settings: see the top of benches/storm.rs.
set -euo pipefail
cd "$(dirname "$0")/.."
export RUNS=${RUNS:-3}

source benches/common.sh
need_tools haproxy
command -v taskset >/dev/null || { echo "missing: taskset (util-linux)" >&2; exit 1; }
ulimit -n "$(ulimit -Hn)"

# Build unpinned (both cores), then run pinned: the bench starts the proxy under taskset -c 1.
cargo bench --bench storm --no-run --quiet
PIN=1 taskset -c 0 cargo bench --bench storm --quiet
