#!/usr/bin/env bash
# End-to-end comparison on loopback: the same workloads direct to a member, through tandem,
# through HAProxy (mode tcp) and through nginx (stream). Proxies get one worker pinned to CPU 1;
# load generators and members run on CPU 0. Prints one table of medians, spreads (min-max) and
# ratios. The runs of one workload take turns between the targets, so load that drifts during
# the script (these machines are shared) spreads over all of them rather than landing on one.
#
#   benches/compare.sh                           # RUNS=3 SECONDS_PER_RUN=5 by default
#   ONLY="keepalive close" benches/compare.sh    # a subset: bulk1 bulk8 keepalive close memory
#   BASELINE=/tmp/tandem-old benches/compare.sh  # adds a column for another tandem binary,
#                                                # e.g. a build of main, measured in the same run
#   PROFILE=1 benches/compare.sh                 # adds, per workload, where each proxy's CPU goes
#                                                # (perf record -g, benches/profile.py)
#   SCALING=1 benches/compare.sh                 # no pinning: tandem with 1 worker vs 2 workers
#                                                # (and direct), load generators with 2 threads;
#                                                # with BASELINE, that build with 2 workers too
#
# Memory is RSS growth per held idle connection (benches/idle_memory.sh, N_IDLE=5000 held).
# CPU per unit is the proxy process's utime+stime (/proc/PID/stat) over each timed run divided by
# the units the load generator reported: requests (keepalive), connections (close, one request
# each), GB received (bulk). Syscalls per short connection: after each round of `close` runs,
# one more run per proxy with `perf stat -e raw_syscalls:sys_enter` attached (strace -c -f when
# perf is missing), every syscall of the process divided by the connections wrk made; these runs
# are not counted in the throughput rows.
# Needs (installed with apt-get when missing and running as root): haproxy, iperf3, wrk, nginx
# with its stream module, python3.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
SECS=${SECONDS_PER_RUN:-5}
SCALING=${SCALING:-}
# The failover storm (benches/storm.sh: 8000 clients reconnect at once when the local pool dies,
# tandem vs HAProxy) has its own pools and proxies, so it runs first, with its own table; ONLY
# without "storm" and SCALING=1 leave it out, ONLY=storm runs it alone.
if [[ -z $SCALING && ( -z ${ONLY:-} || " $ONLY " == *" storm "* ) ]]; then
  RUNS=$RUNS benches/storm.sh
  [[ ${ONLY:-} == storm ]] && exit 0
fi
STREAM_MODULE=/usr/lib/nginx/modules/ngx_stream_module.so

source benches/common.sh
need_tools haproxy iperf3 wrk nginx=nginx-light python3 "$STREAM_MODULE=libnginx-mod-stream"

cargo build --release --quiet
TANDEM=${CARGO_TARGET_DIR:-$PWD/target}/release/tandem
work=$(mktemp -d)
pids=()
declare -A proxy_pid
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

# Commands are prefixed with "${CPU0[@]}" or "${CPU1[@]}" to pin them to one CPU; in the scaling
# run nothing is pinned. A prefix rather than a function: started with `&`, `$!` is then the
# command itself, so the cleanup's kill reaches it.
if [[ -n $SCALING ]]; then CPU0=(); CPU1=(); else CPU0=(taskset -c 0); CPU1=(taskset -c 1); fi

IPERF_PORT=$(free_port); HTTP_PORT=$(free_port)
if [[ -n $SCALING ]]; then
  # tandem-w2-shared: a socket per worker too, but on one work-stealing runtime (the model the
  # per-worker runtimes are measured against).
  labels=(direct tandem-w1 tandem-w2 tandem-w2-shared)
  # BASELINE in the scaling run: that build with 2 workers, e.g. one from before socket groups.
  [[ -n ${BASELINE:-} ]] && labels+=(baseline)
  THREADS=2; CONNS=100
else
  labels=(direct tandem haproxy nginx)
  [[ -n ${BASELINE:-} ]] && labels+=(baseline)
  THREADS=1; CONNS=50
fi
declare -A port_iperf port_http
port_iperf[direct]=$IPERF_PORT; port_http[direct]=$HTTP_PORT
for label in "${labels[@]:1}"; do port_iperf[$label]=$(free_port); port_http[$label]=$(free_port); done

# Members: iperf3 and a tiny nginx, both on 127.0.1.1, CPU 0.
"${CPU0[@]}" iperf3 -s -B 127.0.1.1 -p "$IPERF_PORT" >/dev/null 2>&1 & pids+=($!)
mkdir -p "$work/member"
cat >"$work/member/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
pid $work/member/nginx.pid;
error_log $work/member/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server { listen 127.0.1.1:$HTTP_PORT; location / { return 200 "ok\n"; } }
}
NGINX
"${CPU0[@]}" nginx -c "$work/member/nginx.conf" -p "$work/member" >/dev/null 2>&1 & pids+=($!)

tandem_config() { # iperf-port http-port
  cat <<TOML
[[pool]]
name = "iperf"
members = [{ addr = "127.0.1.1:$IPERF_PORT" }]
[[pool]]
name = "http"
members = [{ addr = "127.0.1.1:$HTTP_PORT" }]
[[service]]
name = "iperf"
listen = "127.0.0.1:$1"
pool = "iperf"
[[service]]
name = "http"
listen = "127.0.0.1:$2"
pool = "http"
TOML
}
declare -A proxy_pid # label -> pid of the proxy process, for its CPU time
start_tandem() { # label binary workers [more arguments]
  tandem_config "${port_iperf[$1]}" "${port_http[$1]}" >"$work/$1.toml"
  RUST_LOG=warn "${CPU1[@]}" "$2" run -c "$work/$1.toml" --workers "$3" --no-watch \
    --upgrade-socket "$work/$1.sock" "${@:4}" & pids+=($!)
  proxy_pid[$1]=$!
}

for label in "${labels[@]:1}"; do
  case $label in
    tandem) start_tandem tandem "$TANDEM" 1 ;;
    baseline) start_tandem baseline "$BASELINE" "$([[ -n $SCALING ]] && echo 2 || echo 1)" ;;
    tandem-w1) start_tandem tandem-w1 "$TANDEM" 1 ;;
    tandem-w2) start_tandem tandem-w2 "$TANDEM" 2 ;;
    tandem-w2-shared) start_tandem tandem-w2-shared "$TANDEM" 2 --runtime shared ;;
    haproxy)
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
  bind 127.0.0.1:${port_iperf[haproxy]}
  server m1 127.0.1.1:$IPERF_PORT
listen http
  bind 127.0.0.1:${port_http[haproxy]}
  server m1 127.0.1.1:$HTTP_PORT
HAP
      "${CPU1[@]}" haproxy -f "$work/haproxy.cfg" -db >/dev/null 2>&1 & pids+=($!)
      proxy_pid[haproxy]=$!
      ;;
    nginx)
      mkdir -p "$work/proxy"
      # One process (no master) so that it is the one worker pinned to CPU 1.
      cat >"$work/proxy/nginx.conf" <<NGINX
load_module $STREAM_MODULE;
worker_processes 1;
master_process off;
daemon off;
pid $work/proxy/nginx.pid;
error_log $work/proxy/error.log;
events { worker_connections 8192; }
stream {
  server { listen 127.0.0.1:${port_iperf[nginx]}; proxy_pass 127.0.1.1:$IPERF_PORT; }
  server { listen 127.0.0.1:${port_http[nginx]}; proxy_pass 127.0.1.1:$HTTP_PORT; }
}
NGINX
      "${CPU1[@]}" nginx -c "$work/proxy/nginx.conf" -p "$work/proxy" >/dev/null 2>&1 & pids+=($!)
      proxy_pid[nginx]=$!
      ;;
  esac
done

for label in "${labels[@]}"; do
  host=127.0.0.1; [[ $label == direct ]] && host=127.0.1.1
  wait_port "$host" "${port_iperf[$label]}"; wait_port "$host" "${port_http[$label]}"
done

iperf() { # host port streams -> "Gbit/s bytes-received"
  "${CPU0[@]}" iperf3 -c "$1" -p "$2" -P "$3" -t "$SECS" -J |
    python3 -c 'import json,sys; r=json.load(sys.stdin)["end"]["sum_received"]; print(r["bits_per_second"]/1e9, r["bytes"])'
}
wrk_run() { # host port extra-header -> "requests/s p99-in-microseconds requests"
  local hdr=()
  [[ -n $3 ]] && hdr=(-H "$3")
  "${CPU0[@]}" wrk -t"$THREADS" -c"$CONNS" -d"${SECS}s" --latency "${hdr[@]}" "http://$1:$2/" |
    awk '
      function us(v) { if (v ~ /us$/) return v + 0; if (v ~ /ms$/) return v * 1000; if (v ~ /s$/) return v * 1e6; return v }
      /Requests\/sec/ { rps = $2 }
      $1 == "99%" { p99 = us($2) }
      / requests in / { n = $1 }
      END { print rps, p99, n }'
}
# CPU time (utime+stime, all threads) a process has used, in clock ticks.
CLK_TCK=$(getconf CLK_TCK)
cpu_ticks() { # pid
  [[ -n $1 ]] || { echo 0; return; }
  # Fields after the command name, which is in brackets: utime and stime are the 12th and 13th.
  sed 's/.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'
}
# Records the proxy CPU per unit of a run that used ticks0..ticks1: microseconds per unit, or
# seconds per unit when the unit is a GB.
record_cpu() { # row label ticks0 ticks1 units scale
  [[ $2 == direct || -z ${5:-} || $5 == 0 ]] && return
  record "$1" "$2" "$(awk -v t="$(( $4 - $3 ))" -v hz="$CLK_TCK" -v n="$5" -v s="$6" 'BEGIN { print t / hz * s / n }')"
}
# Every syscall a proxy makes over one run of short connections, per connection.
syscalls_run() { # label host port
  local pid=${proxy_pid[$1]:-} out="$work/syscalls.$1" tracer rps p99 n calls
  [[ -n $pid ]] || return 0
  if command -v perf >/dev/null && perf stat -e raw_syscalls:sys_enter -- true >/dev/null 2>&1; then
    perf stat -x, -e raw_syscalls:sys_enter -p "$pid" -o "$out" & tracer=$!
  else
    strace -c -f -p "$pid" -o "$out" & tracer=$!
  fi
  sleep 0.5 # attached before the first connection
  read -r rps p99 n <<<"$(wrk_run "$2" "$3" "Connection: close")"
  kill -INT "$tracer"; wait "$tracer" 2>/dev/null || true
  # perf: "COUNT,,raw_syscalls:sys_enter,..."; strace -c: the "total" line's calls column.
  calls=$(awk -F, '/raw_syscalls:sys_enter/ { print $1 } / total$/ { split($0, f, " "); print f[3] }' "$out" | head -1)
  [[ -n $calls && -n $n && $n != 0 ]] && record syscalls "$1" "$(awk -v c="$calls" -v n="$n" 'BEGIN { print c / n }')"
  return 0
}
# One run of a workload against one target; prints what the load generator reported:
# "Gbit/s bytes" (bulk) or "requests/s p99-us requests" (keepalive, close).
load() { # kind host label
  case $1 in
    bulk1 | bulk8) iperf "$2" "${port_iperf[$3]}" "${1#bulk}" ;;
    keepalive) wrk_run "$2" "${port_http[$3]}" "" ;;
    close) wrk_run "$2" "${port_http[$3]}" "Connection: close" ;;
  esac
}
# PROFILE=1: one more run of a workload per proxy with `perf record -g` attached, sorted by
# benches/profile.py into CPU time per unit by system call; not counted in the other rows.
PROFILE_HZ=999
profile_run() { # kind label
  local pid=${proxy_pid[$2]:-} out="$work/perf.$1.$2" tracer a b n units scale=1e6
  [[ -n $pid ]] || return 0
  perf record -q -F "$PROFILE_HZ" -g -p "$pid" -o "$out" 2>/dev/null & tracer=$!
  sleep 0.5 # attached before the first connection
  read -r a b n <<<"$(load "$1" 127.0.0.1 "$2")"
  kill -INT "$tracer"; wait "$tracer" 2>/dev/null || true
  case $1 in
    bulk*) units=$(awk -v b="$b" 'BEGIN { print b / 1e9 }'); scale=1 ;;
    *) units=$n ;;
  esac
  perf script -i "$out" -F ip,sym 2>/dev/null |
    python3 benches/profile.py "$PROFILE_HZ" "$units" "$scale" >"$work/profile.$1.$2"
}
# Memory per held idle connection for every proxy in one run of benches/idle_memory.sh.
memory_run() {
  TANDEM=$TANDEM N=${N_IDLE:-5000} bash benches/idle_memory.sh |
    awk '/bytes per connection/ { print $1, $(NF-3) }'
}

declare -A vals
record() { vals[$1/$2]+="$3 "; }
run_workload() { # kind
  local kind=$1 label host v rps p99 n gbps bytes t0 t1
  for _ in $(seq "$RUNS"); do
    if [[ $kind == memory ]]; then
      while read -r label v; do record memory "$label" "$v"; done < <(memory_run)
      continue
    fi
    for label in "${labels[@]}"; do
      host=127.0.0.1; [[ $label == direct ]] && host=127.0.1.1
      t0=$(cpu_ticks "${proxy_pid[$label]:-}")
      case $kind in
        bulk1 | bulk8)
          read -r gbps bytes <<<"$(load "$kind" "$host" "$label")"
          t1=$(cpu_ticks "${proxy_pid[$label]:-}")
          record "$kind" "$label" "$gbps"
          record_cpu "cpu_$kind" "$label" "$t0" "$t1" "$(awk -v b="$bytes" 'BEGIN { print b / 1e9 }')" 1 ;;
        keepalive)
          read -r rps p99 n <<<"$(load "$kind" "$host" "$label")"
          t1=$(cpu_ticks "${proxy_pid[$label]:-}")
          record keepalive "$label" "$rps"; record p99 "$label" "$p99"
          record_cpu cpu_keepalive "$label" "$t0" "$t1" "$n" 1e6 ;;
        close)
          read -r rps p99 n <<<"$(load "$kind" "$host" "$label")"
          t1=$(cpu_ticks "${proxy_pid[$label]:-}")
          record close "$label" "$rps"
          record_cpu cpu_close "$label" "$t0" "$t1" "$n" 1e6 ;;
      esac
    done
    if [[ $kind == close ]]; then
      for label in "${labels[@]:1}"; do syscalls_run "$label" 127.0.0.1 "${port_http[$label]}"; done
    fi
  done
  if [[ -n ${PROFILE:-} && $kind != memory ]]; then
    for label in "${labels[@]:1}"; do profile_run "$kind" "$label"; done
  fi
}

ONLY=${ONLY:-bulk1 bulk8 keepalive close memory}
[[ -n $SCALING ]] && ONLY=${ONLY/memory/}
rows=()
for kind in bulk1 bulk8 keepalive close memory; do
  [[ " $ONLY " == *" $kind "* ]] || continue
  run_workload "$kind"
  rows+=("$kind")
  case $kind in
    bulk1 | bulk8) rows+=("cpu_$kind") ;;
    keepalive) rows+=(p99 cpu_keepalive) ;;
    close) rows+=(cpu_close syscalls) ;;
  esac
done

# One table: medians with min-max, ratios of tandem to the other proxies (and to direct).
args=()
for row in "${rows[@]}"; do
  for label in "${labels[@]}"; do args+=("$row/$label=${vals[$row/$label]:-}"); done
done
python3 - "$RUNS" "$SECS" "${labels[*]}" "${args[@]}" <<'PY'
import statistics, sys
runs, secs, labels = sys.argv[1], sys.argv[2], sys.argv[3].split()
cells = {}
for a in sys.argv[4:]:
    key, _, v = a.partition("=")
    cells[key] = [float(x) for x in v.split()]
rows = {
    "bulk1": "bulk, 1 stream (Gbit/s)",
    "cpu_bulk1": "proxy CPU per GB relayed, 1 stream (s/GB, lower is better)",
    "bulk8": "bulk, 8 streams (Gbit/s)",
    "cpu_bulk8": "proxy CPU per GB relayed, 8 streams (s/GB, lower is better)",
    "keepalive": "keepalive req/s (wrk, tiny responses)",
    "p99": "keepalive p99 latency (us, lower is better)",
    "cpu_keepalive": "proxy CPU per keepalive request (us, lower is better)",
    "close": "new conns/s (Connection: close)",
    "cpu_close": "proxy CPU per new connection (us, lower is better)",
    "syscalls": "syscalls per short connection (lower is better)",
    "memory": "bytes per held idle connection (lower is better)",
}
order = [r for r in rows if any(k.startswith(r + "/") for k in cells)]
def fmt(v):
    return f"{v:,.3f}" if v < 1 else f"{v:,.2f}" if v < 100 else f"{v:,.0f}"
# In the scaling run the ratio is 2 workers over 1.
mine = "tandem" if "tandem" in labels else "tandem-w2"
others = [l for l in labels if l not in ("direct", mine, "baseline")]
head = ["workload"] + labels + [f"{mine}/{o}" for o in others + (["baseline"] if "baseline" in labels else [])]
print("| " + " | ".join(head) + " |")
print("|" + "---|" * len(head))
for r in order:
    line, med = [rows[r]], {}
    for l in labels:
        v = cells.get(f"{r}/{l}", [])
        if not v:
            line.append("-")
            continue
        med[l] = statistics.median(v)
        line.append(f"{fmt(med[l])} ({fmt(min(v))}-{fmt(max(v))})")
    for o in others + (["baseline"] if "baseline" in labels else []):
        line.append(f"{med[mine] / med[o]:.2f}x" if mine in med and o in med and med[o] else "-")
    print("| " + " | ".join(line) + " |")
print(f"(medians of {runs} runs of {secs}s with min-max in brackets; targets take turns within each run)")
PY

# PROFILE=1: per workload, the CPU time per unit in each bucket (largest first for tandem).
for kind in "${rows[@]}"; do
  [[ -n ${PROFILE:-} ]] || break
  ls "$work"/profile."$kind".* >/dev/null 2>&1 || continue
  python3 - "$kind" "$work" "${labels[@]:1}" <<'PY'
import sys
kind, work, labels = sys.argv[1], sys.argv[2], sys.argv[3:]
unit = "s/GB" if kind.startswith("bulk") else "us per " + ("request" if kind == "keepalive" else "connection")
data = {}
for l in labels:
    try:
        rows = [line.split("\t") for line in open(f"{work}/profile.{kind}.{l}") if line.strip()]
    except FileNotFoundError:
        continue
    data[l] = {b: (float(share), float(t)) for b, share, t in rows}
mine = "tandem" if "tandem" in data else next(iter(data), None)
if mine is None:
    sys.exit()
# Largest first for tandem; then what only the others spend time on.
buckets = sorted({b for d in data.values() for b in d},
                 key=lambda b: (-data[mine].get(b, (0, 0))[1], -max(d.get(b, (0, 0))[1] for d in data.values())))
print(f"\nwhere the CPU goes, {kind} ({unit}; share of the proxy's samples in brackets; one profiled run each)")
print("| bucket | " + " | ".join(data) + " |")
print("|---|" + "---|" * len(data))
# Buckets under 1% of every proxy's samples are left out.
for b in [b for b in buckets if max(d.get(b, (0, 0))[0] for d in data.values()) >= 0.01]:
    cells = [f"{d[b][1]:.3f} ({100 * d[b][0]:.0f}%)" if b in d else "-" for d in data.values()]
    print(f"| {b} | " + " | ".join(cells) + " |")
print("| total | " + " | ".join(f"{sum(t for _, t in d.values()):.3f}" for d in data.values()) + " |")
PY
done
