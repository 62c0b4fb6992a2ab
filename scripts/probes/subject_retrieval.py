"""Probe: what do frozen features encode, the subject or the diagnosis? (README, "Networks that learn")

    python scripts/probes/subject_retrieval.py DATA_DIR SPLITS.json ENCODER.pt OUT.json [IMAGE_SIZE]

On the validation split (held-out subjects): for pixel thumbnails, the seeded random-init
ResNet18 and the SimCLR encoder, the share of images whose nearest other validation image is
a slice of the same (inferred) subject, and the balanced accuracy of a 20-NN diagnosis from
the training split. Features that retrieve the subject but not the diagnosis learned identity.
"""
import json
import sys

import numpy as np

from simclr_ad import baselines, data, evaluate, splits
from simclr_ad.config import FinetuneConfig

data_dir, split_file, encoder, out = sys.argv[1:5]
size = int(sys.argv[5]) if len(sys.argv) > 5 else 64
cfg = FinetuneConfig(data_dir=data_dir, splits=split_file, encoder=encoder, arch="resnet18", image_size=size,
                     progress=False)
images = data.load_dataset(cfg)
split = splits.splits_for(cfg, images)
train, val = images.indices_of(split["train"]), images.indices_of(split["val"])
groups = np.array([str(split["groups"][p]) for p in (images.paths[i] for i in val)])
features = {"pixels": splits.thumbnail_features(images),
            "random-init": baselines.frozen_features(images.images, cfg, "random", 0),
            "simclr": baselines.frozen_features(images.images, cfg, "simclr", 0)}
result = {"data": data_dir, "splits": split_file, "encoder": encoder, "image_size": size, "n_val": int(len(val)),
          "n_val_subjects": int(len(set(groups)))}
for name, feats in features.items():
    query = feats[val]
    similarity = query @ query.T
    np.fill_diagonal(similarity, -np.inf)
    same = float(np.mean(groups[similarity.argmax(1)] == groups))
    predict = baselines.knn(20)(feats[train], images.labels[train], query, images.labels[val], len(images.classes))
    diagnosis = evaluate.classification_metrics(images.labels[val], predict(query).argmax(1), images.classes)
    result[name] = {"nearest_is_same_subject": round(same, 4),
                    "knn20_balanced_accuracy": round(diagnosis["balanced_accuracy"], 4)}
    print(name, result[name], flush=True)
with open(out, "w") as f:
    json.dump(result, f, indent=1)
