"""Probe: does a higher-resolution Grad-CAM layer localise the phantoms' atrophy better?

    python scripts/probes/cam_layer.py FINETUNE_SWEEP_DIR     (e.g. demo_runs/finetune)

For each complete fine-tune run at 50 % and 100 % labels: on up to 400 of its test slices,
Grad-CAM of the predicted class at layer2, layer3 (the toolkit's choice) and layer4 of the
ResNet, and the localisation score (CAM mass inside the atrophy mask) beside its chance level
(the mask's area), as the report computes them. Prints one line per run.
"""
import csv
import sys
from unittest import mock

import torch

from simclr_ad import augment, camstudy, gradcam, models, predict, runs

found = runs.find_runs([sys.argv[1]])
cache = {}
for run in [r for r in found if r.complete and r.mode == "finetune" and r.label_frac in (0.5, 1.0)]:
    model, info = predict.load_classifier(run.path / "best.pt")
    with open(run.path / "predictions.csv", newline="") as handle:
        paths = [row["path"] for row in csv.DictReader(handle)][:400]
    dataset = camstudy._dataset(run, cache)
    index = torch.from_numpy(dataset.indices_of(paths))
    inputs = augment.prepare(dataset.images[index], info["image_size"])
    masks = torch.from_numpy(camstudy._resized_masks(dataset.masks[index], info["image_size"]))
    predicted = predict.class_probabilities(model, inputs).argmax(1)
    line = [run.init, f"labels {run.label_frac:g}"]
    for name in ("layer2", "layer3", "layer4"):
        with mock.patch.object(models, "target_layer", lambda backbone, arch, n=name: getattr(backbone, n)):
            cams = gradcam.compute_cams(model, info["arch"], inputs, predicted)
        score = camstudy._localisation(cams, masks)
        line.append(f"{name} {score['localisation']:.3f} (chance {score['localisation_chance']:.3f}, "
                    f"{score['n_masks']} masks)")
    print("  ".join(line), flush=True)
