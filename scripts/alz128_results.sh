#!/usr/bin/env bash
# Issue 22: does SimCLR buy label efficiency on held-out patients, at the Kaggle set's native 128 px?
# ResNet18 at 128 px (configs/alzheimer_128.yaml), subject-grouped 5-fold cross-validation (`--group-by auto`:
# subjects inferred without labels), subject label budgets, seed 0 per fold:
#   1. three SimCLR pretrainings on all 6400 images (labels unused), 20 epochs, kNN monitor on fold 0's
#      validation subjects: base (the mission's SimCLR + SAM), masked (same-subject negatives masked,
#      issue 11's candidate) and micle (positives are other slices of the same subject, as MICLe);
#   2. the variant whose kNN monitor ends highest is picked ($OUT/variant.txt): a choice on fold 0's
#      validation labels only, never on a test score;
#   3. 4-class: per fold, fine-tune at 1 / 10 / 100 % of the training subjects, both arms (SimCLR init from
#      the picked variant, random init), then the reference baselines on the same subjects;
#   4. binary (non-demented vs demented): folds $BINARY_FOLDS at 10 / 100 %, both arms, baselines;
#   5. the other two variants, SimCLR arm only, fold 0 at 10 / 100 %: the ablation report;
#   6. the grouping's sensitivity (weakest links; fold 0 at 10 % with chain fragments as subjects);
#   7. an image-level split, fold 0 at 100 %, the literature's protocol, for comparison.
# Reports go to $OUT/{multiclass,binary,ablation}/ with RUN.md (commands, SHA, CPU class, wall time).
# About 12 CPU hours on 2 amx cores (results/alzheimer_128/RUN.md has the plan). Resumable: re-run the same
# command, finished stages and cells are skipped; it spans sessions:
#   nohup bash scripts/alz128_results.sh > alz128.log 2>&1 &
# As in scripts/folds_results.sh, after each stage the records (no checkpoints; test paths redacted) are
# copied to $OUT: commit them. On a fresh machine the picked variant's pretraining re-runs (the encoder,
# ~45 MB, is never committed); random-init cells whose committed records match are restored
# (--restore-from), SimCLR cells only where the encoder comes out the same (same CPU class). Once a variant
# is picked, only that one is pretrained again; the other variants' committed records stand in for theirs
# in the ablation report.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
DATA="${DATA:-$ROOT/../shared/data/alzheimer_mri_128}"
RUNS="${RUNS:-$HOME/simclr_ad_runs/alz128}"
OUT="${OUT:-$ROOT/results/alzheimer_128}"
CONFIG="${CONFIG:-configs/alzheimer_128.yaml}"
K="${K:-5}"
FOLDS="${FOLDS:-$(seq -s ' ' 0 $((K - 1)))}"
BINARY_FOLDS="${BINARY_FOLDS:-0 1 2}"
mkdir -p "$RUNS" "$OUT"
LOG="$RUNS/stages.tsv"
HISTORY="$OUT/stages.tsv"
touch "$HISTORY"
source "$ROOT/scripts/stages.sh"
declare -A VARIANT_FLAGS=([base]="" [masked]="--negatives other_subjects" [micle]="--positives subject")
VAR="$RUNS/variants"  # VAR/<variant>/{pretrain,finetune}: the layout of `report --ablation`
COMMON=(--config "$CONFIG" --data-dir "$DATA" --no-progress)

report() {  # report NAME: $RUNS/NAME -> $OUT/NAME
  [ -d "$RUNS/$1" ] || return 0
  cp "$RUNS/folds/folds.json" "$OUT/folds.json"  # which inferred subjects each fold tested (group ids, no data)
  python -m simclr_ad.report --runs "$RUNS/$1" --pretrain "$VAR/$(cat "$OUT/variant.txt")/pretrain" \
    --out "$OUT/$1" --copy-runs --redact-paths --no-gradcam --stages "$HISTORY"
}
ablation() {
  python -m simclr_ad.report --ablation "$VAR" --out "$OUT/ablation" --stages "$HISTORY"
}
trap 'if [ $? -ne 0 ]; then report multiclass; report binary; fi' EXIT  # a failed stage's finished cells too

stage split python -m simclr_ad.data split --config "$CONFIG" --data-dir "$DATA" --group-by auto --split-seed 0 --folds "$K" \
  --out "$RUNS/folds"
VARIANTS="base masked micle"
[ -s "$OUT/variant.txt" ] && VARIANTS=$(cat "$OUT/variant.txt")  # picked in an earlier sitting
for record in "$OUT"/ablation/*/pretrain; do  # committed variants this sitting does not pretrain
  variant=$(basename "$(dirname "$record")")
  if [[ " $VARIANTS " != *" $variant "* ]] && [ ! -e "$VAR/$variant/pretrain" ]; then
    mkdir -p "$VAR/$variant/pretrain" && cp "$record"/config.yaml "$record"/metrics.jsonl "$VAR/$variant/pretrain/"
  fi
done
for variant in $VARIANTS; do
  # shellcheck disable=SC2086  # the variant's flags are meant to split
  stage "pretrain-$variant" python -m simclr_ad.pretrain "${COMMON[@]}" --splits "$RUNS/folds/fold0.json" \
    --pretrain-on all ${VARIANT_FLAGS[$variant]} --out "$VAR/$variant/pretrain"
  ablation || echo "ablation report failed; the study goes on"
done
# The pick: the highest kNN monitor at the last epoch, on fold 0's validation subjects (who are test subjects
# of other folds: a weak, label-using choice among 3, said so in RUN.md). Made once.
[ -s "$OUT/variant.txt" ] || python - "$VAR" > "$OUT/variant.txt" <<'EOF'
import sys
from pathlib import Path
from simclr_ad.runlog import read_records
last = {v: [r["knn_balanced_accuracy"] for r in read_records(Path(sys.argv[1]) / v / "pretrain" / "metrics.jsonl")
            if "knn_balanced_accuracy" in r][-1] for v in ("base", "masked", "micle")}
print(max(last, key=last.get))
EOF
PICKED=$(cat "$OUT/variant.txt")
ENCODER="$VAR/$PICKED/pretrain/encoder.pt"
echo "picked pretraining variant: $PICKED"
# grid NAME "FOLDS" FLAGS...: per fold, the fine-tune sweep of both arms and the reference baselines
# (majority, raw-pixel kNN and logistic regression, kNN on frozen random-init and SimCLR features) on the
# same split and labelled subjects; then the report of every fold so far.
grid() {
  local name=$1 folds=$2 fold; shift 2
  for fold in $folds; do  # RUNS_FOLDS and LABEL_UNIT: another split's fold files and label unit
    local split=(--splits "${RUNS_FOLDS:-$RUNS/folds}/fold$fold.json" --label-unit "${LABEL_UNIT:-subject}" --seeds 0 "$@")
    stage "$name-fold$fold" python -m simclr_ad.finetune "${COMMON[@]}" "${split[@]}" --sweep \
      --inits simclr random --encoder "$ENCODER" --out "$RUNS/$name/fold$fold" --restore-from "$OUT/$name/runs/fold$fold"
    stage "$name-baselines-fold$fold" python -m simclr_ad.baselines "${COMMON[@]}" "${split[@]}" \
      --encoder "$ENCODER" --out "$RUNS/$name/fold$fold"
    report "$name" || echo "report after $name fold $fold failed; the study goes on"
  done
}
grid multiclass "$FOLDS" --fractions 0.01 0.1 1.0
grid binary "$BINARY_FOLDS" --task binary --fractions 0.1 1.0
for variant in base masked micle; do
  [ "$variant" = "$PICKED" ] && continue
  if [ ! -f "$VAR/$variant/pretrain/encoder.pt" ]; then  # its encoder was lost with a machine: cut, RUN.md
    echo "ablation-finetune-$variant skipped: no encoder"; continue
  fi
  stage "ablation-finetune-$variant" python -m simclr_ad.finetune "${COMMON[@]}" --splits "$RUNS/folds/fold0.json" \
    --label-unit subject --sweep --inits simclr --fractions 0.1 1.0 --seeds 0 \
    --encoder "$VAR/$variant/pretrain/encoder.pt" --out "$VAR/$variant/finetune"
done
# the picked variant's and random init's fold-0 cells at 10 / 100 % are the multiclass ones: link them in
ln -sfn "$RUNS/multiclass/fold0/simclr-finetune" "$VAR/$PICKED/finetune"
mkdir -p "$VAR/random-init" && ln -sfn "$RUNS/multiclass/fold0/random-finetune" "$VAR/random-init/finetune"
ablation
# 6. The grouping's sensitivity: how weak the weakest link inside each inferred subject is (audit, no image
# paths), then the same folds with each chain fragment the auto grouping attached recorded as its own
# subject (data split --keep-fragments): fold 0 at 10 %, both arms, against the stitched fold 0's cells.
python -m simclr_ad.data audit --config "$CONFIG" --data-dir "$DATA" --splits "$RUNS/folds/fold0.json" --max-examples 0 \
  --out "$OUT/audit_fold0.json" || echo "audit failed; the study goes on"
stage split-fragments python -m simclr_ad.data split --config "$CONFIG" --data-dir "$DATA" --group-by auto --split-seed 0 \
  --folds "$K" --keep-fragments --out "$RUNS/folds_fragments"
RUNS_FOLDS="$RUNS/folds_fragments" grid fragments 0 --fractions 0.1
# 7. The literature's leaky protocol, one column at the same scale: an image-level split (slices of one
# brain on both sides), fold 0 of 5, at 100 % of the training slices, both arms and baselines.
stage split-image python -m simclr_ad.data split --config "$CONFIG" --data-dir "$DATA" --group-by image --split-seed 0 \
  --folds "$K" --out "$RUNS/folds_image"
RUNS_FOLDS="$RUNS/folds_image" LABEL_UNIT=slice grid image 0 --fractions 1.0
echo "results: $OUT/{multiclass,binary,fragments,image}/report.md, $OUT/ablation/ablation.md, RUN.md in each"
