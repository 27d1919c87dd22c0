#!/bin/sh
# The channel emulator's entrypoint in the testbed image: maps SCENARIO to the emulator's flags,
# then hands over (exec) so the emulator gets docker's SIGTERM itself. Every other EMU_* variable
# reaches the emulator unchanged (each flag has one, see `channel-emulator --help`), and flags given
# as the container's command come last, so they win.
#
#   SCENARIO          clean | good | bad | alternating | mobility | trace   (default: alternating)
#                     clean: no scenario, the emulator runs as the EMU_* variables say (by
#                     default a pass-through; EMU_CHANNEL=true with EMU_PRESET or EMU_SNR_DB,
#                     ... makes it a static channel)
#   EMU_ALTERNATE_MS  alternating: how long each of good and bad lasts (default 1500)
#   EMU_MOBILITY      mobility: pedestrian | vehicular (default pedestrian)
#   EMU_TRACE         trace: a t_ms,snr_db,m CSV in the container
#                     (default /etc/splitinfer/traces/drive-by.csv)
# The three scenario variables are consumed here and unset, so that only the chosen scenario
# reaches the emulator (they would conflict). A trace or mobility scenario sets the mean SNR and m
# over time; the rest of the channel comes from a preset, `good` unless EMU_PRESET names one: the
# analog noise and the outage loss with one retransmission of cases L and H, so that a falling SNR
# does corrupt the activations.
set -eu
scenario="${SCENARIO:-alternating}"
alternate_ms="${EMU_ALTERNATE_MS:-1500}"
mobility="${EMU_MOBILITY:-pedestrian}"
trace="${EMU_TRACE:-/etc/splitinfer/traces/drive-by.csv}"
unset EMU_ALTERNATE_MS EMU_MOBILITY EMU_TRACE
base="${EMU_PRESET:-static}"
if [ "$base" = static ]; then base=good; fi
case "$scenario" in
  clean) exec channel-emulator "$@" ;;
  good | bad) exec channel-emulator --channel --preset "$scenario" "$@" ;;
  alternating) exec channel-emulator --alternate-ms "$alternate_ms" "$@" ;;
  mobility) exec channel-emulator --preset "$base" --mobility "$mobility" "$@" ;;
  trace) exec channel-emulator --preset "$base" --trace "$trace" "$@" ;;
  *)
    echo "emulator-entrypoint: SCENARIO=$scenario is not one of clean, good, bad, alternating, mobility, trace" >&2
    exit 2
    ;;
esac
