#!/usr/bin/env bash
# Start a throwaway Kinesis emulator (moto server, patched to AWS resharding semantics by
# ops/kinesis_emulator.py) on loopback for tests and local runs.
#
# Usage:  eval "$(ops/kinesis_up.sh)"   ...   ops/kinesis_down.sh
#
# Prints only `export ...` lines on stdout (everything else goes to stderr), so `eval` picks up:
#   KINESIS_EMU_PID  KINESIS_EMU_ROOT  CTXPLANE_TEST_KINESIS_ENDPOINT=http://127.0.0.1:$KINESIS_PORT
#   and the fake AWS credentials (AWS_ACCESS_KEY_ID=test ...; AWS_EC2_METADATA_DISABLED=true, so
#   botocore never probes the EC2 metadata address, which is outside this machine).
# Port: $KINESIS_PORT, default 45680; when not set and taken, the next free port is used.
# Needs moto, flask and flask-cors in .venv (the project's `test` extra).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"

port_busy() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

if [[ -n "${KINESIS_PORT:-}" ]]; then
  if port_busy "$KINESIS_PORT"; then
    echo "kinesis_up: port $KINESIS_PORT on 127.0.0.1 is already in use (KINESIS_PORT was set explicitly)" >&2
    exit 1
  fi
else
  KINESIS_PORT=45680
  while port_busy "$KINESIS_PORT"; do
    KINESIS_PORT=$((KINESIS_PORT + 1))
    if (( KINESIS_PORT > 45780 )); then
      echo "kinesis_up: no free port in 45680..45780 on 127.0.0.1" >&2
      exit 1
    fi
  done
fi

if ! "$PY" -c "import moto, flask, flask_cors" 2>/dev/null; then
  echo "kinesis_up: moto/flask/flask-cors missing in $PY (pip install -e '.[server,test]')" >&2
  exit 1
fi

ROOT="$(mktemp -d /tmp/ctxplane-kinesis.XXXXXX)"
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_DEFAULT_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
nohup "$PY" ops/kinesis_emulator.py --host 127.0.0.1 --port "$KINESIS_PORT" >"$ROOT/emulator.log" 2>&1 </dev/null &
PID=$!
echo "$PID" >"$ROOT/pid"

# Ready when the port accepts connections (about 0.7 s); give up after 20 s.
for _ in $(seq 400); do
  if port_busy "$KINESIS_PORT"; then break; fi
  if ! kill -0 "$PID" 2>/dev/null; then
    echo "kinesis_up: the emulator exited; its log follows" >&2
    cat "$ROOT/emulator.log" >&2
    rm -rf "$ROOT"
    exit 1
  fi
  sleep 0.05
done
if ! port_busy "$KINESIS_PORT"; then
  echo "kinesis_up: the emulator did not listen within 20 s; its log follows" >&2
  cat "$ROOT/emulator.log" >&2
  kill "$PID" 2>/dev/null || true
  rm -rf "$ROOT"
  exit 1
fi

echo "kinesis_up: moto Kinesis emulator on 127.0.0.1:$KINESIS_PORT (pid $PID, log $ROOT/emulator.log)" >&2
echo "export KINESIS_EMU_PID=$PID"
echo "export KINESIS_EMU_ROOT=$ROOT"
echo "export CTXPLANE_TEST_KINESIS_ENDPOINT=http://127.0.0.1:$KINESIS_PORT"
echo "export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_DEFAULT_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true"
