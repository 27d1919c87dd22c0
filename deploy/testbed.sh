#!/usr/bin/env bash
# The docker-compose testbed in one word each (deploy/README.md has the plain docker-compose
# commands behind them):
#
#   deploy/testbed.sh build            build the image splitinfer:local, no registry needed
#   deploy/testbed.sh up               edge, emulator, agent, then a UE; shows the UE's output and
#                                      exits with its status; the services stay up
#   deploy/testbed.sh run [FLAGS...]   another UE generation (ue-client flags, e.g. -n 64 --json)
#   deploy/testbed.sh status           containers, health, and the agent's status
#   deploy/testbed.sh logs [SERVICE]   the services' logs
#   deploy/testbed.sh down             stop and remove everything the testbed made
#
# Options are environment variables (see the top of deploy/docker-compose.yml), e.g.
#   SCENARIO=bad UE_MAX_NEW_TOKENS=100 deploy/testbed.sh up
# COMPOSE_PROJECT_NAME (default splitinfer) names the containers and lets testbeds coexist.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
export COMPOSE_PROJECT_NAME="${COMPOSE_PROJECT_NAME:-splitinfer}"
compose=(docker-compose -f "$here/docker-compose.yml")
say() { echo "testbed: $*" >&2; }

command -v docker-compose >/dev/null || { say "docker-compose is not installed (Debian: apt-get install docker-compose)"; exit 1; }

# An absolute path: the model check below needs it, and compose then mounts exactly that.
export SPLITINFER_CACHE="${SPLITINFER_CACHE:-$HOME/.cache/splitinfer}"
model="$SPLITINFER_CACHE/${MODEL_FILE:-models/SmolLM2-135M-Instruct.Q4_1.gguf}"

ensure_ready() {
  if [ ! -f "$model" ]; then
    say "the model $model is missing: fetch it on this host first with"
    say "  cargo run --release -p splitinfer -- fetch-assets --no-corpus"
    exit 1
  fi
  local image="${SPLITINFER_IMAGE:-splitinfer:local}"
  docker image inspect "$image" >/dev/null 2>&1 || { say "no image $image: run deploy/testbed.sh build first"; exit 1; }
}

cmd="${1:-}"
shift || true
case "$cmd" in
  build)
    exec "$here/build-images.sh" "$@"
    ;;
  up)
    ensure_ready
    "${compose[@]}" up -d
    # The UE's text (stdout) and breakdown (stderr), until it exits.
    "${compose[@]}" logs -f --no-color --no-log-prefix ue
    ue="$("${compose[@]}" ps -q ue)"
    code="$(docker wait "$ue")"
    say "the UE exited with $code; edge, emulator and agent are still up:"
    say "  deploy/testbed.sh run -n 64        another generation"
    say "  deploy/testbed.sh status           the agent's decisions (port ${AGENT_PORT:-50053} on 127.0.0.1)"
    say "  http://127.0.0.1:${DASHBOARD_PORT:-8053}/          the agent's live dashboard"
    say "  deploy/testbed.sh down             tear down"
    exit "$code"
    ;;
  run)
    ensure_ready
    if [ $# -gt 0 ]; then
      exec "${compose[@]}" run --rm ue ue-client "$@"
    fi
    exec "${compose[@]}" run --rm ue
    ;;
  status)
    "${compose[@]}" ps
    echo
    # The CLI inside the agent's container: nothing needs to be installed on the host.
    "${compose[@]}" exec -T agent splitinfer agent status --agent http://127.0.0.1:50053 "$@"
    ;;
  logs)
    exec "${compose[@]}" logs "$@"
    ;;
  down)
    exec "${compose[@]}" down -v --remove-orphans
    ;;
  *)
    sed -n '2,/^set -e/p' "$0" | sed 's/^# \{0,1\}//;/^set -e/d' >&2
    exit 2
    ;;
esac
