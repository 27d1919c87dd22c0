#!/usr/bin/env bash
# The decision problem of docs/decision.md for one model, into docs/decision/<model>/:
#  1. the edge's batched step times at every split of the objective and every session count,
#     measured on this machine (split-core's batch_bench --csv; skipped for the splits already
#     in edge-time.csv);
#  2. the NLL of every action on the profile and the test texts (resumable: rows already in
#     profile-<text>.csv are not evaluated again, so run it again after an interruption);
#  3. report.md and oracle.csv.
# Extra arguments go to `splitinfer decision` (e.g. --budget N, --report-only).
#   scripts/decision.sh            # smollm2-135m, docs/decision/objective.json
set -euo pipefail
cd "$(dirname "$0")/.."
objective="${OBJECTIVE:-docs/decision/objective.json}"
model=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["model"])' "$objective")
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/splitinfer/target}"
if [ -z "${SPLITINFER_BIN:-}" ]; then
  cargo build --release -p splitinfer -p split-core --bins --example batch_bench
fi
bin="${SPLITINFER_BIN:-$CARGO_TARGET_DIR/release/splitinfer}"
bench="${BATCH_BENCH_BIN:-$CARGO_TARGET_DIR/release/examples/batch_bench}"
dir="docs/decision/$model"
mkdir -p "$dir"
ks=$(python3 -c 'import json,sys; print(" ".join(map(str, json.load(open(sys.argv[1]))["actions"]["ks"])))' "$objective")
sessions=$(python3 -c 'import json,sys; print(",".join(map(str, json.load(open(sys.argv[1]))["states"]["edge_sessions"])))' "$objective")
model_path=$("$bin" info --model-name "$model" 2>/dev/null | awk '$1 == "file" { print $2 }')
for k in $ks; do
  if [ -f "$dir/edge-time.csv" ] && grep -q "^$k," "$dir/edge-time.csv"; then continue; fi
  echo "decision.sh: edge step times at k = $k for $sessions sessions" >&2
  "$bench" --k "$k" --sessions "$sessions" --steps 32 --rounds 4 --csv "$dir/edge-time.csv" ${model_path:+--model "$model_path"}
done
[ -f "calibration/$model.json" ] || "$bin" calibrate --model-name "$model"
exec "$bin" decision --model-name "$model" --objective "$objective" "$@"
