# Sourced by the bench scripts: the tools they need, and loopback ports.

# need_tools SPEC...: each SPEC is a command (`wrk`), a command and its Debian package
# (`nginx=nginx-light`), or a file and its package (`/usr/lib/...so=libnginx-mod-stream`). The
# packages of what is missing are installed with apt-get when running as root; otherwise the
# script stops, naming them.
need_tools() {
  local spec what pkg pkgs=()
  for spec in "$@"; do
    what=${spec%%=*}; pkg=${spec#*=}
    if [[ $what == /* ]]; then [[ -e $what ]] && continue; else command -v "$what" >/dev/null && continue; fi
    pkgs+=("$pkg")
  done
  ((${#pkgs[@]})) || return 0
  if [[ $(id -u) == 0 ]]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >/dev/null
  else
    echo "missing: ${pkgs[*]} (apt-get install ${pkgs[*]})" >&2
    exit 1
  fi
}

# A TCP port free on 127.0.0.1 now (the kernel's pick).
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Waits up to 5 s for something to listen on host $1 port $2.
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0; sleep 0.05; done; echo "nothing listens on $1:$2" >&2; exit 1; }
