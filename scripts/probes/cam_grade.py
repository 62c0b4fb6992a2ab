"""Probe: Grad-CAM localisation per true class, on validation slices of a fine-tune sweep.

    python scripts/probes/cam_grade.py FINETUNE_SWEEP_DIR [LAYER]     (LAYER default layer2)

For each complete fine-tune run at 100 % labels: on up to 400 validation slices (SWEEP_DIR/splits.json;
the test split stays out), Grad-CAM of the predicted class at LAYER and, per true class index,
localisation (CAM mass inside the atrophy mask) over chance (the mask's area) and the slice count;
then "point": the share of slices whose CAM peak falls inside the mask. CAMs with no mass are skipped.
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch

from simclr_ad import augment, camstudy, gradcam, predict, runs

sweep, layer = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "layer2"
val_paths = json.loads((Path(sweep) / "splits.json").read_text())["val"][:400]
cache = {}
for run in [r for r in runs.find_runs([sweep]) if r.complete and r.mode == "finetune" and r.label_frac == 1.0]:
    model, info = predict.load_classifier(run.path / "best.pt")
    dataset = camstudy._dataset(run, cache)
    index = dataset.indices_of(val_paths)
    inputs = augment.prepare(dataset.images[torch.from_numpy(index)], info["image_size"])
    masks = camstudy._resized_masks(dataset.masks[torch.from_numpy(index)], info["image_size"])
    labels = np.asarray(dataset.labels)[index]
    cams = gradcam.compute_cams(model, info["arch"], inputs, predict.class_probabilities(model, inputs).argmax(1), layer)
    line = [run.init, layer]
    for grade in np.unique(labels):
        chosen = [i for i in np.flatnonzero(labels == grade) if masks[i].any()]
        loc = np.nanmean([gradcam.localisation_score(cams[i], masks[i]) for i in chosen])
        chance = np.mean([masks[i].mean() for i in chosen])
        line.append(f"g{grade}: {loc:.3f}/{chance:.3f}={loc / chance:.1f}x n{len(chosen)}")
    peaks = [masks[i].reshape(-1)[cams[i].argmax()] for i in range(len(labels)) if masks[i].any()]
    line.append(f"point {np.mean(peaks):.2f}")
    print("  ".join(line), flush=True)
