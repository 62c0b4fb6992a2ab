#!/usr/bin/env bash
# Issue 20: label budgets in subjects, grouped 5-fold cross-validation, clinical metrics.
# The binary task (demented vs non-demented) on the real Kaggle data, ResNet18 at 64 px with the recipe of
# configs/cpu.yaml (issue 11's: AdamW 1e-3, wd 0.05, cosine, balanced class weights, flips only, 20 epochs):
#   1. `data split --folds 5 --group-by auto`: 5 subject-grouped, class-stratified folds, each subject tested once;
#   2. SimCLR pretraining once, on all images (labels unused), with fold 0's split for the kNN monitor;
#   3. per fold: fine-tune sweep at 1 / 10 / 100 % of the training subjects (--label-unit subject), both arms,
#      seed 0, on that fold's split; then the reference baselines on the same split and subjects;
#   4. the report pooled over the folds into results/alzheimer_folds/: report.md (headline: the paired
#      difference SimCLR - random with its CI over test subjects; AUROC, sensitivity, specificity, ECE,
#      reliability diagrams), summary.csv, subjects.csv, runs/ (records and predictions) and RUN.md.
# Many CPU hours on 2 cores. Resumable: re-run the same command, finished stages and cells are skipped.
# FOLDS="0 1" runs a subset of the folds (the report pools what exists and names the folds missing).
#   nohup bash scripts/folds_results.sh > folds.log 2>&1 &
# The study spans sessions, and a session may get a fresh machine: $RUNS (checkpoints) is then gone.
# So after each fold the report is re-made and its records copied to $OUT/runs with --redact-paths
# (test predictions keyed by a hash of the path, no file names): commit them. On a fresh machine the
# pretraining re-runs (deterministic: same code and CPU class, same encoder SHA-256) and every cell
# whose committed records match is restored (--restore-from), not re-run. $OUT/stages.tsv ($HISTORY)
# keeps every sitting of every machine for RUN.md.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
DATA="${DATA:-$ROOT/../shared/data/alzheimer_mri_128}"
RUNS="${RUNS:-$HOME/simclr_ad_runs/folds}"
OUT="${OUT:-$ROOT/results/alzheimer_folds}"
CONFIG="${CONFIG:-configs/cpu.yaml}"
K="${K:-5}"
FOLDS="${FOLDS:-$(seq -s ' ' 0 $((K - 1)))}"
SEEDS="${SEEDS:-0}"
FRACTIONS="${FRACTIONS:-0.01 0.1 1.0}"
mkdir -p "$RUNS" "$OUT"
LOG="$RUNS/stages.tsv"
HISTORY="$OUT/stages.tsv"
touch "$HISTORY"
source "$ROOT/scripts/stages.sh"
# shellcheck disable=SC2206  # the lists are meant to split
GRID=(--seeds $SEEDS --fractions $FRACTIONS)
report() {
  cp "$RUNS/folds/folds.json" "$OUT/folds.json"  # which subjects each fold tested (inferred group ids, no data)
  python -m simclr_ad.report --runs "$RUNS/finetune" --pretrain "$RUNS/pretrain" --out "$OUT" --copy-runs \
    --redact-paths --no-gradcam --stages "$HISTORY"
}
# when a stage fails too: the cells finished so far still reach $OUT/runs
trap 'if [ $? -ne 0 ]; then report || echo "the report failed: $OUT/runs may lack the last cells"; fi' EXIT

stage split python -m simclr_ad.data split --config "$CONFIG" --data-dir "$DATA" --group-by auto --split-seed 0 \
  --folds "$K" --out "$RUNS/folds"
stage pretrain python -m simclr_ad.pretrain --config "$CONFIG" --data-dir "$DATA" --splits "$RUNS/folds/fold0.json" \
  --pretrain-on all --no-progress --out "$RUNS/pretrain"
for fold in $FOLDS; do
  stage "finetune-fold$fold" python -m simclr_ad.finetune --config "$CONFIG" --data-dir "$DATA" \
    --splits "$RUNS/folds/fold$fold.json" --sweep --task binary --label-unit subject --inits simclr random \
    "${GRID[@]}" --encoder "$RUNS/pretrain/encoder.pt" --no-progress --out "$RUNS/finetune/fold$fold" \
    --restore-from "$OUT/runs/fold$fold"
  # what the networks must beat, on the same fold and labelled subjects: majority, raw-pixel kNN and
  # logistic regression, kNN on frozen random-init and SimCLR features (minutes, not hours)
  stage "baselines-fold$fold" python -m simclr_ad.baselines --config "$CONFIG" --data-dir "$DATA" \
    --splits "$RUNS/folds/fold$fold.json" --task binary --label-unit subject "${GRID[@]}" \
    --encoder "$RUNS/pretrain/encoder.pt" --no-progress --out "$RUNS/finetune/fold$fold"
  report || echo "report after fold $fold failed; the study goes on"  # the folds so far: commit their records
done
echo "results: $OUT/report.md, $OUT/subjects.csv, $OUT/RUN.md"
