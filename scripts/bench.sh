#!/usr/bin/env bash
# The benchmark figures in results/bench/<host class>/: ours vs the lightly/torchvision reference loops,
# one process each. A host writes only its own class's folder (runtime.host_class: amx, avx512_bf16,
# avx2, other); results/bench/README.md then holds one block per class measured, never mixing them.
# Rows: SimCLR ResNet18@64 at batch 128 (configs/cpu.yaml), ResNet18@128 and ResNet50@128 at batch 64
# (the study's configurations), each with SGD, full SAM and LookSAM (--sam-every 5); the fine-tuning
# step at batch 64 (configs/cpu.yaml's) for ResNet18@64 and ResNet50@128. Run it on a quiet machine.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
CLASS="$(python -m simclr_ad.bench --host-class)"
OUT="results/bench/$CLASS"
mkdir -p "$OUT"
bench() { python -m simclr_ad.bench "$@"; }
R50="--arch resnet50 --image-size 128 --batch-size 64 --warmup 1"
R18_128="--arch resnet18 --image-size 128 --batch-size 64 --warmup 1"

# SimCLR. --steps counts timed units: one step, or with --sam-every K one K-step cycle. --profile
# keeps the convolutions' profile in the JSON (conv_profile), for the fp32 MFU question.
bench --quick --batch-size 128 --optimizer sgd --profile --json "$OUT/resnet18_64_sgd.json"
bench --quick --batch-size 128 --optimizer sam --json "$OUT/resnet18_64_sam.json"
bench --arch resnet18 --image-size 64 --batch-size 128 --warmup 1 --steps 4 --optimizer sam --sam-every 5 \
  --json "$OUT/resnet18_64_looksam5.json"
bench $R18_128 --steps 6 --optimizer sgd --profile --json "$OUT/resnet18_128_sgd.json"
bench $R18_128 --steps 6 --optimizer sam --json "$OUT/resnet18_128_sam.json"
bench $R18_128 --steps 4 --optimizer sam --sam-every 5 --json "$OUT/resnet18_128_looksam5.json"
bench $R50 --steps 4 --optimizer sgd --json "$OUT/resnet50_128_sgd.json"
bench $R50 --steps 4 --optimizer sam --json "$OUT/resnet50_128_sam.json"
bench $R50 --steps 2 --optimizer sam --sam-every 5 --json "$OUT/resnet50_128_looksam5.json"

# Fine-tuning step: ImageFolder + torchvision transforms + DataLoader reference, the same fused AdamW.
bench --stage finetune --arch resnet18 --image-size 64 --batch-size 64 --warmup 1 --steps 6 \
  --json "$OUT/finetune_resnet18_64.json"
bench --stage finetune $R50 --steps 4 --json "$OUT/finetune_resnet50_128.json"

python -m simclr_ad.bench --summarize "$OUT"
python -m simclr_ad.bench --summarize results/bench
