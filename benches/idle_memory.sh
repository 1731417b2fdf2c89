#!/usr/bin/env bash
# Memory per held idle connection: hold N connections open through tandem, then through HAProxy
# (mode tcp), then through nginx (stream, one process), and report each proxy's RSS growth
# divided by N. Each connection carries one byte client -> member first, so every proxy has set
# up the whole path, then stays idle.
#
#   benches/idle_memory.sh          # N=5000 by default
#   TANDEM=/tmp/tandem-old benches/idle_memory.sh   # another tandem binary, no build
#
# Every held connection costs 2 descriptors in the proxy plus 2 in this script's Python (client
# and member side), so the script raises the soft open-files limit to 20000 (the usual hard
# limit on these machines); keep N at or below 5000 there.
# Needs haproxy (apt-get install haproxy); nginx is measured when its stream module is installed
# (apt-get install nginx-light libnginx-mod-stream).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-5000}
ulimit -n 20000

command -v haproxy >/dev/null || { echo "missing: haproxy" >&2; exit 1; }
if [[ -z ${TANDEM:-} ]]; then  # TANDEM=/path/to/tandem measures another build
  cargo build --release --quiet
  TANDEM=${CARGO_TARGET_DIR:-$PWD/target}/release/tandem
fi
work=$(mktemp -d)
cleanup() { rm -rf "$work"; }
trap cleanup EXIT

source benches/common.sh
MEMBER=$(free_port); T_PORT=$(free_port); H_PORT=$(free_port); N_PORT=$(free_port)
STREAM_MODULE=/usr/lib/nginx/modules/ngx_stream_module.so

cat >"$work/tandem.toml" <<TOML
[[pool]]
name = "idle"
members = [{ addr = "127.0.1.1:$MEMBER" }]
[[service]]
name = "idle"
listen = "127.0.0.1:$T_PORT"
pool = "idle"
max_connections = $((N + 1000))
TOML
cat >"$work/haproxy.cfg" <<HAP
global
  nbthread 1
  maxconn $((N + 1000))
defaults
  mode tcp
  timeout connect 2s
  timeout client 1800s
  timeout server 1800s
listen idle
  bind 127.0.0.1:$H_PORT
  maxconn $((N + 1000))
  server m1 127.0.1.1:$MEMBER
HAP

# Runs a member on 127.0.1.1:$1 that keeps every connection, starts the proxy (the command after
# the first four arguments), opens N connections to it on 127.0.0.1:$2, and prints the proxy's RSS
# growth per connection once all N have delivered their byte to the member.
cat >"$work/hold.py" <<'PY'
import selectors, socket, subprocess, sys, threading, time
label, member_port, proxy_port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
member = socket.socket(); member.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
member.bind(("127.0.1.1", member_port)); member.listen(4096); member.setblocking(False)
sel = selectors.DefaultSelector(); sel.register(member, selectors.EVENT_READ)
delivered, stop = [0], threading.Event()
def serve():  # health checks and port probes connect too: only connections with a byte count
    while not stop.is_set():
        for key, _ in sel.select(0.1):
            if key.fileobj is member:
                s, _ = member.accept(); s.setblocking(False); sel.register(s, selectors.EVENT_READ)
            else:
                data = key.fileobj.recv(16)
                if data: delivered[0] += len(data)
                else: sel.unregister(key.fileobj); key.fileobj.close()
threading.Thread(target=serve, daemon=True).start()
proxy = subprocess.Popen(sys.argv[5:])
def rss_kib():
    for line in open(f"/proc/{proxy.pid}/status"):
        if line.startswith("VmRSS:"): return int(line.split()[1])
def connect():
    c = socket.create_connection(("127.0.0.1", proxy_port)); c.sendall(b"x"); return c
def wait_delivered(k):
    deadline = time.time() + 60
    while delivered[0] < k:
        if time.time() > deadline: sys.exit(f"{label}: only {delivered[0]} of {k} connections reached the member")
        time.sleep(0.01)
for _ in range(100):
    try: clients = [connect()]; break
    except OSError: time.sleep(0.1)
else: sys.exit(f"{label}: proxy never accepted")
wait_delivered(1); time.sleep(0.5)  # warm-up connection (allocator arenas), then the baseline
before = rss_kib()
clients += [connect() for _ in range(n - 1)]
wait_delivered(n); time.sleep(1)
after = rss_kib()
print(f"{label:<8} {n} held: RSS {before} -> {after} KiB, {(after - before) * 1024 / (n - 1):.0f} bytes per connection")
proxy.kill(); proxy.wait(); stop.set()  # a bench: no need to wait out a drain
PY

python3 "$work/hold.py" tandem "$MEMBER" "$T_PORT" "$N" \
  env RUST_LOG=warn "$TANDEM" run -c "$work/tandem.toml" --workers 1 --no-watch
python3 "$work/hold.py" haproxy "$MEMBER" "$H_PORT" "$N" haproxy -f "$work/haproxy.cfg" -db
if command -v nginx >/dev/null && [[ -f $STREAM_MODULE ]]; then
  # One process (no master), so the measured pid is the worker holding the connections.
  cat >"$work/nginx.conf" <<NGINX
load_module $STREAM_MODULE;
worker_processes 1;
master_process off;
daemon off;
pid $work/nginx.pid;
error_log $work/nginx.log;
worker_rlimit_nofile $((2 * N + 1000));
events { worker_connections $((2 * N + 1000)); }
stream { server { listen 127.0.0.1:$N_PORT; proxy_pass 127.0.1.1:$MEMBER; } }
NGINX
  python3 "$work/hold.py" nginx "$MEMBER" "$N_PORT" "$N" nginx -c "$work/nginx.conf" -p "$work"
else
  echo "nginx: skipped (needs nginx and $STREAM_MODULE)"
fi
