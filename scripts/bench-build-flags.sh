#!/usr/bin/env bash
# Measures what the CPU flags in .cargo/config.toml buy: builds `splitinfer` three ways (portable
# x86-64 baseline, x86-64-v3 as configured, native) into separate target directories and runs the
# same generate and ppl on each, three times, reporting the median. Prints a markdown table.
# Takes ~20 minutes cold on 2 cores (three builds of candle), a few minutes once built.
set -euo pipefail
cd "$(dirname "$0")/.."
out_dir="${BENCH_TARGET_ROOT:-${XDG_CACHE_HOME:-$HOME/.cache}/splitinfer/bench-targets}"
prompt="The capital of France is"
cargo run --release -q -p splitinfer -- fetch-assets >/dev/null
echo "| build | rustflags | prefill tok/s (ppl, 1024 tokens, window 512; median of 3) | decode tok/s (generate, 64 tokens; median of 3) |"
echo "|---|---|---|---|"
for variant in "baseline:x86-64" "portable-v3:x86-64-v3" "native:native"; do
  name="${variant%%:*}"; cpu="${variant#*:}"
  flags="-C target-cpu=$cpu"
  CARGO_TARGET_DIR="$out_dir/$name" RUSTFLAGS="$flags" cargo build --release -q -p splitinfer >&2
  bin="$out_dir/$name/release/splitinfer"
  prefills=(); decodes=()
  for _ in 1 2 3; do
    ppl_json=$("$bin" ppl --max-tokens 1024 --window 512 --stride 512 --json 2>/dev/null)
    prefills+=("$(python3 -c 'import json,sys; r=json.loads(sys.argv[1])["report"]; print("%.0f" % (1024 / r["seconds"]))' "$ppl_json")")
    gen_json=$("$bin" generate -p "$prompt" -n 64 --json 2>/dev/null)
    decodes+=("$(python3 -c 'import json,sys; print("%.1f" % json.loads(sys.argv[1])["decode_tokens_per_s"])' "$gen_json")")
  done
  prefill=$(printf '%s\n' "${prefills[@]}" | sort -n | sed -n 2p)
  decode=$(printf '%s\n' "${decodes[@]}" | sort -n | sed -n 2p)
  echo "| $name | \`$flags\` | $prefill (${prefills[*]}) | $decode (${decodes[*]}) |"
done
