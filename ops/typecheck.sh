#!/usr/bin/env bash
# mypy over ctxplane as it is imported (ctxplane.runtime, ...); configured in pyproject.toml [tool.mypy].
# The folders live at the top of the repository and setuptools maps them under ctxplane. (package-dir),
# which mypy cannot follow, and the editable install is an import hook mypy never runs. So a link tree
# in .venv gives mypy the namespace: .venv/mypy-path/ctxplane/runtime -> runtime/, and so on; messages
# name the repository's files (runtime/kernel/actor.py:12: error: ...). The cache lives in .venv too.
# Arguments go to mypy (e.g. `bash ops/typecheck.sh --no-incremental`).
set -euo pipefail
cd "$(dirname "$0")/.."
links=.venv/mypy-path/ctxplane
mkdir -p "$links"
for package in contracts config runtime actors; do
  ln -sfn "../../../$package" "$links/$package"
done
status=0
out="$(.venv/bin/mypy "$@" 2>&1)" || status=$?
if [ "$status" -ne 0 ]; then
  printf '%s\n' "$out" | sed -e 's#^\.venv/mypy-path/ctxplane/##' -e 's#^ctxplane/##' >&2
fi
exit "$status"
