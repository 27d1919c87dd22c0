#!/usr/bin/env bash
# Where the networked split's decode loses time against the monolithic model, by profile: runs
# section 1 of the benchmark harness for the monolithic model and for one split (UE → emulator →
# edge in one process, as the table measures it) under `perf record`, and prints for each the CPU
# time per generated token by thread and by function. Needs perf (Debian: linux-perf) and root or
# kernel.perf_event_paranoid ≤ 1. ~2 minutes.
#
#   scripts/profile-decode.sh [K:WIRE]        # default 1:f16, the table's worst split
#
# Each run is 7 × (a 256-token prompt, then 256 greedy tokens), so decode is most of the profile.
set -euo pipefail
cd "$(dirname "$0")/.."
run="${1:-1:f16}"
bin="${CARGO_TARGET_DIR:-target}/release"
out="${PROFILE_DIR:-${CARGO_TARGET_DIR:-target}/profile-decode}"
export RAYON_NUM_THREADS="${RAYON_NUM_THREADS:-$(nproc)}"
export RUST_LOG=warn
command -v perf >/dev/null || { echo "profile-decode: perf is not installed (apt-get install linux-perf)" >&2; exit 1; }
echo "profile-decode: building..." >&2
cargo build --release -q -p splitinfer-tests --bin bench -p splitinfer
"$bin/splitinfer" fetch-assets >/dev/null
mkdir -p "$out"
for r in mono "$run"; do
  name="${r/:/-}"
  echo "profile-decode: recording $r..." >&2
  BENCH_PROFILE="$r" perf record -q -e cpu-clock -F 1999 -o "$out/$name.data" -- "$bin/bench" >"$out/$name.txt" 2>/dev/null
  tokens=$(grep -c 'decode' "$out/$name.txt")
  tokens=$((tokens * 256))
  echo
  echo "## $r ($tokens generated tokens; $(awk -F'decode ' '{split($2,a," "); s+=a[1]} END {printf "%.1f", s/NR}' "$out/$name.txt") tok/s decode on average)"
  echo
  # perf prints "NN.NN%  samples  key"; a sample at 1999 Hz is 0.5 ms of one core.
  for key in comm sym; do
    echo "| $key | CPU ms per token | share |"
    echo "|---|---|---|"
    perf report -q -i "$out/$name.data" --sort "$key" --stdio -n 2>/dev/null | head -"$([ $key = comm ] && echo 8 || echo 20)" |
      awk -v t="$tokens" '{pct=$1; n=$2; $1=""; $2=""; sub(/^ +/, ""); printf "| %s | %.3f | %s |\n", $0, n / 1999 * 1000 / t, pct}'
    echo
  done
done
echo "profile-decode: perf data in $out (perf report -i $out/<run>.data)" >&2
