#!/usr/bin/env bash
# Set up .venv (first run only) and run the test suite.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
python -m pytest -q "$@"
