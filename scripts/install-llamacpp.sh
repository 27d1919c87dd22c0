#!/usr/bin/env bash
# Builds llama.cpp, the reference for raw model speed, for this CPU, outside the repo, from the
# PyPI source distribution of llama-cpp-python (pinned 0.3.36), in two forms:
#
# - native llama.cpp: `llama-bench` (the benchmark harness's section 6) and `llama-perplexity`,
#   built with CMake + Ninja from the sdist's vendored tree (vendor/llama.cpp) into
#     ${SPLITINFER_CACHE:-$HOME/.cache/splitinfer}/llamacpp-native/bin
#   Release, statically linked, CPU only, GGML_NATIVE=ON, only those two targets.
# - the Python binding, llama-cpp-python, built by pip from the same sdist into a virtualenv:
#     ${SPLITINFER_CACHE:-$HOME/.cache/splitinfer}/llamacpp-venv
#   scripts/profile.sh profiles llama.cpp through it (scripts/bench_llamacpp.py opens perf's gate
#   around one phase, which llama-bench cannot); the harness no longer uses it.
#
#   scripts/install-llamacpp.sh                 # both
#   scripts/install-llamacpp.sh --native-only   # llama-bench and llama-perplexity only
#   scripts/install-llamacpp.sh --python-only   # the binding only
#
# Both are built for this CPU (GGML_NATIVE=ON, asked for explicitly), CPU only; the AMX probe
# below applies to both. Each takes ~10-20 minutes on 2 cores. Idempotent: a stamp (version and
# build arguments) beside each build makes a second run only print where it is; other arguments
# rebuild. The sdist comes from `pip download` (sha256 checked for the pinned version) and is kept
# in $cache/llamacpp-src, which is reused when it is there. CMake (>= 3.21) and Ninja come from the
# system, else from apt (as root) or PyPI into the venv.
#
# This llama.cpp's `llama-perplexity` in strided mode (`--ppl-stride S`) adds S/2 to the context:
# its windows are (C x the -b/C sequences it runs) + S/2 tokens, rounded up to a multiple of 256,
# scoring the last S of each. For windows of W tokens (a multiple of 256) pass `-c C -b C` with
# C = W - S/2: `-c 384 -b 384 --ppl-stride 256` gives 512; its "Calculation chunk = N" line says.
#
# Environment: LLAMACPP_PY_VERSION overrides the pinned version; LLAMACPP_VENV the venv path;
# PYTHON the interpreter for pip and the venv (python3).
set -euo pipefail

want_native=1
want_python=1
case "${1:-}" in
  "") ;;
  --native-only) want_python=0 ;;
  --python-only) want_native=0 ;;
  -h | --help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  *) echo "usage: $0 [--native-only | --python-only]" >&2; exit 2 ;;
esac

version="${LLAMACPP_PY_VERSION:-0.3.36}"
# sha256 of llama_cpp_python-0.3.36.tar.gz on PyPI; another version is taken as pip checked it.
pinned_sha256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
cache="${SPLITINFER_CACHE:-$HOME/.cache/splitinfer}"
venv="${LLAMACPP_VENV:-$cache/llamacpp-venv}"
py="$venv/bin/python"
python="${PYTHON:-python3}"
native="$cache/llamacpp-native"
sdist_dir="$cache/llamacpp-src"
sdist="$sdist_dir/llama_cpp_python-$version.tar.gz"
me="$(basename "$0")"

say() { echo "$me: $*"; }
# Prints the log's tail and where the whole log is, then exits.
fail() {
  local log="$1"
  shift
  [ -f "$log" ] && tail -40 "$log" >&2
  echo "$me: $*; full log in $log" >&2
  exit 1
}

installed_version() {
  [ -x "$py" ] && "$py" -c 'import llama_cpp, sys; sys.stdout.write(llama_cpp.__version__)' 2>/dev/null
}

# AMX: -march=native turns llama.cpp's AMX kernels on wherever the CPU lists AMX, but a virtual
# machine's kernel may not grant the tile state, and then the first prefill dies of SIGILL in
# `tileloadd` (seen on this project's Xeon VMs). Build with AMX only where a tile load runs.
amx_usable() {
  grep -q amx_int8 /proc/cpuinfo || return 1
  local dir
  dir=$(mktemp -d)
  cat >"$dir/amx.c" <<'C'
#include <immintrin.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>
int main(void) {
  /* ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA, as ggml asks. */
  if (syscall(SYS_arch_prctl, 0x1023, 18) != 0) return 1;
  struct { uint8_t palette, start; uint8_t pad[14]; uint16_t colsb[16]; uint8_t rows[16]; } __attribute__((packed)) cfg;
  memset(&cfg, 0, sizeof cfg);
  cfg.palette = 1; cfg.colsb[0] = 64; cfg.rows[0] = 16;
  static uint8_t buf[1024];
  _tile_loadconfig(&cfg);
  _tile_loadd(0, buf, 64);
  _tile_release();
  return 0;
}
C
  local ok=1
  gcc -O1 -mamx-tile -mamx-int8 "$dir/amx.c" -o "$dir/amx" 2>/dev/null && ("$dir/amx"; exit $?) 2>/dev/null && ok=0
  rm -rf "$dir"
  return $ok
}
amx_note=""
if grep -q amx_int8 /proc/cpuinfo && ! amx_usable; then
  # CMake starts CMAKE_C(XX)_FLAGS from these; GCC lets an explicit -mno-* win over -march=native.
  export CFLAGS="${CFLAGS:-} -mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
  export CXXFLAGS="${CXXFLAGS:-} -mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
  amx_note="without AMX"
  say "the CPU lists AMX but a tile load fails here (the kernel does not grant it): building without AMX"
fi
# GGML_NATIVE defaults to OFF when SOURCE_DATE_EPOCH is set; ask for it explicitly. LLAMA_CURL is
# deprecated (ignored) in the vendored tree; LLAMA_OPENSSL=OFF is its successor's off switch.
cmake_args="${CMAKE_ARGS:-} -DGGML_NATIVE=ON -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DGGML_BLAS=OFF -DLLAMA_CURL=OFF"
native_args="$cmake_args -DLLAMA_OPENSSL=OFF -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF"
python_stamp="$venv/splitinfer-build-args"
native_stamp="$native/splitinfer-build-args"
native_stamp_text="llama-cpp-python $version sdist, vendor/llama.cpp; cmake$native_args $amx_note"

python_done() {
  [ "$(installed_version || true)" = "$version" ] && [ "$(cat "$python_stamp" 2>/dev/null)" = "$cmake_args $amx_note" ]
}
native_done() {
  [ "$(cat "$native_stamp" 2>/dev/null)" = "$native_stamp_text" ] \
    && "$native/bin/llama-bench" --help >/dev/null 2>&1 && [ -x "$native/bin/llama-perplexity" ]
}
native_where() {
  say "native llama.cpp (commit $(cat "$native/commit" 2>/dev/null || echo '?'), from llama-cpp-python $version's vendored tree): $native/bin/llama-bench, $native/bin/llama-perplexity"
}
python_where() {
  say "llama-cpp-python $(installed_version) installed in $venv (python: $py)"
}

if [ "$want_native" = 1 ] && native_done; then
  native_where
  want_native=0
fi
if [ "$want_python" = 1 ] && python_done; then
  python_where
  want_python=0
fi
[ "$want_native" = 0 ] && [ "$want_python" = 0 ] && exit 0

mkdir -p "$cache"
if [ ! -x "$py" ]; then
  say "creating the virtualenv $venv (build tools, the binding)"
  "$python" -m venv "$venv"
fi
"$py" -m pip install -q --upgrade pip

# Build tools: a system cmake (>= 3.21) if there is one, else apt (as root) or PyPI's wheels.
need_cmake=1
if command -v cmake >/dev/null 2>&1; then
  if cmake --version | head -1 | awk '{split($3, v, "."); exit !(v[1] > 3 || (v[1] == 3 && v[2] >= 21))}'; then
    need_cmake=0
  fi
fi
if [ "$need_cmake" = 1 ] && [ ! -x "$venv/bin/cmake" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
    && apt-get install -y -q cmake >/dev/null 2>&1 && command -v cmake >/dev/null 2>&1 \
    && cmake --version | head -1 | awk '{split($3, v, "."); exit !(v[1] > 3 || (v[1] == 3 && v[2] >= 21))}'; then
    say "installed cmake from apt: $(cmake --version | head -1)"
  else
    "$py" -m pip install -q cmake
    say "installed cmake from PyPI into $venv"
  fi
fi
if ! command -v ninja >/dev/null 2>&1 && [ ! -x "$venv/bin/ninja" ]; then
  "$py" -m pip install -q ninja
  say "installed ninja from PyPI into $venv"
fi
export PATH="$venv/bin:$PATH"
unset SOURCE_DATE_EPOCH
jobs="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"

# Runs a command with its output appended to the log $1, saying every 30 s how far ninja is.
run_logged() {
  local log="$1" waited=0 step
  shift
  "$@" >>"$log" 2>&1 &
  local pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    sleep 5
    waited=$((waited + 5))
    if [ $((waited % 30)) = 0 ] && kill -0 "$pid" 2>/dev/null; then
      step=$(grep -ao '^\[[0-9]*/[0-9]*\]' "$log" | tail -1 || true)
      say "  ... ${waited} s${step:+, at step $step}"
    fi
  done
  wait "$pid"
}

# The sdist in $sdist_dir: the cached one, else `pip download`; sha256 checked for the pinned version.
get_sdist() {
  local log="$1"
  if [ -f "$sdist" ]; then
    say "using the cached source distribution $sdist"
  else
    say "downloading the llama-cpp-python $version source distribution into $sdist_dir"
    mkdir -p "$sdist_dir"
    "$python" -m pip download -q --no-deps --no-binary llama-cpp-python -d "$sdist_dir" \
      "llama-cpp-python==$version" >>"$log" 2>&1 || fail "$log" "pip download of llama-cpp-python==$version failed"
    [ -f "$sdist" ] || fail "$log" "pip download left no $sdist"
  fi
  if [ "$version" = 0.3.36 ] && [ "$(sha256sum "$sdist" | cut -d' ' -f1)" != "$pinned_sha256" ]; then
    fail "$log" "$sdist does not have the pinned sha256 $pinned_sha256 (delete it to download it again)"
  fi
}

build_native() {
  mkdir -p "$native"
  local log="$native/build.log" start top="llama_cpp_python-$version" src="$native/src"
  local tree="$src/llama_cpp_python-$version/vendor/llama.cpp" configured="$native/build/splitinfer-configure-args"
  start=$(date +%s)
  rm -f "$native_stamp"
  if [ -d "$tree" ] && [ "$(cat "$configured" 2>/dev/null)" = "$native_stamp_text" ]; then
    # An earlier build with these arguments stopped part way: ninja goes on from there.
    say "resuming the build in $native/build; log: $log"
  else
    : >"$log"
    get_sdist "$log"
    # The vendored tree, with the sdist's git metadata of the llama.cpp submodule so that CMake's
    # build-info (llama-bench's build_commit) names the vendored commit. The sdist leaves out the
    # submodule's `.git` file; it is written back here.
    say "unpacking $top/vendor/llama.cpp into $src"
    rm -rf "$src" "$native/build" "$native/bin"
    mkdir -p "$src"
    tar -xzf "$sdist" -C "$src" "$top/vendor/llama.cpp" "$top/.git/modules/vendor/llama.cpp" >>"$log" 2>&1 \
      || tar -xzf "$sdist" -C "$src" "$top/vendor/llama.cpp" >>"$log" 2>&1 \
      || fail "$log" "$sdist has no $top/vendor/llama.cpp"
    if [ -f "$src/$top/.git/modules/vendor/llama.cpp/HEAD" ]; then
      echo "gitdir: ../../.git/modules/vendor/llama.cpp" >"$tree/.git"
      cut -c1-40 "$src/$top/.git/modules/vendor/llama.cpp/HEAD" >"$native/commit"
    else
      echo "unknown" >"$native/commit"
    fi
    say "configuring (cmake$native_args); log: $log"
    # shellcheck disable=SC2086 # the arguments are words
    run_logged "$log" cmake -S "$tree" -B "$native/build" -G Ninja $native_args \
      || fail "$log" "configuring llama.cpp failed"
    echo "$native_stamp_text" >"$configured"
  fi
  say "building llama-bench and llama-perplexity with $jobs jobs (~10-20 minutes on 2 cores)"
  run_logged "$log" cmake --build "$native/build" --target llama-bench llama-perplexity -j "$jobs" \
    || fail "$log" "building llama.cpp failed"
  mkdir -p "$native/bin"
  cp "$native/build/bin/llama-bench" "$native/build/bin/llama-perplexity" "$native/bin/"
  "$native/bin/llama-bench" --help >/dev/null 2>>"$log" || fail "$log" "the built llama-bench does not run"
  echo "$native_stamp_text" >"$native_stamp"
  # The binaries are linked statically (libgomp and the C++ runtime aside); the tree and the
  # build directory (~300 MB) are not needed any more. The sdist stays in $sdist_dir.
  rm -rf "$src" "$native/build"
  say "built native llama.cpp in $(( $(date +%s) - start )) s"
  native_where
}

build_python() {
  local log="$cache/llamacpp-build.log" start
  export CMAKE_ARGS="$cmake_args"
  export CMAKE_BUILD_PARALLEL_LEVEL="$jobs"
  say "building llama-cpp-python $version from source (CMAKE_ARGS=$CMAKE_ARGS); log: $log"
  : >"$log"
  start=$(date +%s)
  # The same version built with other flags: pip would call it satisfied.
  if [ -n "$(installed_version || true)" ]; then
    "$py" -m pip uninstall -y -q llama-cpp-python
  fi
  get_sdist "$log"
  run_logged "$log" "$py" -m pip install -v --no-cache-dir --no-binary llama-cpp-python "$sdist" \
    || fail "$log" "building llama-cpp-python failed"
  echo "$cmake_args $amx_note" >"$python_stamp"
  say "built llama-cpp-python in $(( $(date +%s) - start )) s"
  python_where
}

[ "$want_native" = 1 ] && build_native
[ "$want_python" = 1 ] && build_python
exit 0
