#!/usr/bin/env bash
# Set up .venv (first run only), then the main job end to end on the embedded synthetic
# phantom dataset: SimCLR pretrain -> fine-tune at 5 label fractions for both arms -> report.
# 4.3 min on 2 avx512_bf16 cores (AMD EPYC; results/demo/RUN.md); with the earlier 200 x 6 phantoms 8.3 min on amx.
# Re-running resumes and skips finished work.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
OUT="${1:-demo_runs}"
CONFIG=configs/demo.yaml
mkdir -p "$OUT"
# `step NAME CMD...` runs CMD and prints how long it took, so a slow machine shows where the time goes.
step() { local name=$1 start=$SECONDS; shift; "$@"; echo "[demo] $name: $(( SECONDS - start )) s"; }

# Every stage computes the same subject-grouped split from the data and split seed;
# the sweep also writes it to $OUT/finetune/splits.json.
step phantoms python -m simclr_ad.data synth --preview "$OUT/phantoms.png"
# The volume path in seconds: phantom subjects as NIfTI volumes, and which slices of one are kept.
step volumes python -m simclr_ad.data synth --format nifti --n 192 --size 32 --out "$OUT/volumes"
step inspect python -m simclr_ad.data inspect --data-dir "$OUT/volumes" --preview "$OUT/volume_slices.png"
step pretrain python -m simclr_ad.pretrain --config "$CONFIG" --out "$OUT/pretrain"
step finetune python -m simclr_ad.finetune --config "$CONFIG" --sweep \
  --encoder "$OUT/pretrain/encoder.pt" --inits simclr random --fractions 0.01 0.1 0.2 0.5 1.0 --seeds 0 \
  --out "$OUT/finetune"
# What the networks must beat: majority class, raw-pixel kNN and logistic regression, kNN on frozen
# random-init and SimCLR features, on the same split and label subsets.
step baselines python -m simclr_ad.baselines --config "$CONFIG" --encoder "$OUT/pretrain/encoder.pt" \
  --fractions 0.01 0.1 0.2 0.5 1.0 --seeds 0 --out "$OUT/finetune"
step report python -m simclr_ad.report --runs "$OUT/finetune" --pretrain "$OUT/pretrain" --out "$OUT/report"

echo
echo "Outputs:"
echo "  pretraining run : $OUT/pretrain   (encoder.pt, metrics.jsonl, tb/)"
echo "  fine-tune runs  : $OUT/finetune/<init>-<mode>/frac<F>/seed<S>/metrics.json"
echo "  baselines       : $OUT/finetune/<name>-reference/frac<F>/seed<S>/metrics.json"
echo "  report          : $OUT/report/report.md  (and report.html, summary.csv, figures)"
echo "  phantom examples: $OUT/phantoms.png"
echo "  phantom volumes : $OUT/volumes  (slices kept: $OUT/volume_slices.png)"
echo "  TensorBoard     : tensorboard --logdir $OUT"
