#!/usr/bin/env bash
# The main demo: edge server, channel emulator and UE as three processes on this machine, talking
# gRPC over loopback, on the default model (fetched on first use). Prints the generated text and
# the UE's per-token timing breakdown.
#
#   scripts/demo.sh [PROMPT] [-- extra ue-client flags, e.g. --split 5 --wire-dtype f16 -n 64]
#
# Ports: EDGE_PORT (default 50051) and EMU_PORT (50052) on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
prompt="${1:-The capital of France is}"
shift || true
[ "${1:-}" = "--" ] && shift
edge_port="${EDGE_PORT:-50051}"
emu_port="${EMU_PORT:-50052}"
bin="${CARGO_TARGET_DIR:-target}/release"
# candle re-reads the CPU count on every f32 matmul unless this is set (~10% of a decode step).
export RAYON_NUM_THREADS="${RAYON_NUM_THREADS:-$(nproc)}"
# The UE and the edge share this machine's cores: candle's matmul worker should not spin long for
# more work when the other process needs the core (docs/performance.md, "Thread settings": ~20% faster decode).
export CANDLE_BARRIER_POOL_SPIN_LIMIT="${CANDLE_BARRIER_POOL_SPIN_LIMIT:-2000}"

echo "demo: building (the first build compiles candle: several minutes)..." >&2
cargo build --release -q -p edge-server -p channel-emulator -p ue-client -p splitinfer
model=$("$bin/splitinfer" fetch-assets --no-corpus | awk '/^model /{print $3}')

source scripts/common.sh

RUST_LOG="${RUST_LOG:-warn}" "$bin/edge-server" --listen "127.0.0.1:$edge_port" --model "$model" &
pids+=($!)
RUST_LOG="${RUST_LOG:-warn}" "$bin/channel-emulator" --listen "127.0.0.1:$emu_port" --edge "http://127.0.0.1:$edge_port" &
pids+=($!)
wait_port "$edge_port"
wait_port "$emu_port"
echo "demo: edge on :$edge_port, channel emulator on :$emu_port; UE splits at layer ${UE_SPLIT:-15} of 30" >&2
RUST_LOG="${RUST_LOG:-warn}" "$bin/ue-client" --edge "http://127.0.0.1:$emu_port" --model "$model" --prompt "$prompt" "$@"
