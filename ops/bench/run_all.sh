#!/usr/bin/env bash
# `make bench`: every benchmark in one session, then one table (ops/bench/summary.py) of every
# figure beside its floor and target. Results of earlier sessions are removed first, so the table
# never mixes machines or days. PostgreSQL: a throwaway server (ops/pg_up.sh; fsync=off there, so
# the PostgreSQL figures exclude the server's disk flush, see docs/performance.md).
#   BENCH_QUICK=1  smaller sizes for a smoke run (the figures are then not the quality.md ones).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
rm -rf ops/bench/results
pg_env="$(ops/pg_up.sh)"
eval "$pg_env"
trap 'ops/pg_down.sh' EXIT
trap 'exit 130' INT TERM
if [[ -n "${BENCH_QUICK:-}" ]]; then
  flows=2000 runs=1 ready=0 burst=20000 line=20 query=(--quick)
else
  flows=20000 runs=3 ready=1000000 burst=1000000 line=400 query=()
fi
$PY ops/bench/ingest_bench.py --backend sqlite --flows "$flows" --runs "$runs"
$PY ops/bench/ingest_bench.py --backend sqlite --planes join --flows "$flows" --runs "$runs"
$PY ops/bench/ingest_bench.py --backend postgresql --flows "$flows" --runs "$runs" --skip-latency
$PY ops/bench/ingest_bench.py --backend postgresql --planes join --flows "$flows" --runs "$runs"
$PY ops/bench/replay_bench.py --events $((flows * 10)) --runs "$runs" --ready-events "$ready"
$PY ops/bench/memory_bench.py --events "$burst" --line-mb "$line"
$PY ops/bench/query_bench.py "${query[@]}"
$PY ops/bench/idle_bench.py
$PY ops/bench/intake_bench.py
$PY ops/bench/kernel_bench.py
$PY ops/bench/summary.py
