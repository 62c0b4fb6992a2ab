"""The Grad-CAM study of a report: a simclr and a random finetune run per label fraction, on the same test images.

The only part of the report that reloads data and checkpoints: each arm's best.pt, the run's
dataset rebuilt from its config.yaml, and the images predictions.csv names.
"""
from __future__ import annotations

import csv
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from simclr_ad import augment, config, data, gradcam, plots
from simclr_ad.predict import class_probabilities, load_classifier
from simclr_ad.runs import Run, sort_key

DATA_KEYS = ("data_dir", "synth_n", "synth_seed", "synth_slices", "synth_min_subjects", "image_size", "cache_dir")


@dataclass
class CamStudy:
    rows: list[dict[str, Any]] = field(default_factory=list)  # one per (frac, arm)
    figures: dict[str, bytes] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _pick_run(runs: Sequence[Run], protocol: str, init: str, frac: float) -> Run | None:
    """Seed 0 if present, else the lowest seed, of a complete finetune run with best.pt."""
    found = [r for r in runs if r.complete and r.protocol == protocol and r.init == init and r.mode == "finetune"
             and math.isclose(r.label_frac, frac) and (r.path / "best.pt").is_file()]
    return min(found, key=lambda r: (r.seed != 0, r.seed), default=None)


def _read_predictions(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _class_index(value: str, classes: Sequence[str]) -> int:
    if value in classes:
        return list(classes).index(value)
    if value.isdigit() and int(value) < len(classes):
        return int(value)
    raise ValueError(f"predictions.csv names class {value!r}, not one of {list(classes)}")


def select_images(predictions: Sequence[dict[str, str]], classes: Sequence[str], per_class: int,
                  allowed: set[str] | None = None) -> list[str]:
    """The first ``per_class`` test paths of each true class, in predictions.csv order."""
    chosen: dict[int, list[str]] = {i: [] for i in range(len(classes))}
    for row in predictions:
        label = _class_index(row["true"], classes)
        if len(chosen[label]) < per_class and (allowed is None or row["path"] in allowed):
            chosen[label].append(row["path"])
    return [p for i in range(len(classes)) for p in chosen[i]]


def _dataset(run: Run, cache: dict):
    """The run's dataset (ImageSet with images and masks), rebuilt from its config.yaml; cached."""
    key = tuple(str(run.config.get(k)) for k in DATA_KEYS)
    if key not in cache:
        cfg = config.replace(config.config_from_dict(config.FinetuneConfig, run.config), progress=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # unreadable files were already reported by finetune
            cache[key] = data.load_dataset(cfg)
    return cache[key]


def _resized_masks(masks: torch.Tensor, size: int) -> np.ndarray:
    """Masks [N,1,H,W] (the dataset's layout) or [N,H,W] as bool [N,size,size] (nearest), as the CAMs are."""
    flat = masks.reshape(len(masks), 1, *masks.shape[-2:]).float()
    resized = torch.nn.functional.interpolate(flat, size=(size, size), mode="nearest")
    return resized[:, 0].numpy() > 0.5


def _localisation(cams: np.ndarray, masks: torch.Tensor) -> dict[str, float]:
    """Mean localisation score over images with a non-empty mask, the chance level, and their count."""
    scores = [gradcam.localisation_score(c, m) for c, m in zip(cams, masks)]
    valid = [i for i, score in enumerate(scores) if not math.isnan(score)]
    if not valid:
        return {"localisation": float("nan"), "localisation_chance": float("nan"), "n_masks": 0}
    return {"localisation": float(np.mean([scores[i] for i in valid])),
            "localisation_chance": float(np.mean([float(masks[i].float().mean()) for i in valid])),
            "n_masks": len(valid)}


def _cam_one_fraction(runs: Sequence[Run], protocol: str, frac: float, per_class: int, scored_per_class: int,
                      cache: dict, study: CamStudy) -> None:
    arms = {init: _pick_run(runs, protocol, init, frac) for init in ("simclr", "random")}
    if any(tuple(str(arms[a].config.get(k)) for k in DATA_KEYS) !=
           tuple(str(arms["simclr"].config.get(k)) for k in DATA_KEYS) for a in arms):
        raise ValueError("the simclr and random runs used different data settings; no common images")
    models = {init: load_classifier(run.path / "best.pt") for init, run in arms.items()}
    classes, size = models["simclr"][1]["classes"], models["simclr"][1]["image_size"]
    if models["random"][1]["classes"] != classes:
        raise ValueError("the simclr and random runs have different classes")
    allowed = {row["path"] for row in _read_predictions(arms["random"].path / "predictions.csv")}
    predictions = _read_predictions(arms["simclr"].path / "predictions.csv")
    shown = select_images(predictions, classes, per_class, allowed)
    if not shown:
        raise ValueError("the two runs share no test image")
    dataset = _dataset(arms["simclr"], cache)
    # with masks, localisation is scored on more images than the grid shows (the grid's are among them)
    paths = shown if dataset.masks is None else select_images(predictions, classes, max(per_class, scored_per_class),
                                                              allowed)
    grid = np.array([paths.index(p) for p in shown])
    truth = {row["path"]: _class_index(row["true"], classes) for row in predictions}
    true = np.array([truth[p] for p in paths])
    index = torch.from_numpy(dataset.indices_of(paths))
    inputs = augment.prepare(dataset.images[index], size)
    masks = dataset.masks[index] if dataset.masks is not None else None
    cams, preds = {}, {}
    for init, (model, info) in models.items():
        arm = plots.arm_label(init, "finetune")
        preds[arm] = class_probabilities(model, inputs).argmax(axis=1)
        cams[arm] = gradcam.compute_cams(model, info["arch"], inputs, preds[arm], info["cam_layer"])
        row = {"label_frac": frac, "protocol": protocol, "arm": arm, "seed": arms[init].seed,
               "cam_layer": info["cam_layer"], "n_images": len(shown),
               **gradcam.faithfulness(model, inputs[grid], preds[arm][grid], cams[arm][grid])}
        study.rows.append({**row, **(_localisation(cams[arm], masks) if masks is not None else {})})
    title = f"Grad-CAM at {plots.percent_labels(frac)} labels ({protocol}; seeds {arms['simclr'].seed}/{arms['random'].seed})"
    study.figures[f"gradcam_{frac:g}.png"] = plots.png_bytes(
        plots.gradcam_grid_figure(gradcam.display_image(inputs[grid]), {a: c[grid] for a, c in cams.items()}, true[grid],
                                  {a: p[grid] for a, p in preds.items()}, classes, title,
                                  masks=None if masks is None else _resized_masks(masks[grid], size)))


def gradcam_study(runs: Sequence[Run], per_class: int, scored_per_class: int = 32) -> CamStudy:
    """Grad-CAM of a simclr and a random finetune run per label fraction on the same test images:
    ``per_class`` per true class in the grid and the faithfulness scores, ``scored_per_class`` in the
    localisation score (masked data only).

    Never raises: a failure (data dir gone, bad checkpoint, ...) becomes a note.
    """
    study, cache = CamStudy(), {}
    complete = [r for r in runs if r.complete and r.mode == "finetune"]
    for frac in sorted({r.label_frac for r in complete}):
        protocols = sorted({r.protocol for r in complete if math.isclose(r.label_frac, frac)},
                           key=lambda p: sort_key(p, "", ""))
        protocol = next((p for p in protocols if all(_pick_run(complete, p, i, frac) for i in ("simclr", "random"))),
                        None)
        if protocol is None:
            continue
        try:
            _cam_one_fraction(complete, protocol, frac, per_class, scored_per_class, cache, study)
        except Exception as err:  # noqa: BLE001 -- the report must survive any Grad-CAM failure
            study.notes.append(f"Grad-CAM at {plots.percent_labels(frac)} labels failed: {type(err).__name__}: "
                               f"{str(err)[:300]}")
    if not study.rows and not study.notes:
        study.notes.append("no label fraction has both a simclr and a random finetune run with best.pt")
    return study
