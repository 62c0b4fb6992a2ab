#!/usr/bin/env bash
# The benchmark figures in results/bench/: ours vs the lightly-example reference loop, one process each.
# ResNet18@64 at batch 128, as configs/cpu.yaml trains; ResNet50@128 at batch 64, as the issue asks.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
OUT=results/bench
mkdir -p "$OUT"
python -m simclr_ad.bench --quick --batch-size 128 --optimizer sam --json "$OUT/resnet18_64_sam.json"
python -m simclr_ad.bench --quick --batch-size 128 --optimizer sgd --json "$OUT/resnet18_64_sgd.json"
python -m simclr_ad.bench --arch resnet50 --image-size 128 --batch-size 64 --steps 4 --warmup 1 --optimizer sam \
  --json "$OUT/resnet50_128_sam.json"
python -m simclr_ad.bench --arch resnet50 --image-size 128 --batch-size 64 --steps 4 --warmup 1 --optimizer sgd \
  --json "$OUT/resnet50_128_sgd.json"
python -m simclr_ad.bench --summarize "$OUT"
