#!/usr/bin/env bash
# Builds the testbed image `splitinfer:local` with no registry: nothing is pulled.
#
#   deploy/build-images.sh [--no-cargo] [--bin-dir DIR]
#
# 1. `cargo build --release` the five binaries on this host (honours CARGO_TARGET_DIR);
#    --no-cargo skips it and uses what is already built (--bin-dir, default $CARGO_TARGET_DIR/release
#    or target/release).
# 2. Assembles a minimal root filesystem in a temporary directory: the binaries (debug info
#    stripped), the shared libraries `ldd` says they need and the dynamic loader, /bin/sh (dash, for
#    the emulator's entrypoint), /etc/passwd and /etc/group with the unprivileged user `splitinfer`
#    (uid 10001), /etc/nsswitch.conf, /tmp.
# 3. `tar | docker import`s it as the base image splitinfer-base:local.
# 4. `docker build`s deploy/Dockerfile.local FROM that base: user, environment, the threshold table,
#    the example trace and the emulator's entrypoint.
#
# The image is labelled with a hash of everything that went into it; when nothing changed the
# script says so and builds nothing (FORCE=1 rebuilds anyway). Image names: SPLITINFER_BASE_IMAGE
# (splitinfer-base:local) and SPLITINFER_IMAGE (splitinfer:local). KEEP_DEBUG=1 keeps the
# binaries' line tables (backtraces with file:line; a larger image).
#
# With a registry, deploy/Dockerfile is the ordinary multi-stage build instead (see deploy/README.md).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"

cargo=1
bin_dir=""
while [ $# -gt 0 ]; do
  case "$1" in
    --no-cargo) cargo=0 ;;
    --bin-dir) bin_dir="$2"; shift ;;
    -h | --help) sed -n '2,/^set -e/p' "$0" | sed 's/^# \{0,1\}//;/^set -e/d'; exit 0 ;;
    *) echo "build-images: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
# Paths given relative to where the script was called from, before moving to the repository.
[ -n "$bin_dir" ] && bin_dir="$(cd "$bin_dir" && pwd)"
if [ -n "${CARGO_TARGET_DIR:-}" ]; then
  mkdir -p "$CARGO_TARGET_DIR"
  CARGO_TARGET_DIR="$(cd "$CARGO_TARGET_DIR" && pwd)"
  export CARGO_TARGET_DIR
fi
cd "$repo"

base_image="${SPLITINFER_BASE_IMAGE:-splitinfer-base:local}"
image="${SPLITINFER_IMAGE:-splitinfer:local}"
bin_dir="${bin_dir:-${CARGO_TARGET_DIR:-target}/release}"
binaries=(edge-server channel-emulator agent ue-client splitinfer)
say() { echo "build-images: $*" >&2; }

command -v docker >/dev/null || { say "docker is not installed"; exit 1; }
docker info >/dev/null 2>&1 || { say "the Docker engine does not answer (docker info failed): is it running, may this user use it?"; exit 1; }

if [ "$cargo" = 1 ]; then
  say "cargo build --release (the first build compiles candle: several minutes)"
  cargo build --release -q -p edge-server -p channel-emulator -p agent -p ue-client -p splitinfer
fi
for b in "${binaries[@]}"; do
  [ -x "$bin_dir/$b" ] || { say "$bin_dir/$b is missing: build it (cargo build --release) or pass --bin-dir"; exit 1; }
done

# Everything the image is made of, hashed: an unchanged input set reuses the existing image.
inputs=("${binaries[@]/#/$bin_dir/}" deploy/Dockerfile.local deploy/emulator-entrypoint.sh deploy/thresholds.csv deploy/traces/*.csv deploy/build-images.sh)
content="$( (sha256sum "${inputs[@]}" | awk '{print $1}'; echo "keep_debug=${KEEP_DEBUG:-0}") | sha256sum | cut -c1-16)"
if [ "${FORCE:-0}" != 1 ] && [ "$(docker image inspect -f '{{index .Config.Labels "org.splitinfer.content"}}' "$image" 2>/dev/null)" = "$content" ]; then
  say "$image is up to date (content $content); FORCE=1 rebuilds"
  exit 0
fi

rootfs="$(mktemp -d "${TMPDIR:-/tmp}/splitinfer-rootfs.XXXXXX")"
trap 'rm -rf "$rootfs"' EXIT
mkdir -p "$rootfs"/{usr/local/bin,bin,etc/splitinfer,tmp,home/splitinfer,cache}
chmod 1777 "$rootfs/tmp"

for b in "${binaries[@]}"; do
  if [ "${KEEP_DEBUG:-0}" = 1 ]; then
    cp "$bin_dir/$b" "$rootfs/usr/local/bin/$b"
  else
    objcopy --strip-debug "$bin_dir/$b" "$rootfs/usr/local/bin/$b"
  fi
done
cp "$(readlink -f /bin/sh)" "$rootfs/bin/sh"

# The libraries (and the loader, the one path ldd prints without "=>") at the paths ldd resolves,
# which are the paths the binaries' loader will look in; symlinks are copied as their targets.
for f in "$rootfs/usr/local/bin/"* "$rootfs/bin/sh"; do
  ldd "$f" | awk '/=> \// {print $3} /^\t\// {print $1}'
done | sort -u | while read -r lib; do
  mkdir -p "$rootfs$(dirname "$lib")"
  cp -L "$lib" "$rootfs$lib"
done

cat >"$rootfs/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/usr/sbin/nologin
splitinfer:x:10001:10001:splitinfer:/home/splitinfer:/usr/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
EOF
cat >"$rootfs/etc/group" <<'EOF'
root:x:0:
splitinfer:x:10001:
nogroup:x:65534:
EOF
echo "hosts: files dns" >"$rootfs/etc/nsswitch.conf"

say "importing the root filesystem ($(du -sh "$rootfs" | cut -f1)) as $base_image"
# Root owns everything but the user's home; --numeric-owner keeps the host's names out of it.
tar --numeric-owner --owner=0 --group=0 --exclude=./home/splitinfer -C "$rootfs" -cf "$rootfs.tar" .
tar --numeric-owner --owner=10001 --group=10001 -C "$rootfs" -rf "$rootfs.tar" ./home/splitinfer
trap 'rm -rf "$rootfs" "$rootfs.tar"' EXIT
old_base="$(docker image inspect -f '{{.Id}}' "$base_image" 2>/dev/null || true)"
old_image="$(docker image inspect -f '{{.Id}}' "$image" 2>/dev/null || true)"
docker import --message "splitinfer base: binaries and their libraries, built on the host" "$rootfs.tar" "$base_image" >/dev/null

say "docker build deploy/Dockerfile.local -> $image"
# The classic builder: this engine has no BuildKit plugin, and the base image is local anyway.
if ! out="$(DOCKER_BUILDKIT=0 docker build -f deploy/Dockerfile.local --build-arg BASE="$base_image" \
  --label "org.splitinfer.content=$content" -t "$image" deploy 2>&1)"; then
  echo "$out" >&2
  say "docker build failed"
  exit 1
fi

# Drop the images this build replaced (only ours, by id, and only if nothing else uses them).
for id in "$old_image" "$old_base"; do
  [ -n "$id" ] && docker rmi "$id" >/dev/null 2>&1 || true
done
say "built $image ($(docker image inspect -f '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1/1e6}')), content $content"
