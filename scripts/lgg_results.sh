#!/usr/bin/env bash
# Issue 24: tumour detection and U-Net segmentation on the LGG FLAIR set, SimCLR init against random init.
# ResNet18 at 128 px (configs/lgg.yaml), one patient-grouped split (seed 0), seeds 0-2:
#   1. SimCLR pretraining on all 3929 slices (labels and masks unused);
#   2. detection (tumour slice or not) by the fine-tune stage at 10 % and 100 % of the training slices, both arms;
#   3. segmentation at 10 % and 100 % of the training patients' masks, both arms;
#   4. reports into results/lgg/: report.md (detection), segmentation.md, RUN.md (commands, SHA, machine, time).
# Many CPU hours on 2 cores. Resumable: re-run the same command, finished stages and runs are skipped.
#   nohup bash scripts/lgg_results.sh > lgg.log 2>&1 &
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
DATA="${DATA:-$ROOT/../shared/data/lgg_flair_256}"
RUNS="${RUNS:-$HOME/simclr_ad_runs/lgg}"
OUT="${OUT:-$ROOT/results/lgg}"
SEEDS="${SEEDS:-0 1 2}"
CONFIG="${CONFIG:-configs/lgg.yaml}"
mkdir -p "$RUNS" "$OUT"
LOG="$RUNS/stages.tsv"
source "$ROOT/scripts/stages.sh"
# shellcheck disable=SC2206  # the seeds are meant to split
SEED_ARGS=(--seeds $SEEDS)

stage split python -m simclr_ad.data split --data-dir "$DATA" --group-by subject --seed 0 --out "$RUNS/splits.json"
stage pretrain python -m simclr_ad.pretrain --config "$CONFIG" --data-dir "$DATA" --splits "$RUNS/splits.json" \
  --pretrain-on all --no-progress --out "$RUNS/pretrain"
stage detect python -m simclr_ad.finetune --config "$CONFIG" --data-dir "$DATA" --splits "$RUNS/splits.json" --sweep \
  --inits simclr random --fractions 0.1 1.0 "${SEED_ARGS[@]}" --encoder "$RUNS/pretrain/encoder.pt" --no-progress \
  --out "$RUNS/detect"
stage segment python -m simclr_ad.segment --config "$CONFIG" --data-dir "$DATA" --splits "$RUNS/splits.json" --sweep \
  --inits simclr random --fractions 0.1 1.0 "${SEED_ARGS[@]}" --encoder "$RUNS/pretrain/encoder.pt" --no-progress \
  --out "$RUNS/segment"

python -m simclr_ad.report --runs "$RUNS/detect" --pretrain "$RUNS/pretrain" --out "$OUT" --copy-runs --no-gradcam \
  --stages "$LOG"
# The overlay grids show real patients' slices, which are part of the data and are never committed:
# they go to the local runs dir; the committed report has none.
python -m simclr_ad.segreport --runs "$RUNS/segment" --detection "$RUNS/detect" --out "$RUNS/seg_report"
python -m simclr_ad.segreport --runs "$RUNS/segment" --detection "$RUNS/detect" --out "$OUT" --copy-runs --overlays 0
echo "results: $OUT/report.md (detection), $OUT/segmentation.md, $OUT/RUN.md"
