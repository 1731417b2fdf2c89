#!/usr/bin/env bash
# What active health checks cost: N members (default 100) on 127.0.3.x, one tcp check each at
# the default 2 s interval, measured over WINDOW seconds (default 30) on an otherwise idle tandem.
# Prints probes/s, CPU use of the tandem process, its RSS and open descriptors, and the
# TIME_WAIT sockets the probes leave in the kernel.
#
#   benches/probe_cost.sh            # N=100 WINDOW=30
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-100}
WINDOW=${WINDOW:-30}
cargo build --release --quiet
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.3.1",0)); print(s.getsockname()[1])')
cat >"$work/members.py" <<'PY'
import asyncio, sys
async def handle(r, w):
    try:
        await r.read(1)
    except Exception:
        pass
    w.close()
async def main():
    n, port = int(sys.argv[1]), int(sys.argv[2])
    _servers = [await asyncio.start_server(handle, f"127.0.3.{i}", port) for i in range(1, n + 1)]
    print("ready", flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
PY
python3 "$work/members.py" "$N" "$port" >"$work/members.out" & pids+=($!)
for _ in $(seq 100); do grep -q ready "$work/members.out" 2>/dev/null && break; sleep 0.05; done

{
  echo '[[pool]]'
  echo 'name = "p"'
  echo -n 'members = ['
  for i in $(seq 1 "$N"); do echo -n "{ addr = \"127.0.3.$i:$port\" },"; done
  echo ']'
  echo '  [[pool.check]]'
  echo '  kind = "tcp"'
  echo '[[service]]'
  echo 'name = "s"'
  echo 'listen = "127.0.0.1:0"'
  echo 'pool = "p"'
} >"$work/tandem.toml"
RUST_LOG=warn target/release/tandem run -c "$work/tandem.toml" --workers 1 --no-watch & pids+=($!)
tpid=$!
sleep 3 # let the first rounds and the phase spread settle before measuring

ticks() { awk '{print $14 + $15}' "/proc/$tpid/stat"; }
tw() { ss -Htan state time-wait dst 127.0.3.0/24 | wc -l; }
t0=$(ticks)
sleep "$WINDOW"
t1=$(ticks)
hz=$(getconf CLK_TCK)
rss=$(awk '/VmRSS/ {print $2}' "/proc/$tpid/status")
fds=$(ls "/proc/$tpid/fd" | wc -l)
python3 - "$N" "$WINDOW" "$t0" "$t1" "$hz" "$rss" "$fds" "$(tw)" <<'PY'
import sys
n, window, t0, t1, hz, rss, fds, tw = map(float, sys.argv[1:])
cpu = (t1 - t0) / hz
print(f"{int(n)} members, tcp check every 2 s: {n/2:.0f} probes/s")
print(f"tandem CPU: {cpu:.2f} s over {window:.0f} s = {100*cpu/window:.2f}% of one core "
      f"({1e6*cpu/(window*n/2):.0f} us per probe)")
print(f"tandem RSS: {rss/1024:.1f} MiB, open descriptors: {int(fds)}")
print(f"TIME_WAIT sockets left by probes: {int(tw)}")
PY
