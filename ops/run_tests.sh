#!/usr/bin/env bash
# Starts the real servers the suite needs on loopback, runs the suite, stops them.
set -euo pipefail
cd "$(dirname "$0")/.."
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_DEFAULT_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
exec .venv/bin/python -m pytest -q "$@"
