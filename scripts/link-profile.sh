#!/usr/bin/env bash
# The link profile behind docs/link/<model>/: calibration statistics (if missing), then Figure 3's
# grid in its fixed plan (rl/src/link_profile.rs, cli/src/figure.rs), 4096 scored tokens per
# evaluation, 3 channel seeds. Resumable: rows already in profile.csv are not evaluated again, so
# run it again after an interruption. Extra arguments go to `splitinfer figure3` (e.g. --ks for
# a coarser grid, --budget N to stop after N evaluations).
#   scripts/link-profile.sh smollm2-135m
#   scripts/link-profile.sh qwen2.5-coder-0.5b --ks 0,1,2,4,6,8,10,12,14,16,18,20,22,23,24
set -euo pipefail
cd "$(dirname "$0")/.."
model="${1:-smollm2-135m}"
shift || true
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/splitinfer/target}"
bin="${SPLITINFER_BIN:-$CARGO_TARGET_DIR/release/splitinfer}"
[ -n "${SPLITINFER_BIN:-}" ] || cargo build --release -p splitinfer
[ -f "calibration/$model.json" ] || "$bin" calibrate --model-name "$model"
exec "$bin" figure3 --model-name "$model" "$@"
