#!/usr/bin/env bash
# Start a throwaway PostgreSQL server on loopback for tests and local runs.
#
# Usage:  eval "$(ops/pg_up.sh)"   ...   ops/pg_down.sh
#         eval "$(ops/pg_up.sh --export-dsn)"   # also CTXPLANE__STORE__DSN, for the postgres profile
#
# Prints only `export ...` lines on stdout (everything else goes to stderr), so `eval` picks up:
#   PGBIN  PGROOT  PGPORT  CTXPLANE_TEST_PG_DSN=postgresql://postgres@127.0.0.1:$PGPORT/postgres
# and, with --export-dsn, CTXPLANE__STORE__DSN=postgresql://postgres@127.0.0.1:$PGPORT/ctxplane: the
# DSN of config/profiles/postgres.yaml on the port actually chosen (the profile names 55432). Not by
# default: exported, it overrides the store of every `ctxplane` command of that shell, whatever its
# --config (the test suite runs SQLite profiles beside PostgreSQL ones). Without it, the line to
# paste is printed on stderr.
# The data directory is a fresh temp dir (deleted by ops/pg_down.sh). The server listens on
# 127.0.0.1 only, trusts local connections, and creates the `ctxplane` database that
# config/profiles/postgres.yaml names.
#
# Port: $PGPORT, default 55432. When PGPORT is not set and 55432 is taken (another checkout on this
# machine running its suite), the next free port is used instead; an explicit PGPORT is never changed.
#
# Durability: fsync=off is fine for a throwaway server (the OS page cache survives a server crash,
# which is what the drills do); synchronous_commit stays ON, because with it off a crashed server
# loses commits it already acknowledged and crash tests would see phantom data loss.
set -euo pipefail

export_dsn=0
case "${1:-}" in
  "") ;;
  --export-dsn) export_dsn=1 ;;
  *) echo "pg_up: unknown argument ${1} (usage: ops/pg_up.sh [--export-dsn])" >&2; exit 2 ;;
esac

port_busy() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

if [[ -n "${PGPORT:-}" ]]; then
  if port_busy "$PGPORT"; then
    echo "pg_up: port $PGPORT on 127.0.0.1 is already in use (PGPORT was set explicitly)" >&2
    exit 1
  fi
else
  PGPORT=55432
  while port_busy "$PGPORT"; do
    PGPORT=$((PGPORT + 1))
    if (( PGPORT > 55532 )); then
      echo "pg_up: no free port in 55432..55532 on 127.0.0.1" >&2
      exit 1
    fi
  done
fi

if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  if [[ "$(id -u)" != 0 ]]; then
    echo "pg_up: PostgreSQL is not installed and installing it needs root (apt-get install postgresql)" >&2
    exit 1
  fi
  echo "pg_up: installing PostgreSQL with apt-get ..." >&2
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql >&2
fi
PGBIN="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"

# PostgreSQL refuses to run as root: as root, run it as the `postgres` user; otherwise as ourselves.
if [[ "$(id -u)" == 0 ]]; then
  id -u postgres >/dev/null 2>&1 || useradd --system --home-dir /nonexistent --shell /usr/sbin/nologin postgres
  as_pg() { runuser -u postgres -- "$@"; }
else
  as_pg() { "$@"; }
fi

# The system temp dir, not $HOME: the postgres user must be able to traverse every parent directory.
PGROOT="$(mktemp -d /tmp/ctxplane-pg.XXXXXX)"
chmod 700 "$PGROOT"
[[ "$(id -u)" == 0 ]] && chown postgres:postgres "$PGROOT"

cleanup_on_error() {
  echo "pg_up: failed; server log follows" >&2
  cat "$PGROOT/initdb.log" "$PGROOT/server.log" >&2 2>/dev/null || true
  as_pg "$PGBIN/pg_ctl" -D "$PGROOT/data" -m immediate -w stop >/dev/null 2>&1 || true
  rm -rf "$PGROOT"
}
trap cleanup_on_error ERR

as_pg "$PGBIN/initdb" -D "$PGROOT/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >"$PGROOT/initdb.log" 2>&1
as_pg "$PGBIN/pg_ctl" -D "$PGROOT/data" -l "$PGROOT/server.log" -w -t 30 \
  -o "-p $PGPORT -k $PGROOT -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off" start >/dev/null
as_pg "$PGBIN/createdb" -h 127.0.0.1 -p "$PGPORT" -U postgres ctxplane
trap - ERR

echo "pg_up: PostgreSQL $("$PGBIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$PGPORT, data in $PGROOT" >&2
echo "export PGBIN=$PGBIN"
echo "export PGROOT=$PGROOT"
echo "export PGPORT=$PGPORT"
echo "export CTXPLANE_TEST_PG_DSN=postgresql://postgres@127.0.0.1:$PGPORT/postgres"
profile_dsn="postgresql://postgres@127.0.0.1:$PGPORT/ctxplane"
if (( export_dsn )); then
  echo "export CTXPLANE__STORE__DSN=$profile_dsn"
else
  echo "pg_up: for config/profiles/postgres.yaml (it names 127.0.0.1:55432): export CTXPLANE__STORE__DSN=$profile_dsn" >&2
fi
