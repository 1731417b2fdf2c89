#!/usr/bin/env bash
# End-to-end comparison on loopback: the same workloads direct to a member, through tandem and
# through HAProxy (mode tcp). Proxies get one worker pinned to CPU 1; load generators and members
# run on CPU 0. Prints the median of RUNS runs per cell and the ratio against direct. The runs of
# one workload take turns between the targets, so load that drifts during the script (these
# machines are shared) spreads over all of them rather than landing on one.
#
#   benches/compare.sh                           # RUNS=3 SECONDS_PER_RUN=5 by default
#   BASELINE=/tmp/tandem-old benches/compare.sh  # adds a column for another tandem binary,
#                                                # e.g. a build of main, measured in the same run
#   ONLY="keepalive close" benches/compare.sh     # a subset: bulk1 bulk8 keepalive close
#
# Needs (installed with apt-get when missing and running as root): haproxy, iperf3, wrk, nginx.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
SECS=${SECONDS_PER_RUN:-5}

need=()
for tool in haproxy iperf3 wrk nginx; do command -v "$tool" >/dev/null || need+=("$tool"); done
if ((${#need[@]})); then
  if [[ $(id -u) == 0 ]]; then
    pkgs=("${need[@]/nginx/nginx-light}")
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >/dev/null
  else
    echo "missing: ${need[*]} (install them, e.g. apt-get install haproxy iperf3 wrk nginx-light)" >&2
    exit 1
  fi
fi

cargo build --release --quiet
TANDEM=${CARGO_TARGET_DIR:-$PWD/target}/release/tandem
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0; sleep 0.05; done; echo "nothing listens on $1:$2" >&2; exit 1; }

IPERF_PORT=$(free_port); HTTP_PORT=$(free_port); T_IPERF=$(free_port); T_HTTP=$(free_port)
H_IPERF=$(free_port); H_HTTP=$(free_port); B_IPERF=$(free_port); B_HTTP=$(free_port)
labels=(direct tandem haproxy)
[[ -n ${BASELINE:-} ]] && labels+=(baseline)

# Members: iperf3 and a tiny nginx, both on 127.0.1.1, CPU 0.
taskset -c 0 iperf3 -s -B 127.0.1.1 -p "$IPERF_PORT" >/dev/null 2>&1 & pids+=($!)
mkdir -p "$work/nginx"
cat >"$work/nginx/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server { listen 127.0.1.1:$HTTP_PORT; location / { return 200 "ok\n"; } }
}
NGINX
taskset -c 0 nginx -c "$work/nginx/nginx.conf" -p "$work/nginx" >/dev/null 2>&1 & pids+=($!)

cat >"$work/tandem.toml" <<TOML
[[pool]]
name = "iperf"
members = [{ addr = "127.0.1.1:$IPERF_PORT" }]
[[pool]]
name = "http"
members = [{ addr = "127.0.1.1:$HTTP_PORT" }]
[[service]]
name = "iperf"
listen = "127.0.0.1:$T_IPERF"
pool = "iperf"
[[service]]
name = "http"
listen = "127.0.0.1:$T_HTTP"
pool = "http"
TOML
RUST_LOG=warn taskset -c 1 "$TANDEM" run -c "$work/tandem.toml" --workers 1 & pids+=($!)
if [[ -n ${BASELINE:-} ]]; then
  sed -e "s/:$T_IPERF\"/:$B_IPERF\"/" -e "s/:$T_HTTP\"/:$B_HTTP\"/" "$work/tandem.toml" >"$work/baseline.toml"
  RUST_LOG=warn taskset -c 1 "$BASELINE" run -c "$work/baseline.toml" --workers 1 & pids+=($!)
fi

cat >"$work/haproxy.cfg" <<HAP
global
  nbthread 1
  maxconn 8000
defaults
  mode tcp
  timeout connect 2s
  timeout client 1800s
  timeout server 1800s
listen iperf
  bind 127.0.0.1:$H_IPERF
  server m1 127.0.1.1:$IPERF_PORT
listen http
  bind 127.0.0.1:$H_HTTP
  server m1 127.0.1.1:$HTTP_PORT
HAP
taskset -c 1 haproxy -f "$work/haproxy.cfg" -db >/dev/null 2>&1 & pids+=($!)

for p in "127.0.1.1 $IPERF_PORT" "127.0.1.1 $HTTP_PORT" "127.0.0.1 $T_IPERF" "127.0.0.1 $T_HTTP" "127.0.0.1 $H_IPERF" "127.0.0.1 $H_HTTP"; do
  wait_port $p
done
[[ -n ${BASELINE:-} ]] && { wait_port 127.0.0.1 "$B_IPERF"; wait_port 127.0.0.1 "$B_HTTP"; }

median() { python3 -c 'import sys,statistics; v=[float(x) for x in sys.argv[1:]]; print(statistics.median(v))' "$@"; }
iperf() { # host port streams -> Gbit/s
  taskset -c 0 iperf3 -c "$1" -p "$2" -P "$3" -t "$SECS" -J |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9)'
}
wrk_rps() { # host port extra-header -> requests/s
  local hdr=()
  [[ -n $3 ]] && hdr=(-H "$3")
  taskset -c 0 wrk -t1 -c50 -d"${SECS}s" "${hdr[@]}" "http://$1:$2/" |
    awk '/Requests\/sec/ {print $2}'
}

target() { # label -> "ip iperf-port http-port"
  case $1 in
    direct) echo "127.0.1.1 $IPERF_PORT $HTTP_PORT" ;;
    tandem) echo "127.0.0.1 $T_IPERF $T_HTTP" ;;
    haproxy) echo "127.0.0.1 $H_IPERF $H_HTTP" ;;
    baseline) echo "127.0.0.1 $B_IPERF $B_HTTP" ;;
  esac
}
declare -A result
run_workload() { # name kind(bulk1|bulk8|keepalive|close)
  local name=$1 kind=$2 label ip pi ph v
  declare -A vals=()
  for _ in $(seq "$RUNS"); do
    for label in "${labels[@]}"; do
      read -r ip pi ph <<<"$(target "$label")"
      case $kind in
        bulk1) v=$(iperf "$ip" "$pi" 1) ;;
        bulk8) v=$(iperf "$ip" "$pi" 8) ;;
        keepalive) v=$(wrk_rps "$ip" "$ph" "") ;;
        close) v=$(wrk_rps "$ip" "$ph" "Connection: close") ;;
      esac
      vals[$label]+="$v "
    done
  done
  for label in "${labels[@]}"; do
    # shellcheck disable=SC2086 # word splitting of the values is intended
    result[$name/$label]=$(median ${vals[$label]})
    result[$name/$label/all]=${vals[$label]}
  done
}

workloads=("bulk 1 stream (Gbit/s)" "bulk 8 streams (Gbit/s)" "keepalive req/s (wrk -c50)" "new conns/s (Connection: close)")
ONLY=${ONLY:-bulk1 bulk8 keepalive close}
kinds=(bulk1 bulk8 keepalive close)
selected=()
for i in "${!kinds[@]}"; do
  if [[ " $ONLY " == *" ${kinds[$i]} "* ]]; then
    run_workload "${workloads[$i]}" "${kinds[$i]}"
    selected+=("${workloads[$i]}")
  fi
done
workloads=("${selected[@]}")

printf '\n%-34s %12s %18s %18s %16s' workload direct tandem haproxy tandem/haproxy
[[ -n ${BASELINE:-} ]] && printf ' %18s %17s' baseline baseline/haproxy
printf '\n'
for w in "${workloads[@]}"; do
  python3 - "$w" "${result[$w/direct]}" "${result[$w/tandem]}" "${result[$w/haproxy]}" "${result[$w/baseline]:-}" <<'PY'
import sys
w, d, t, h, b = sys.argv[1], *map(float, sys.argv[2:5]), sys.argv[5]
line = f"{w:<34} {d:12.2f} {t:12.2f} ({t/d:.2f}x) {h:12.2f} ({h/d:.2f}x) {t/h:15.2f}x"
if b:
    b = float(b)
    line += f" {b:12.2f} ({b/d:.2f}x) {b/h:16.2f}x"
print(line)
PY
done
echo "(medians of $RUNS runs of ${SECS}s, taking turns between targets; ratios in brackets are against direct)"
echo "every run:"
for w in "${workloads[@]}"; do
  for label in "${labels[@]}"; do printf '  %-34s %-9s %s\n' "$w" "$label" "${result[$w/$label/all]}"; done
done
