#!/usr/bin/env bash
# Snake Learning's gain through the live networked system (docs/snake.md, "The gain live"): for
# each adapter (none, then every trained one in docs/snake/) and channel seed, an edge server
# (with --adapter), a channel emulator on --preset bad and the UE's scoring mode on the held-out
# news text. Appends one row per run to docs/snake/live.csv and skips rows already there, so an
# interrupted run resumes.
#
#   scripts/snake-live.sh [SPLIT] [METHODS] [SEEDS]     # defaults: 0 "none snake centralized fedavg" "0 1 2"
#
# Ports: EDGE_PORT (default 50061) and EMU_PORT (50062) on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
split="${1:-0}"
methods="${2:-none snake centralized fedavg}"
seeds="${3:-0 1 2}"
edge_port="${EDGE_PORT:-50061}"
emu_port="${EMU_PORT:-50062}"
bin="${CARGO_TARGET_DIR:-target}/release"
out=docs/snake/live.csv
cal=calibration/smollm2-135m.json
export CANDLE_BARRIER_POOL_SPIN_LIMIT="${CANDLE_BARRIER_POOL_SPIN_LIMIT:-2000}"

cargo build --release -q -p edge-server -p channel-emulator -p ue-client -p splitinfer
model=$("$bin/splitinfer" fetch-assets | awk '/^model /{print $3}')
text="${SPLITINFER_CACHE:-$HOME/.cache/splitinfer}/corpus/brown-news.txt"
[ -f "$out" ] || echo "method,split,seed,ppl,mean_nll,tokens" > "$out"

source scripts/common.sh
for m in $methods; do
  adapter=()
  if [ "$m" != none ]; then
    [ -f "docs/snake/$m.safetensors" ] || { echo "snake-live: no docs/snake/$m.safetensors; run splitinfer snake run first" >&2; exit 1; }
    adapter=(--adapter "docs/snake/$m.safetensors")
  fi
  for seed in $seeds; do
    if grep -q "^$m,$split,$seed," "$out"; then echo "snake-live: $m seed $seed already in $out" >&2; continue; fi
    RUST_LOG=warn "$bin/edge-server" --listen "127.0.0.1:$edge_port" --model "$model" --calibration "$cal" "${adapter[@]}" &
    edge=$!; pids+=("$edge")
    RUST_LOG=warn "$bin/channel-emulator" --listen "127.0.0.1:$emu_port" --edge "http://127.0.0.1:$edge_port" \
      --channel --preset bad --channel-seed "$seed" &
    emu=$!; pids+=("$emu")
    wait_port "$edge_port"; wait_port "$emu_port"
    echo "snake-live: $m, seed $seed: scoring 4,096 tokens of news at k=$split through the emulator on --preset bad" >&2
    json=$(RUST_LOG=warn "$bin/ue-client" --edge "http://127.0.0.1:$emu_port" --model "$model" --split "$split" \
      --score "$text" --max-tokens 4096 --normalization standardize --concealment mean --calibration "$cal" --json)
    python3 -c "import json,sys; r=json.loads(sys.argv[1]); print(f\"$m,$split,$seed,{r['ppl']:.6f},{r['mean_nll']:.8f},{r['scored_tokens']}\")" "$json" >> "$out"
    tail -1 "$out" >&2
    kill -TERM "$emu" "$edge"; wait "$emu" "$edge" 2>/dev/null || true
    pids=()
  done
done
