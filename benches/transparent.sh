#!/usr/bin/env bash
# `source = "auto"` vs `"client"` (transparent) in the routed topology of README "Edge A/V
# without SNAT", and the connections one member can hold with 1 vs 2 source addresses.
#
#   sudo benches/transparent.sh            # SECONDS_PER_RUN=10 RUNS=3 by default
#   ONLY_HELD=1 benches/transparent.sh     # only the held-connections part
#   TANDEM_BIN=target/release/tandem ...   # a built binary instead of cargo build --release
#
# Three network namespaces (198.18.0.0/15 only): a client, tandem routing between two veth
# links (examples/transparent-routing.sh), a member (nginx with a tiny response, iperf3 -s)
# whose default route points at tandem. Measured from the client through the VIP:
# - new connections/s: wrk -H "Connection: close" (1 thread, 32 connections);
# - bulk Gbit/s: iperf3, one stream;
# - held connections: tandem's namespace gets a 1000-port ip_local_port_range; 2500 clients are
#   opened and held, and tandem's tandem_connections_active is read with source = [one address]
#   and source = [two addresses]. The rest are closed at once and counted as local errors.
# Medians of RUNS runs, auto and client taking turns. Needs root, iproute2, iptables-legacy,
# wrk, nginx, iperf3, python3, curl (installed with apt-get when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
SECS=${SECONDS_PER_RUN:-10}
HELD_CLIENTS=${HELD_CLIENTS:-2500}
[[ $(id -u) == 0 ]] || { echo "benches/transparent.sh: needs root (network namespaces)" >&2; exit 1; }

source benches/common.sh
need_tools wrk nginx=nginx-light iperf3 python3 curl iptables-legacy=iptables

TANDEM=${TANDEM_BIN:-}
if [[ -z $TANDEM ]]; then
  cargo build --release --quiet --bin tandem
  TANDEM=${CARGO_TARGET_DIR:-$PWD/target}/release/tandem
fi

id=$$
C=tb-$id-c; L=tb-$id-lb; M=tb-$id-m
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for ns in $C $L $M; do ip netns del "$ns" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

VIP=198.18.0.10; MEMBER=198.18.2.2; LB_M=198.18.2.1; LB_M2=198.18.2.4; CLIENT=198.18.1.10
for ns in $C $L $M; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
ip -n $C link add c0 type veth peer name c1 netns $L
ip -n $M link add m0 type veth peer name m1 netns $L
ip -n $C addr add $CLIENT/24 dev c0
for i in $(seq 11 60); do ip -n $C addr add 198.18.1.$i/24 dev c0; done
ip -n $C link set c0 up; ip -n $C route add default via 198.18.1.1
ip -n $L addr add 198.18.1.1/24 dev c1; ip -n $L addr add $LB_M/24 dev m1
ip -n $L addr add $LB_M2/24 dev m1; ip -n $L addr add $VIP/32 dev lo
ip -n $L link set c1 up; ip -n $L link set m1 up
ip -n $M addr add $MEMBER/24 dev m0; ip -n $M link set m0 up
ip -n $M route add default via $LB_M
IPTABLES=iptables-legacy ip netns exec $L sh examples/transparent-routing.sh

# The member: nginx (tiny responses, many connections) and iperf3.
cat >"$work/nginx.conf" <<EOF
worker_processes 1;
worker_rlimit_nofile 20000;
pid $work/nginx.pid;
error_log $work/nginx.err;
events { worker_connections 16384; }
http {
  access_log off;
  keepalive_timeout 300s;
  server { listen $MEMBER:8080 backlog=4096; location / { return 200 "ok\n"; } }
}
EOF
ip netns exec $M sh -c "exec nginx -c $work/nginx.conf -g 'daemon off;'" & pids+=($!)
ip netns exec $M iperf3 -s -B $MEMBER -p 5201 >/dev/null & pids+=($!)
ip netns exec $L sysctl -qw net.core.somaxconn=4096

start_tandem() { # source-line -> starts tandem in the lb namespace, waits for its listener
  cat >"$work/tandem.toml" <<EOF
[admin]
listen = "127.0.0.1:9900"
[[pool]]
name = "m"
members = [{ addr = "$MEMBER" }]
  [[pool.check]]
  kind = "tcp"
  port = 8080
[[service]]
name = "http"
listen = "$VIP:80"
port = 8080
pool = "m"
max_connections = 1000000
$1
[[service]]
name = "bulk"
listen = "$VIP:5201"
pool = "m"
$1
EOF
  ip netns exec $L sh -c "exec $TANDEM run --no-watch -c $work/tandem.toml" \
    2>"$work/tandem.log" & tandem_pid=$!
  for _ in $(seq 200); do
    ip netns exec $L curl -fs http://127.0.0.1:9900/readyz >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  cat "$work/tandem.log" >&2; echo "tandem did not start" >&2; exit 1
}
stop_tandem() { kill "$tandem_pid"; wait "$tandem_pid" 2>/dev/null || true; }

conns_per_s() {
  ip netns exec $C wrk -t1 -c32 -d"${SECS}s" -H "Connection: close" "http://$VIP/" |
    awk '/Requests\/sec/ {printf "%d", $2}'
}
gbits() {
  ip netns exec $C iperf3 -c $VIP -p 5201 -t "$SECS" -J |
    python3 -c 'import json,sys; print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9))'
}
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

declare -A cps gbs
for run in $(seq "$RUNS"); do
  [[ -n ${ONLY_HELD:-} ]] && break
  for mode in auto client; do
    start_tandem "source = \"$mode\""
    cps[$mode]+="$(conns_per_s) "
    gbs[$mode]+="$(gbits) "
    stop_tandem
  done
done

# Held connections: tandem's namespace keeps 1000 ephemeral ports; 2500 clients hold one
# connection each (from 50 client addresses).
ip netns exec $L sysctl -qw net.ipv4.ip_local_port_range="40000 40999"
hold() { # source-line -> active connections tandem holds with HELD_CLIENTS clients open
  start_tandem "$1"
  ip netns exec $C python3 - "$VIP" "$HELD_CLIENTS" "$work/held.ready" "$work/held.done" <<'EOF' & holder=$!
import os, resource, socket, struct, sys, time
vip, n, ready, done = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
resource.setrlimit(resource.RLIMIT_NOFILE, (n + 100, n + 100))
held = []
for i in range(n):
    s = socket.socket()
    s.bind(("198.18.1.%d" % (11 + i % 50), 0))
    s.connect((vip, 80))
    held.append(s)
open(ready, "w").close()
while not os.path.exists(done):
    time.sleep(0.1)
# Leave with resets, which tandem passes on: a FIN close would keep each of tandem's member-side
# ports in TIME_WAIT for 60 s and starve the next measurement.
for s in held:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
EOF
  for _ in $(seq 600); do [[ -e $work/held.ready ]] && break; sleep 0.1; done
  sleep 1
  ip netns exec $L curl -fs http://127.0.0.1:9900/metrics >"$work/metrics"
  grep -E '^tandem_(local_errors_total|connections_rejected_total)\{service="http"' "$work/metrics" |
    grep -v ' 0$' >&2 || true
  awk '/^tandem_connections_active\{service="http"\}/ {print $2}' "$work/metrics"
  touch "$work/held.done"; wait $holder 2>/dev/null || true; rm -f "$work/held.ready" "$work/held.done"
  stop_tandem
}
held1=$(hold "source = [\"$LB_M\"]")
held2=$(hold "source = [\"$LB_M\", \"$LB_M2\"]")

if [[ -z ${ONLY_HELD:-} ]]; then
  printf '\n%-40s %12s %12s\n' "through tandem ($RUNS runs, ${SECS}s each)" "auto" "client"
  printf '%-40s %12s %12s\n' "new connections/s (wrk, Connection: close)" \
    "$(median ${cps[auto]})" "$(median ${cps[client]})"
  printf '%-40s %12s %12s\n' "bulk Gbit/s (iperf3, 1 stream)" \
    "$(median ${gbs[auto]})" "$(median ${gbs[client]})"
fi
printf '\nconnections held to one member, 1000 ephemeral ports, %d clients:\n' "$HELD_CLIENTS"
printf '  source = [1 address]:   %s\n  source = [2 addresses]: %s\n' "$held1" "$held2"
