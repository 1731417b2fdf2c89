#!/usr/bin/env bash
# What the access log costs: new connections/s (wrk with `Connection: close` against an nginx
# member) through two tandem processes that differ only in `[access_log]`: one without it, one
# logging every connection to a file. Both run at once, each with one worker pinned to CPU 1;
# wrk and the member run on CPU 0. The runs alternate between the two (and which goes first),
# so load that drifts on these shared machines lands on both. Prints every run, the medians and
# the ratio on/off, and the lines written and dropped (a log that dropped lines would look
# cheaper than it is).
#
# Also the CPU time each process spent per 1000 connections (user + system, from /proc), which
# says what the log costs even when tandem is not the bottleneck: on a loaded machine the
# throughput of a half-idle process mostly measures how fast it is woken up.
#
#   benches/access_log.sh                     # RUNS=10 SECONDS_PER_RUN=3 FORMAT=json
#   FORMAT=text RUNS=10 benches/access_log.sh
#
# Needs wrk, nginx and python3 (installed with apt-get when missing and running as root).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-10}
SECS=${SECONDS_PER_RUN:-3}
FORMAT=${FORMAT:-json}
CONNS=${CONNS:-50}

source benches/common.sh
need_tools wrk nginx=nginx-light python3

cargo build --release --quiet
TANDEM=${CARGO_TARGET_DIR:-$PWD/target}/release/tandem
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

metric() { # admin-port name
  python3 - "$1" "$2" <<'PY'
import sys, urllib.request
body = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics").read().decode()
print(next(l.split()[1] for l in body.splitlines() if l.startswith(sys.argv[2] + " ")))
PY
}

MEMBER=$(free_port)
mkdir -p "$work/member"
cat >"$work/member/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
pid $work/member/nginx.pid;
error_log $work/member/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  server { listen 127.0.1.1:$MEMBER; location / { return 200 "ok\n"; } }
}
NGINX
taskset -c 0 nginx -c "$work/member/nginx.conf" -p "$work/member" >/dev/null 2>&1 & pids+=($!)

declare -A port admin pid
for label in off on; do
  port[$label]=$(free_port); admin[$label]=$(free_port)
  {
    cat <<TOML
[admin]
listen = "127.0.0.1:${admin[$label]}"
[[pool]]
name = "http"
members = [{ addr = "127.0.1.1:$MEMBER" }]
[[service]]
name = "http"
listen = "127.0.0.1:${port[$label]}"
pool = "http"
TOML
    if [[ $label == on ]]; then
      printf '[access_log]\npath = "%s"\nformat = "%s"\n' "$work/access.log" "$FORMAT"
    fi
  } >"$work/$label.toml"
  RUST_LOG=warn taskset -c 1 "$TANDEM" run -c "$work/$label.toml" --workers 1 --no-watch \
    --upgrade-socket "$work/$label.sock" & pids+=($!)
  pid[$label]=$!
done
wait_port 127.0.1.1 "$MEMBER"
for label in off on; do wait_port 127.0.0.1 "${port[$label]}"; done

rps() { # port
  taskset -c 0 wrk -t1 -c"$CONNS" -d"${SECS}s" -H "Connection: close" "http://127.0.0.1:$1/" |
    awk '/Requests\/sec/ { print $2 }'
}
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; } # user + system, in clock ticks
HZ=$(getconf CLK_TCK)

declare -A runs cpu
lines=0
echo "run  off(conn/s)  on(conn/s)  on/off   off(cpu ms/1000 conns)  on(cpu ms/1000 conns)"
for i in $(seq "$RUNS"); do
  order=(off on); ((i % 2 == 0)) && order=(on off)
  declare -A this used
  for label in "${order[@]}"; do
    before=$(ticks "${pid[$label]}")
    this[$label]=$(rps "${port[$label]}")
    after=$(ticks "${pid[$label]}")
    used[$label]=$(python3 -c "print(($after - $before) * 1000 / $HZ / (${this[$label]} * $SECS) * 1000)")
  done
  runs[off]+="${this[off]} "; runs[on]+="${this[on]} "
  cpu[off]+="${used[off]} "; cpu[on]+="${used[on]} "
  # Keep the file small between runs; the writer appends (O_APPEND), so truncating is safe.
  lines=$((lines + $(wc -l <"$work/access.log")))
  : >"$work/access.log"
  python3 -c "print(f'{$i:>3}  {${this[off]}:>11.0f}  {${this[on]}:>10.0f}  {${this[on]}/${this[off]}:>6.3f}   {${used[off]}:>22.1f}  {${used[on]}:>21.1f}')"
done

written=$(metric "${admin[on]}" tandem_access_log_lines_total)
dropped=$(metric "${admin[on]}" tandem_access_log_dropped_total)
python3 - "${runs[off]}" "${runs[on]}" "$written" "$dropped" "$lines" "$FORMAT" "${cpu[off]}" "${cpu[on]}" <<'PY'
import statistics, sys
off = [float(x) for x in sys.argv[1].split()]
on = [float(x) for x in sys.argv[2].split()]
coff = statistics.median(float(x) for x in sys.argv[7].split())
con = statistics.median(float(x) for x in sys.argv[8].split())
mo, mn = statistics.median(off), statistics.median(on)
print(f"median new conns/s: off {mo:.0f} [{min(off):.0f}-{max(off):.0f}], "
      f"on ({sys.argv[6]} to a file) {mn:.0f} [{min(on):.0f}-{max(on):.0f}]")
print(f"ratio on/off of medians: {mn / mo:.3f} (cost {100 * (1 - mn / mo):.1f}%)")
ratios = sorted(b / a for a, b in zip(off, on))
print(f"per-run ratios: {' '.join(f'{r:.3f}' for r in ratios)}")
print(f"median CPU per 1000 connections: off {coff:.1f} ms, on {con:.1f} ms; "
      f"ratio on/off {con / coff:.3f} (cost {100 * (con / coff - 1):.1f}%)")
print(f"access log: {sys.argv[3]} lines written, {sys.argv[4]} dropped, {sys.argv[5]} lines in the file")
PY
