#!/usr/bin/env bash
# Stop the server ops/pg_up.sh started and delete its data directory.
# Reads PGBIN and PGROOT from the environment (the lines pg_up.sh printed, after `eval`).
set -euo pipefail

if [[ -z "${PGROOT:-}" || -z "${PGBIN:-}" ]]; then
  echo "pg_down: PGROOT/PGBIN not set (run: eval \"\$(ops/pg_up.sh)\" first); nothing to stop" >&2
  exit 0
fi
# Only ever delete a directory pg_up.sh created.
case "$PGROOT" in
  /tmp/ctxplane-pg.*) ;;
  *) echo "pg_down: refusing to remove $PGROOT (not a pg_up.sh data directory)" >&2; exit 1 ;;
esac

if [[ -f "$PGROOT/data/postmaster.pid" ]]; then
  if [[ "$(id -u)" == 0 ]]; then
    runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGROOT/data" -m fast -w -t 30 stop >/dev/null || true
  else
    "$PGBIN/pg_ctl" -D "$PGROOT/data" -m fast -w -t 30 stop >/dev/null || true
  fi
fi
rm -rf "$PGROOT"
