#!/usr/bin/env bash
# Installs llama-cpp-python (the llama.cpp reference for raw model speed, see
# scripts/bench_llamacpp.py) from its PyPI source distribution into a virtualenv outside the repo:
#   ${SPLITINFER_CACHE:-$HOME/.cache/splitinfer}/llamacpp-venv
# pip builds the bundled llama.cpp with CMake; it is built for this CPU (GGML_NATIVE=ON, llama.cpp's
# default for a non-cross build), CPU only. Takes ~10-20 minutes on 2 cores. Idempotent: with the
# pinned version already importable from the venv it only prints where it is.
# Environment: LLAMACPP_PY_VERSION overrides the pinned version; LLAMACPP_VENV the venv path.
set -euo pipefail

version="${LLAMACPP_PY_VERSION:-0.3.36}"
cache="${SPLITINFER_CACHE:-$HOME/.cache/splitinfer}"
venv="${LLAMACPP_VENV:-$cache/llamacpp-venv}"
py="$venv/bin/python"

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
  echo "the CPU lists AMX but a tile load fails here (the kernel does not grant it): building without AMX"
fi
# GGML_NATIVE defaults to OFF when SOURCE_DATE_EPOCH is set; ask for it explicitly.
cmake_args="${CMAKE_ARGS:-} -DGGML_NATIVE=ON -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DGGML_BLAS=OFF -DLLAMA_CURL=OFF"
stamp="$venv/splitinfer-build-args"

if [ "$(installed_version || true)" = "$version" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$cmake_args $amx_note" ]; then
  echo "llama-cpp-python $version already installed in $venv (python: $py)"
  exit 0
fi

mkdir -p "$cache"
if [ ! -x "$py" ]; then
  python3 -m venv "$venv"
fi
"$py" -m pip install -q --upgrade pip

# Build tools: a system cmake (>= 3.21) if there is one, else apt (as root) or PyPI's wheels.
need_cmake=1
if command -v cmake >/dev/null 2>&1; then
  if cmake --version | head -1 | awk '{split($3, v, "."); exit !(v[1] > 3 || (v[1] == 3 && v[2] >= 21))}'; then
    need_cmake=0
  fi
fi
if [ "$need_cmake" = 1 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
    && apt-get install -y -q cmake >/dev/null 2>&1 && command -v cmake >/dev/null 2>&1; then
    echo "installed cmake from apt: $(cmake --version | head -1)"
  else
    "$py" -m pip install -q cmake
    echo "installed cmake from PyPI into $venv"
  fi
fi
command -v ninja >/dev/null 2>&1 || "$py" -m pip install -q ninja
export PATH="$venv/bin:$PATH"

unset SOURCE_DATE_EPOCH
export CMAKE_ARGS="$cmake_args"
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
log="$cache/llamacpp-build.log"
echo "building llama-cpp-python $version from source (CMAKE_ARGS=$CMAKE_ARGS); log: $log"
start=$(date +%s)
# The same version built with other flags: pip would call it satisfied.
if [ -n "$(installed_version || true)" ]; then
  "$py" -m pip uninstall -y -q llama-cpp-python
fi
if ! "$py" -m pip install -v --no-cache-dir --no-binary llama-cpp-python \
    "llama-cpp-python==$version" >"$log" 2>&1; then
  tail -40 "$log" >&2
  echo "$(basename "$0"): build failed; full log in $log" >&2
  exit 1
fi
echo "$cmake_args $amx_note" >"$stamp"
echo "built in $(( $(date +%s) - start )) s"
echo "llama-cpp-python $(installed_version) installed in $venv (python: $py)"
