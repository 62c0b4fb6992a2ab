#!/usr/bin/env bash
# Refresh results/demo/ from a clean run of scripts/demo.sh (the README's phantom figures).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
RUNS="${RUNS:-demo_runs_results}"
rm -rf "$RUNS"
mkdir -p "$RUNS"
start=$(date +%s)
bash scripts/demo.sh "$RUNS"
printf '%s\t%s\t%s\t%s\t%s\n' demo done "$(( $(date +%s) - start ))" "$(git rev-parse --short HEAD)" \
  "bash scripts/demo.sh $RUNS" > "$RUNS/stages.tsv"
python -m simclr_ad.report --runs "$RUNS/finetune" --pretrain "$RUNS/pretrain" --out results/demo --copy-runs \
  --stages "$RUNS/stages.tsv"
cp "$RUNS/phantoms.png" results/demo/phantoms.png
