# Sourced by the other scripts: creates .venv on first use and installs the package.
# torch/torchvision are pinned to the releases that install from this machine's disk.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
STAMP=.venv/.simclr_ad-installed
if [ ! -f "$STAMP" ] || [ setup.cfg -nt "$STAMP" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1" -e ".[dev,medical,seg]"
  touch "$STAMP"
fi
export PATH="$ROOT/.venv/bin:$PATH"
