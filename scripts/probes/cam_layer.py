"""Probe: which Grad-CAM layer localises the phantoms' atrophy best, judged on validation slices?

    python scripts/probes/cam_layer.py FINETUNE_SWEEP_DIR     (e.g. demo_runs/finetune)

For each complete fine-tune run at 50 % and 100 % labels: on up to 400 validation slices of the
sweep's split (SWEEP_DIR/splits.json; the test split stays out of the choice), Grad-CAM of the
predicted class at layer1 to layer4 of the ResNet, and the localisation score (CAM mass
inside the atrophy mask) beside its chance level (the mask's area), as the report computes them.
Prints one line per run, then the same score per true class (index order) at the run's own cam_layer,
and "point": the share of slices with a mask whose CAM peak falls inside it.
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch

from simclr_ad import augment, camstudy, gradcam, predict, runs

found = runs.find_runs([sys.argv[1]])
val_paths = json.loads((Path(sys.argv[1]) / "splits.json").read_text())["val"][:400]
cache = {}
for run in [r for r in found if r.complete and r.mode == "finetune" and r.label_frac in (0.5, 1.0)]:
    model, info = predict.load_classifier(run.path / "best.pt")
    dataset = camstudy._dataset(run, cache)
    index = torch.from_numpy(dataset.indices_of(val_paths))
    inputs = augment.prepare(dataset.images[index], info["image_size"])
    masks = torch.from_numpy(camstudy._resized_masks(dataset.masks[index], info["image_size"]))
    predicted = predict.class_probabilities(model, inputs).argmax(1)
    line = [run.init, f"labels {run.label_frac:g}"]
    for name in ("layer1", "layer2", "layer3", "layer4"):
        score = camstudy._localisation(gradcam.compute_cams(model, info["arch"], inputs, predicted, name), masks)
        ratio = score["localisation"] / score["localisation_chance"]
        line.append(f"{name} {score['localisation']:.3f} (chance {score['localisation_chance']:.3f}, "
                    f"{ratio:.1f}x, {score['n_masks']} masks)")
    print("  ".join(line), flush=True)
    cams = gradcam.compute_cams(model, info["arch"], inputs, predicted, info["cam_layer"])
    labels = dataset.labels[index.numpy()]
    line = [run.init, f"labels {run.label_frac:g}", f"{info['cam_layer']} per class"]
    for grade in np.unique(labels):
        score = camstudy._localisation(cams[labels == grade], masks[labels == grade])
        line.append(f"class {grade}: {score['localisation'] / score['localisation_chance']:.1f}x ({score['n_masks']} masks)")
    peaks = [m.reshape(-1)[c.argmax()] for c, m in zip(cams, masks) if m.any()]
    print("  ".join(line + [f"point {np.mean(peaks):.2f}"]), flush=True)
