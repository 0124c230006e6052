#!/usr/bin/env bash
# Starts the real servers the suite needs on loopback, runs the suite, stops them.
#   PostgreSQL: ops/pg_up.sh (a throwaway server in the system temp dir; installed with apt if
#   missing), stopped by ops/pg_down.sh on any exit. CTXPLANE_REQUIRE_PG=1 turns "PostgreSQL not
#   running" from a skip into a failure, so `make test` can never pass without the PostgreSQL cases.
#   Kinesis: ops/kinesis_up.sh (moto's server on loopback, patched to AWS resharding semantics),
#   stopped by ops/kinesis_down.sh; CTXPLANE_REQUIRE_KINESIS=1 does the same for the Kinesis cases.
#   promtool: ops/promtool_up.sh takes it out of Debian's prometheus package into .venv/bin when it
#   is not installed, for the `promtool check` / `promtool test rules` cases (they skip without it).
# Before the suite: `ruff check`, the layering contracts (`lint-imports`) and mypy (ops/typecheck.sh), all
# configured in pyproject.toml.
# Arguments are passed to pytest (e.g. `bash ops/run_tests.sh tests/runtime/store -x`).
set -euo pipefail
cd "$(dirname "$0")/.."
# Static checks first: they take seconds and a regression in layering or lint fails the suite.
.venv/bin/ruff check --quiet actors runtime contracts config tests ops
.venv/bin/lint-imports --no-cache >/dev/null || { .venv/bin/lint-imports --no-cache; exit 1; }
ops/typecheck.sh
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_DEFAULT_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true

# Not `eval "$(ops/pg_up.sh)"` directly: eval of a failed command substitution returns 0 and
# set -e would not stop us.
pg_env="$(ops/pg_up.sh)"
eval "$pg_env"
trap 'ops/pg_down.sh' EXIT
trap 'exit 130' INT TERM  # run the EXIT trap on Ctrl-C / kill too
export CTXPLANE_REQUIRE_PG=1
kinesis_env="$(ops/kinesis_up.sh)"
eval "$kinesis_env"
trap 'ops/kinesis_down.sh; ops/pg_down.sh' EXIT
export CTXPLANE_REQUIRE_KINESIS=1
ops/promtool_up.sh

.venv/bin/python -m pytest -q "$@"
