#!/usr/bin/env bash
# Make `promtool` available for the alert-rule tests (tests/test_ops_artifacts.py), if it can be had.
#
# Usage: ops/promtool_up.sh      (called by ops/run_tests.sh; never fails the run)
#
# Uses a promtool on PATH or in .venv/bin if there is one. Otherwise it takes the binary out of
# Debian's `prometheus` package: `apt-get download` (no install, so no Prometheus server, no service,
# no root needed unless the package lists must be fetched first) and extracts usr/bin/promtool into
# .venv/bin. Where none of this works the promtool tests skip, and this script says why on stderr.
set -uo pipefail
cd "$(dirname "$0")/.."
say() { echo "promtool_up: $*" >&2; }

if command -v promtool >/dev/null 2>&1; then exit 0; fi
if [[ -x .venv/bin/promtool ]]; then exit 0; fi
if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg-deb >/dev/null 2>&1; then
  say "no promtool and no apt-get/dpkg-deb here: the promtool tests will skip"; exit 0
fi
if ! apt-cache policy prometheus 2>/dev/null | grep -q 'Candidate: [0-9]'; then
  if [[ "$(id -u)" == 0 ]]; then
    say "fetching the package lists (apt-get update) ..."
    apt-get update -qq >&2 || true
  fi
fi
work="$(mktemp -d)"
chmod 755 "$work"  # apt's download user must be able to write there
trap 'rm -rf "$work"' EXIT
say "taking promtool out of Debian's prometheus package ..."
if (cd "$work" && apt-get download -q prometheus >&2) && deb="$(ls "$work"/prometheus_*.deb 2>/dev/null | head -1)" && [[ -n "$deb" ]]; then
  mkdir -p "$work/x" .venv/bin
  if dpkg-deb -x "$deb" "$work/x" && [[ -x "$work/x/usr/bin/promtool" ]]; then
    cp "$work/x/usr/bin/promtool" .venv/bin/promtool
    say "installed $(.venv/bin/promtool --version 2>&1 | head -1) as .venv/bin/promtool"
    exit 0
  fi
fi
say "could not get promtool from the prometheus package: the promtool tests will skip"
exit 0
