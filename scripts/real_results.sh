#!/usr/bin/env bash
# The full CPU-scale protocol on the real Kaggle data (issue: real results), both protocols:
#   subject_split (--group-by auto, the honest one) and image_split (--group-by image, the literature's).
# Hours of CPU: run it with nohup; every stage resumes, so re-running continues where it stopped.
#   nohup bash scripts/real_results.sh > real_results.log 2>&1 &
# Runs (checkpoints included) live in $RUNS, outside the repo; results/alzheimer_cpu gets the
# reports, every run's metrics.json and config.yaml, and RUN.md (commands, SHA, machine, wall times).
# On a fresh machine the pretraining re-runs (it is deterministic) and every fine-tune whose records
# are committed under results/alzheimer_cpu/<protocol>/runs is restored from them, not re-run, when
# its settings and encoder SHA-256 match (--restore-from). The encoder only matches at the commit
# named in RUN.md: later numerics changes (README, "Reliability") give another one, and cells re-run.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
DATA="${DATA:-$ROOT/../shared/data/alzheimer_mri_128}"
RUNS="${RUNS:-$HOME/simclr_ad_runs/alzheimer_cpu}"
OUT="$ROOT/results/alzheimer_cpu"
CONFIG=configs/cpu.yaml
SEEDS="${SEEDS:-0 1 2}"
mkdir -p "$RUNS"
LOG="$RUNS/stages.tsv"

source "$ROOT/scripts/stages.sh"

for protocol in subject_split image_split; do
  group=$([ "$protocol" = subject_split ] && echo auto || echo image)
  mkdir -p "$RUNS/$protocol"
  mkdir -p "$OUT/$protocol"
  stage "split-$protocol" python -m simclr_ad.data split --data-dir "$DATA" --group-by "$group" --seed 0 \
    --out "$RUNS/$protocol/splits.json"
  stage "audit-$protocol" python -m simclr_ad.data audit --data-dir "$DATA" --splits "$RUNS/$protocol/splits.json" \
    --out "$OUT/$protocol/audit.json" --montage "$OUT/$protocol/audit_montage.png"
done

# One SimCLR run on all 6400 images (labels unused) serves both protocols; its kNN monitor uses the subject split.
stage pretrain python -m simclr_ad.pretrain --config "$CONFIG" --data-dir "$DATA" \
  --splits "$RUNS/subject_split/splits.json" --pretrain-on all --no-progress --out "$RUNS/pretrain"

# Seeds outermost, so a run cut short still has every protocol, arm and fraction for the first seeds.
for seed in $SEEDS; do
  for protocol in subject_split image_split; do
    common=(--config "$CONFIG" --data-dir "$DATA" --splits "$RUNS/$protocol/splits.json" --sweep
            --encoder "$RUNS/pretrain/encoder.pt" --seeds "$seed" --no-progress --out "$RUNS/$protocol/finetune"
            --restore-from "$OUT/$protocol/runs")
    stage "finetune-$protocol-seed$seed" python -m simclr_ad.finetune "${common[@]}" --inits simclr random \
      --fractions 0.01 0.1 0.2 0.5 1.0
    stage "linear-$protocol-seed$seed" python -m simclr_ad.finetune "${common[@]}" --inits simclr --modes linear \
      --fractions 0.1 1.0
  done
done

for protocol in subject_split image_split; do
  stage "report-$protocol" python -m simclr_ad.report --runs "$RUNS/$protocol/finetune" --out "$OUT/$protocol" \
    --copy-runs --stages "$LOG"
done
# Across protocols (the inflation table), the pretraining curve, and RUN.md from the stage log.
python -m simclr_ad.report --runs "$RUNS/subject_split/finetune" --runs "$RUNS/image_split/finetune" \
  --out "$OUT" --no-gradcam --pretrain "$RUNS/pretrain" --stages "$LOG"
