#!/usr/bin/env bash
# Adaptive splitting live: edge server, channel emulator alternating between the good and the bad
# channel, the agent with the threshold policy (deploy/thresholds.csv) and a UE that follows it,
# as five processes on this machine. Prints the text, then the per-token breakdown with every
# split change (when, from/to, transfer or recompute, bytes, time), then the agent's status.
#
#   scripts/adaptive-demo.sh [PROMPT] [-- extra ue-client flags, e.g. --migration recompute -n 300]
#
# Ports on 127.0.0.1: EDGE_PORT (50051), EMU_PORT (50052), AGENT_PORT (50053), and DASHBOARD_PORT
# (8053), the agent's live dashboard: open the URL the script prints while the UE generates.
# ALTERNATE_MS (default 1500) is how long each channel state lasts.
set -euo pipefail
cd "$(dirname "$0")/.."
prompt="${1:-The history of the old harbour town begins with the fishermen who}"
shift || true
[ "${1:-}" = "--" ] && shift
edge_port="${EDGE_PORT:-50051}"
emu_port="${EMU_PORT:-50052}"
agent_port="${AGENT_PORT:-50053}"
dashboard_port="${DASHBOARD_PORT:-8053}"
bin="${CARGO_TARGET_DIR:-target}/release"
# candle re-reads the CPU count on every f32 matmul unless this is set (~10% of a decode step).
export RAYON_NUM_THREADS="${RAYON_NUM_THREADS:-$(nproc)}"
# The UE and the edge share this machine's cores: candle's matmul worker should not spin long for
# more work when the other process needs the core (docs/performance.md, "Thread settings": ~20% faster decode).
export CANDLE_BARRIER_POOL_SPIN_LIMIT="${CANDLE_BARRIER_POOL_SPIN_LIMIT:-2000}"

echo "adaptive-demo: building (the first build compiles candle: several minutes)..." >&2
cargo build --release -q -p edge-server -p channel-emulator -p ue-client -p agent -p splitinfer
model=$("$bin/splitinfer" fetch-assets --no-corpus | awk '/^model /{print $3}')

source scripts/common.sh

export RUST_LOG="${RUST_LOG:-warn}"
"$bin/edge-server" --listen "127.0.0.1:$edge_port" --model "$model" --agent "http://127.0.0.1:$agent_port" &
pids+=($!)
"$bin/channel-emulator" --listen "127.0.0.1:$emu_port" --edge "http://127.0.0.1:$edge_port" \
  --alternate-ms "${ALTERNATE_MS:-1500}" --stats-window 8 &
pids+=($!)
wait_port "$emu_port"
"$bin/agent" --listen "127.0.0.1:$agent_port" --emulator "http://127.0.0.1:$emu_port" \
  --policy threshold --thresholds deploy/thresholds.csv --n-layers 30 \
  --stats-period-ms 200 --min-dwell-ms 500 --dashboard-listen "127.0.0.1:$dashboard_port" &
pids+=($!)
wait_port "$edge_port"
wait_port "$agent_port"
wait_port "$dashboard_port"
echo "adaptive-demo: edge :$edge_port, emulator :$emu_port (good/bad every ${ALTERNATE_MS:-1500} ms), agent :$agent_port" >&2
echo "adaptive-demo: dashboard http://127.0.0.1:$dashboard_port/" >&2
"$bin/ue-client" --edge "http://127.0.0.1:$emu_port" --agent "http://127.0.0.1:$agent_port" \
  --model "$model" --prompt "$prompt" -n 200 "$@"
echo >&2
"$bin/splitinfer" agent status --agent "http://127.0.0.1:$agent_port" --history 10
