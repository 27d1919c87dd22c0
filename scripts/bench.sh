#!/usr/bin/env bash
# The benchmark suite: builds the release binaries, then measures on this machine (a few minutes)
# and writes docs/benchmarks.md with the machine's description and every target marked met or
# missed. Run it on an otherwise idle machine: it reports the load average it started with.
#
#   scripts/bench.sh [OUT.md]
#
# Native llama.cpp (`llama-bench`) is measured as the reference for raw model speed when
# scripts/install-llamacpp.sh has built it (into the asset cache; `--native-only` is enough);
# otherwise the table says it was not measured. When perf can record here, scripts/profile.sh runs
# first (~4 min) and its profile explains the missed targets (section 8); BENCH_NO_PROFILE=1 skips
# it.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-docs/benchmarks.md}"
bin="${CARGO_TARGET_DIR:-target}/release"
# candle re-reads the CPU count on every f32 matmul unless this is set (~10% of a decode step).
export RAYON_NUM_THREADS="${RAYON_NUM_THREADS:-$(nproc)}"
echo "bench: building..." >&2
cargo build --release -q -p edge-server -p splitinfer -p splitinfer-tests --bin bench --bin edge-server --bin splitinfer
"$bin/splitinfer" fetch-assets >/dev/null
# Criterion's micro-benchmarks first (~2 min); the harness copies their medians into the table.
echo "bench: criterion micro-benchmarks (split-core/benches/kernels.rs)..." >&2
# Absolute: `cargo bench` runs the bench in the package's directory, the harness in the
# repository's, so a relative path would name two different places.
target_dir="${CARGO_TARGET_DIR:-target}"
case "$target_dir" in /*) ;; *) target_dir="$PWD/$target_dir" ;; esac
export CRITERION_HOME="$target_dir/criterion"
rm -rf "$CRITERION_HOME"
cargo bench -q -p split-core --bench kernels -- --warm-up-time 1 --measurement-time 3 >&2
if [ -z "${BENCH_NO_PROFILE:-}" ] && command -v perf >/dev/null && perf record -q -o /dev/null -- true 2>/dev/null; then
  echo "bench: profiling (scripts/profile.sh)..." >&2
  export PROFILE_DIR="$target_dir/profile"
  scripts/profile.sh
  export BENCH_PROFILE_DIR="$PROFILE_DIR"
else
  echo "bench: not profiling (perf missing, not permitted, or BENCH_NO_PROFILE set)" >&2
fi
RUST_LOG="${RUST_LOG:-warn}" "$bin/bench" "$out" >/dev/null
echo "bench: see $out" >&2
