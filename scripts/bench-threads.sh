#!/usr/bin/env bash
# Thread settings on one machine: decode speed of the split as three processes (edge, emulator,
# UE, as scripts/demo.sh runs them) and of the monolithic model, with candle's matmul worker
# spinning for more work for its default 25000 rounds or for fewer, in alternating rounds so that
# other load on the machine hits every setting alike. Prints a markdown table (~3 minutes).
#
#   scripts/bench-threads.sh [SPLIT] [ROUNDS]        # default: split 15, 3 rounds
#
# Environment: SPIN_LIMITS (default "25000 2000 500"), EDGE_PORT/EMU_PORT (50071/50072).
set -euo pipefail
cd "$(dirname "$0")/.."
split="${1:-15}"
rounds="${2:-3}"
limits="${SPIN_LIMITS:-25000 2000 500}"
edge_port="${EDGE_PORT:-50071}"
emu_port="${EMU_PORT:-50072}"
bin="${CARGO_TARGET_DIR:-target}/release"
export RAYON_NUM_THREADS="${RAYON_NUM_THREADS:-$(nproc)}"
export RUST_LOG=warn

echo "bench-threads: building..." >&2
cargo build --release -q -p edge-server -p channel-emulator -p ue-client -p splitinfer
model=$("$bin/splitinfer" fetch-assets | awk '/^model /{print $3}')
corpus=$("$bin/splitinfer" fetch-assets | awk '/^corpus /{print $2}')
prompt=$(head -c 1200 "$corpus")
source scripts/common.sh

decode_rate() { python3 -c 'import json,sys; d=json.load(sys.stdin); print(round(d["decode_tokens_per_s"], 1))'; }
ue_rate() {
  python3 -c '
import json, sys
d = json.load(sys.stdin)
t = d["tokens"][1:]
gaps = [x["ue_compute_us"] + x["network_us"] + x["edge_queue_us"] + x["edge_compute_us"] for x in t]
print(round(len(gaps) / (sum(gaps) / 1e6), 1))'
}

declare -A split_runs mono_runs
for round in $(seq "$rounds"); do
  for limit in $limits; do
    echo "bench-threads: round $round, spin limit $limit" >&2
    export CANDLE_BARRIER_POOL_SPIN_LIMIT="$limit"
    mono_runs[$limit]+="$("$bin/splitinfer" generate --model "$model" -p "$prompt" -n 64 --json 2>/dev/null | decode_rate) "
    pids=()
    "$bin/edge-server" --listen "127.0.0.1:$edge_port" --model "$model" &
    pids+=($!)
    "$bin/channel-emulator" --listen "127.0.0.1:$emu_port" --edge "http://127.0.0.1:$edge_port" &
    pids+=($!)
    wait_port "$edge_port"
    wait_port "$emu_port"
    split_runs[$limit]+="$("$bin/ue-client" --edge "http://127.0.0.1:$emu_port" --model "$model" -p "$prompt" --split "$split" -n 64 --json 2>/dev/null | ue_rate) "
    kill "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
  done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
echo "| CANDLE_BARRIER_POOL_SPIN_LIMIT | monolithic decode tok/s | split k=$split, 3 processes, decode tok/s | split / monolithic | runs (split) |"
echo "|---|---|---|---|---|"
for limit in $limits; do
  m=$(echo "${mono_runs[$limit]}" | median)
  s=$(echo "${split_runs[$limit]}" | median)
  printf "| %s | %.1f | %.1f | %.2f | %s|\n" "$limit" "$m" "$s" "$(python3 -c "print($s/$m)")" "${split_runs[$limit]}"
done
