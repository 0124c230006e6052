#!/usr/bin/env bash
# Stop the emulator ops/kinesis_up.sh started and delete its directory.
# Reads KINESIS_EMU_PID and KINESIS_EMU_ROOT from the environment (after `eval`).
set -euo pipefail

if [[ -z "${KINESIS_EMU_ROOT:-}" || -z "${KINESIS_EMU_PID:-}" ]]; then
  echo "kinesis_down: KINESIS_EMU_ROOT/KINESIS_EMU_PID not set (run: eval \"\$(ops/kinesis_up.sh)\" first); nothing to stop" >&2
  exit 0
fi
# Only ever touch what kinesis_up.sh created: its directory, and the pid recorded in it.
case "$KINESIS_EMU_ROOT" in
  /tmp/ctxplane-kinesis.*) ;;
  *) echo "kinesis_down: refusing to remove $KINESIS_EMU_ROOT (not a kinesis_up.sh directory)" >&2; exit 1 ;;
esac
if [[ -f "$KINESIS_EMU_ROOT/pid" && "$(cat "$KINESIS_EMU_ROOT/pid")" == "$KINESIS_EMU_PID" ]] \
   && grep -q "kinesis_emulator.py" "/proc/$KINESIS_EMU_PID/cmdline" 2>/dev/null; then
  kill "$KINESIS_EMU_PID" 2>/dev/null || true
  for _ in $(seq 100); do
    kill -0 "$KINESIS_EMU_PID" 2>/dev/null || break
    sleep 0.05
  done
  kill -9 "$KINESIS_EMU_PID" 2>/dev/null || true
fi
rm -rf "$KINESIS_EMU_ROOT"
