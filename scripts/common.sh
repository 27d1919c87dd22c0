# Shared by the demo scripts: stop every started process on exit, wait for a port to listen.
# Source it after `set -euo pipefail`; add each background process's pid to `pids`.
pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

wait_port() {
  for _ in $(seq 1 150); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1', $1), 1)" 2>/dev/null && return 0
    sleep 0.2
  done
  echo "$(basename "$0"): nothing listens on 127.0.0.1:$1; see the log above" >&2
  exit 1
}
