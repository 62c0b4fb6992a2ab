#!/usr/bin/env bash
# Set up .venv (first run only) and run the test suite: pytest-xdist spreads the test files over
# PYTEST_WORKERS processes (2: one per core here; most tests train on one thread), the 15 slowest shown.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
python -m pytest -q -n "${PYTEST_WORKERS:-2}" --dist loadfile --durations=15 "$@"
