#!/usr/bin/env bash
# Issue 21: does LookSAM (--sam-every 5) end within noise of full SAM? SimCLR on the Kaggle set with
# configs/cpu.yaml (ResNet18@64, ASAM), a short schedule of 2 epochs (1 of warmup), kNN monitor on the
# validation subjects every epoch: full SAM seed 0, LookSAM seed 0, and full SAM seed 1 for the
# seed-to-seed noise. Records (config, metrics.jsonl, stages.tsv) and results/looksam/README.md.
# About 25 min on 2 quiet avx2 cores. Resumable: finished runs are skipped.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
DATA="${DATA:-$ROOT/../shared/data/alzheimer_mri_128}"
RUNS="${RUNS:-$HOME/simclr_ad_runs/looksam}"
OUT="${OUT:-$ROOT/results/looksam}"
SPLITS="${SPLITS:-$RUNS/splits.json}"
mkdir -p "$RUNS" "$OUT"
LOG="$RUNS/stages.tsv"
source "$ROOT/scripts/stages.sh"

[ -f "$SPLITS" ] || stage split python -m simclr_ad.data split --data-dir "$DATA" --group-by auto --seed 0 \
  --out "$SPLITS"
for run in "sam_s0 --sam-every 1 --seed 0" "looksam5_s0 --sam-every 5 --seed 0" "sam_s1 --sam-every 1 --seed 1"; do
  # shellcheck disable=SC2086  # the run's flags are meant to split
  set -- $run; name=$1; shift
  stage "$name" python -m simclr_ad.pretrain --config configs/cpu.yaml --data-dir "$DATA" --splits "$SPLITS" \
    --epochs 2 --warmup-epochs 1 --knn-every 1 --no-progress "$@" --out "$RUNS/$name"
  mkdir -p "$OUT/$name"
  cp "$RUNS/$name/config.yaml" "$RUNS/$name/metrics.jsonl" "$OUT/$name/"
done
cp "$LOG" "$OUT/stages.tsv"
python scripts/probes/looksam_table.py "$OUT" > "$OUT/README.md"
echo "results: $OUT/README.md"
