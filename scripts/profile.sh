#!/usr/bin/env bash
# Where the time goes, by profile, for the targets table of docs/benchmarks.md: runs section 1 of
# the benchmark harness for the monolithic model and for one split (UE → emulator → edge in one
# process, as the table measures it), and llama.cpp on the same GGUF under `perf record`, the
# latter through its Python binding (scripts/bench_llamacpp.py, which opens perf's gate around one
# phase; native llama-bench cannot) when scripts/install-llamacpp.sh has installed it (not with
# --native-only). perf samples only one phase of each generation (the harness opens and closes it
# through perf's control FIFO): the decode after the first token, then, in other recordings, the
# prefill. Each generation is a 256-token prompt, then 256 greedy tokens; the runs take turns,
# PROFILE_ROUNDS (4) rounds of 2 generations each. The decode recordings also sample section 3's
# runs of 1 and 16 concurrent UEs (`sessions:1`, `sessions:16`), whole.
#
#   scripts/profile.sh [K:WIRE]        # default 1:f16, the table's worst split so far
#
# Writes $PROFILE_DIR (default $CARGO_TARGET_DIR/profile, else target/profile): summary.tsv (perf's
# samples by thread and by function, per phase and run, which `bench` reads into the targets
# table and section 8 of docs/benchmarks.md), about.txt, and perf's data files (`perf report -i`).
# Needs perf (Debian: linux-perf) and root or kernel.perf_event_paranoid ≤ 1. ~6 minutes.
# scripts/bench.sh runs it first when perf can record.
set -euo pipefail
cd "$(dirname "$0")/.."
split="${1:-1:f16}"
bin="${CARGO_TARGET_DIR:-target}/release"
out="${PROFILE_DIR:-${CARGO_TARGET_DIR:-target}/profile}"
cache="${SPLITINFER_CACHE:-$HOME/.cache/splitinfer}"
llama_py="$cache/llamacpp-venv/bin/python"
export RAYON_NUM_THREADS="${RAYON_NUM_THREADS:-$(nproc)}"
export RUST_LOG=warn
freq=1999 # -F; profile.rs assumes the same
command -v perf >/dev/null || { echo "profile: perf is not installed (apt-get install linux-perf)" >&2; exit 1; }
echo "profile: building..." >&2
cargo build --release -q -p splitinfer-tests --bin bench -p splitinfer
"$bin/splitinfer" fetch-assets >/dev/null
rm -rf "$out" && mkdir -p "$out"
mkfifo "$out/ctl" "$out/ack"
runs=(mono "$split")
# The venv exists from `install-llamacpp.sh --native-only` too (its build tools), without the binding.
if [ -x "$llama_py" ] && "$llama_py" -c "import llama_cpp, numpy" 2>/dev/null; then
  runs+=(llama.cpp)
else
  echo "profile: llama.cpp not profiled (its Python binding is not installed: scripts/install-llamacpp.sh --python-only)" >&2
fi
: >"$out/summary.tsv"
# The machine's speed drifts (on a shared host by half within minutes), so the runs take turns:
# each of $rounds rounds records every run for 2 generations, and the summary adds the rounds up.
rounds="${PROFILE_ROUNDS:-4}"
for phase in decode prefill; do
  phase_runs=("${runs[@]}")
  # Section 3's 1 and 16 concurrent UEs, for its target (whole runs; decode only).
  [ "$phase" = decode ] && phase_runs+=(sessions:1 sessions:16)
  for round in $(seq 1 "$rounds"); do
    for r in "${phase_runs[@]}"; do
      name="$phase-${r/:/-}-$round"
      echo "profile: recording the $phase of $r (round $round of $rounds)..." >&2
      if [ "$r" = llama.cpp ]; then
        cmd=("$llama_py" scripts/bench_llamacpp.py --threads "$(nproc)" --profile "$phase" --profile-rounds 2)
      else
        cmd=(env BENCH_PROFILE="$r" BENCH_PROFILE_ROUNDS=2 "$bin/bench")
      fi
      PERF_CTL_FIFO="$out/ctl" PERF_ACK_FIFO="$out/ack" BENCH_PROFILE_PHASE="$phase" \
        perf record -q -D -1 --control "fifo:$out/ctl,$out/ack" -e cpu-clock -F "$freq" -o "$out/$name.data" \
        -- "${cmd[@]}" >"$out/$name.txt" 2>"$out/$name.log" || { cat "$out/$name.log" >&2; exit 1; }
      read -r _ tokens wall < <(grep '^profiled' "$out/$name.txt")
      printf 'run\t%s\t%s\t%s\t%s\n' "$phase" "$r" "$tokens" "$wall" >>"$out/summary.tsv"
      for key in comm sym; do
        # perf prints "NN.NN%  samples  key"; keep samples and key.
        perf report -q -i "$out/$name.data" --sort "$key" --stdio -n 2>/dev/null |
          awk -v p="$phase" -v r="$r" -v k="$key" 'NF >= 3 {n = $2; $1 = ""; $2 = ""; sub(/^ +/, ""); printf "samples\t%s\t%s\t%s\t%s\t%s\n", p, r, k, n, $0}' >>"$out/summary.tsv"
      done
    done
  done
  for r in "${phase_runs[@]}"; do
    awk -v f="$freq" -F'\t' -v p="$phase" -v r="$r" \
      '$2 == p && $3 == r && $1 == "run" {t += $4; w += $5} $1 == "samples" && $2 == p && $3 == r && $4 == "comm" {s += $5} END {printf "profile: %s of %s: %d tokens, %.2f ms wall and %.2f ms CPU per token\n", p, r, t, w / t, s / f * 1000 / t}' \
      "$out/summary.tsv" >&2
  done
done
{
  echo "scripts/profile.sh $split, $(date -u '+%Y-%m-%d %H:%M') UTC, commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'), perf -e cpu-clock -F $freq"
} >"$out/about.txt"
rm -f "$out/ctl" "$out/ack"
echo "profile: wrote $out/summary.tsv (perf report -i $out/<phase>-<run>.data for the rest)" >&2
