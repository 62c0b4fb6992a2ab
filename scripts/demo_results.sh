#!/usr/bin/env bash
# Refresh results/demo/ from a clean run of scripts/demo.sh (the README's phantom figures).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
RUNS="${RUNS:-demo_runs_results}"
rm -rf "$RUNS"
mkdir -p "$RUNS"
LOG="$RUNS/stages.tsv"  # one row: name, status, seconds, git SHA, CPU class, command
source "$ROOT/scripts/stages.sh"
stage demo bash scripts/demo.sh "$RUNS"
python -m simclr_ad.report --runs "$RUNS/finetune" --pretrain "$RUNS/pretrain" --out results/demo --copy-runs \
  --stages "$RUNS/stages.tsv"
cp "$RUNS/phantoms.png" results/demo/phantoms.png
