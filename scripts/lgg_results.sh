#!/usr/bin/env bash
# Issue 24: tumour detection and U-Net segmentation on the LGG FLAIR set, SimCLR init against random init.
# ResNet18 at 128 px (configs/lgg.yaml), one patient-grouped split (seed 0), seeds 0-2:
#   1. SimCLR pretraining on all 3929 slices (labels and masks unused);
#   2. per seed: detection (tumour slice or not) by the fine-tune stage at 10 % and 100 % of the training
#      slices, both arms; then segmentation at 10 % and 100 % of the training patients' masks, both arms;
#   3. reports into results/lgg/: report.md (detection), segmentation.md, RUN.md (commands, SHA, machine, time).
# Many CPU hours on 2 cores. Resumable: re-run the same command, finished stages and runs are skipped.
#   nohup bash scripts/lgg_results.sh > lgg.log 2>&1 &
# Like scripts/folds_results.sh, the study spans sessions and maybe fresh machines: after each stage the
# reports are re-made and the records copied to $OUT (paths and patient ids keyed, never checkpoints):
# commit them. A fresh machine re-runs the pretraining (deterministic on one CPU class: same encoder
# SHA-256), and every run whose committed records match is restored (--restore-from), not re-run.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
DATA="${DATA:-$ROOT/../shared/data/lgg_flair_256}"
RUNS="${RUNS:-$HOME/simclr_ad_runs/lgg}"
OUT="${OUT:-$ROOT/results/lgg}"
SEEDS="${SEEDS:-0 1 2}"
CONFIG="${CONFIG:-configs/lgg.yaml}"
mkdir -p "$RUNS" "$OUT"
LOG="$RUNS/stages.tsv"
HISTORY="$OUT/stages.tsv"
touch "$HISTORY"
source "$ROOT/scripts/stages.sh"
report() {
  if [ -d "$RUNS/detect" ]; then
    python -m simclr_ad.report --runs "$RUNS/detect" --pretrain "$RUNS/pretrain" --out "$OUT" --copy-runs \
      --redact-paths --no-gradcam --stages "$HISTORY"
  fi
  if [ -d "$RUNS/segment" ]; then
    # The overlay grids show real patients' slices, which are part of the data and are never committed:
    # they go to the local runs dir; the committed report has none.
    python -m simclr_ad.segreport --runs "$RUNS/segment" --detection "$RUNS/detect" --out "$RUNS/seg_report"
    python -m simclr_ad.segreport --runs "$RUNS/segment" --detection "$RUNS/detect" --out "$OUT" --copy-runs \
      --overlays 0
  fi
}
# when a stage fails too (on success the last stage's report is the final one)
trap 'if [ $? -ne 0 ]; then report || echo "the report failed: $OUT may lack the last runs"; fi' EXIT

stage split python -m simclr_ad.data split --data-dir "$DATA" --group-by subject --seed 0 --out "$RUNS/splits.json"
stage pretrain python -m simclr_ad.pretrain --config "$CONFIG" --data-dir "$DATA" --splits "$RUNS/splits.json" \
  --pretrain-on all --no-progress --out "$RUNS/pretrain"
for seed in $SEEDS; do  # seed by seed: each finished seed is a complete comparison to commit
  stage "detect-seed$seed" python -m simclr_ad.finetune --config "$CONFIG" --data-dir "$DATA" \
    --splits "$RUNS/splits.json" --sweep --inits simclr random --fractions 0.1 1.0 --seeds "$seed" \
    --encoder "$RUNS/pretrain/encoder.pt" --no-progress --out "$RUNS/detect" --restore-from "$OUT/runs"
  # what the detector must beat, on the same split and patients: majority, raw-pixel kNN and logistic
  # regression, kNN on frozen random-init and SimCLR features (run from seed 0 on, since 2026-12-02)
  stage "baselines-seed$seed" python -m simclr_ad.baselines --config "$CONFIG" --data-dir "$DATA" \
    --splits "$RUNS/splits.json" --fractions 0.1 1.0 --seeds "$seed" --encoder "$RUNS/pretrain/encoder.pt" \
    --no-progress --out "$RUNS/detect"
  report || echo "report after detection seed $seed failed; the study goes on"
  stage "segment-seed$seed" python -m simclr_ad.segment --config "$CONFIG" --data-dir "$DATA" \
    --splits "$RUNS/splits.json" --sweep --inits simclr random --fractions 0.1 1.0 --seeds "$seed" \
    --encoder "$RUNS/pretrain/encoder.pt" --no-progress --out "$RUNS/segment" --restore-from "$OUT/seg_runs"
  report || echo "report after segmentation seed $seed failed; the study goes on"
done
echo "results: $OUT/report.md (detection), $OUT/segmentation.md, $OUT/RUN.md"
