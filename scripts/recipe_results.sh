#!/usr/bin/env bash
# Issue "networks that learn": why fine-tuning fit so slowly, and the recipe of configs/cpu.yaml.
# ResNet18 at 64 px, random init, 100 % labels, on the real Kaggle data, both protocols.
#   1. probe: 3-epoch runs on the image split, one suspect changed at a time from the old recipe
#      ("base": configs/cpu.yaml before this issue: AdamW 1e-4, wd 1e-8, dropout 0.5, ReduceLROnPlateau, crop 0.8 +
#      rotation + intensity jitter); compared by training loss and validation balanced accuracy;
#   2. the new recipe (configs/cpu.yaml), test split evaluated once per run, on the image split (the
#      proof that the trainer can fit: target >= 95 % balanced accuracy) and the subject split;
#   3. the reference baselines on the same splits and label subsets;
#   4. SimCLR with same-subject negatives masked (label-free inferred subjects): does its kNN monitor beat the
#      same monitor at initialisation (epoch 0 of the same run), on the validation split?
#   nohup bash scripts/recipe_results.sh > recipe.log 2>&1 &     (resumable: finished stages are skipped)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
DATA="${DATA:-$ROOT/../shared/data/alzheimer_mri_128}"
RUNS="${RUNS:-$HOME/simclr_ad_runs/recipe}"
OUT="$ROOT/results/alzheimer_recipe"
mkdir -p "$RUNS" "$OUT"
LOG="$RUNS/stages.tsv"
source "$ROOT/scripts/stages.sh"

for protocol in subject_split image_split; do
  group=$([ "$protocol" = subject_split ] && echo auto || echo image)
  mkdir -p "$RUNS/$protocol"
  stage "split-$protocol" python -m simclr_ad.data split --data-dir "$DATA" --group-by "$group" --seed 0 \
    --out "$RUNS/$protocol/splits.json"
done

OLD=(--lr 1e-4 --weight-decay 1e-8 --dropout 0.5 --lr-schedule plateau --plateau-patience 2 --label-smoothing 0 --warmup-epochs 0
     --aug-crop-scale-min 0.8 --aug-rotate-deg 5 --aug-translate 0.02 --aug-brightness 0.1 --aug-contrast 0.1
     --aug-gamma 0.1)
declare -A PROBES=(
  [base]=""
  [lr1e-3]="--lr 1e-3"
  [dropout0]="--dropout 0"
  [flip_only]="--aug-crop-scale-min 1 --aug-rotate-deg 0 --aug-translate 0 --aug-brightness 0 --aug-contrast 0 --aug-gamma 0"
  [new]="NEW"
)
for name in base lr1e-3 dropout0 flip_only new; do
  flags=("${OLD[@]}")
  # shellcheck disable=SC2206  # the probe's flags are meant to split
  [ "${PROBES[$name]}" = NEW ] && flags=() || flags+=(${PROBES[$name]})
  stage "probe-$name" python -m simclr_ad.finetune --config configs/cpu.yaml --data-dir "$DATA" \
    --splits "$RUNS/image_split/splits.json" --init random --label-frac 1.0 "${flags[@]}" \
    --epochs 3 --early-stop-patience 0 --no-progress --out "$RUNS/probe/$name/finetune/random-finetune"
done

# Recipe v1 (configs/cpu.yaml at e6beb89: 15 epochs, no class weights) ran as stage recipe-image_split into
# $RUNS/image_split/finetune; its report is results/alzheimer_recipe/image_split_v1. v2 is today's cpu.yaml.
for protocol in image_split subject_split; do
  stage "recipe-v2-$protocol" python -m simclr_ad.finetune --config configs/cpu.yaml --data-dir "$DATA" \
    --splits "$RUNS/$protocol/splits.json" --sweep --inits random --fractions 1.0 --seeds 0 --no-progress \
    --out "$RUNS/$protocol/finetune-v2"
  stage "baselines-v2-$protocol" python -m simclr_ad.baselines --config configs/cpu.yaml --data-dir "$DATA" \
    --splits "$RUNS/$protocol/splits.json" --fractions 1.0 --seeds 0 --no-progress --out "$RUNS/$protocol/finetune-v2"
  python -m simclr_ad.report --runs "$RUNS/$protocol/finetune-v2" --out "$OUT/$protocol" --copy-runs --no-gradcam
done
stage pretrain-masked python -m simclr_ad.pretrain --config configs/cpu.yaml --data-dir "$DATA" \
  --splits "$RUNS/subject_split/splits.json" --pretrain-on all --negatives other_subjects --optimizer sgd \
  --epochs 5 --warmup-epochs 1 --knn-every 1 --no-progress --out "$RUNS/pretrain-masked"
python -m simclr_ad.report --pretrain "$RUNS/pretrain-masked" --out "$OUT/pretrain-masked"
python -m simclr_ad.report --runs "$RUNS/image_split/finetune-v2" --runs "$RUNS/subject_split/finetune-v2" --out "$OUT" \
  --no-gradcam --stages "$LOG"
python -m simclr_ad.report --ablation "$RUNS/probe" --out "$OUT/probe"
