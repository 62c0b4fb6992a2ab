"""Reference baselines: what a network must beat before its number means anything.

    python -m simclr_ad.baselines --config configs/cpu.yaml --splits SPLITS --fractions 0.01 0.1 1.0 --seeds 0 \
        [--encoder PRETRAIN/encoder.pt] --out SWEEP_DIR

On the same split file and the same nested label subsets as the fine-tunes, for every
fraction and seed, with scikit-learn:

- ``majority``: the most frequent class of the labelled subset;
- ``pixel-1nn``, ``pixel-20nn``: k-nearest neighbours by cosine on mean-centred 32x32 thumbnails
  (the features the split's near-duplicate search uses);
- ``pixel-logreg``: logistic regression on the same thumbnails, C chosen on validation;
- ``random-knn``: 20-NN (cosine) on the frozen features of the seeded random-init backbone
  (the same initialisation as the random arm);
- ``simclr-knn``, ``simclr-logreg``: 20-NN and a linear probe on frozen SimCLR features (with --encoder).

Each lands in the sweep's layout (``SWEEP_DIR/<name>-reference/frac<F>/seed<S>/`` with
config.yaml, metrics.json and predictions.csv), so the report and summary.csv treat it as
an arm. Where a choice is made (C of the logistic regressions), it is made on validation
balanced accuracy; the test split is scored once.
"""
from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.neighbors import KNeighborsClassifier
from sklearn.preprocessing import StandardScaler

from simclr_ad import data, evaluate, fileio, grouping, rundir, runtime, splits
from simclr_ad.config import FinetuneConfig, config_to_dict, parse_config, replace
from simclr_ad.errors import UserError, friendly_errors
from simclr_ad.finetune import run_facts, split_predictions, task_labels, test_metrics, write_predictions
from simclr_ad.models import build_backbone, init_backbone
from simclr_ad.runlog import write_json

MODE = "reference"
LOGREG_C = (0.01, 0.1, 1.0)  # inverse regularisation strengths tried, chosen on validation

# a fitted model maps (train features, train labels, val features, val labels, n classes) to a
# function giving class probabilities [N, C] for any features
Fitter = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int], Callable[[np.ndarray], np.ndarray]]


def _full_proba(model, features: np.ndarray, n_classes: int) -> np.ndarray:
    """``predict_proba`` over all ``n_classes`` (a subset may lack some classes)."""
    out = np.zeros((len(features), n_classes))
    out[:, model.classes_] = model.predict_proba(features)
    return out


def majority(train_x, train_y, val_x, val_y, n_classes: int):
    """Always the most frequent class of the labelled subset (ties: the lowest index)."""
    share = np.bincount(train_y, minlength=n_classes) / len(train_y)
    top = np.eye(n_classes)[int(share.argmax())]
    return lambda x: np.tile(top, (len(x), 1))


def knn(k: int) -> Fitter:
    """k nearest neighbours by cosine, uniform vote; k shrinks to the subset's size."""
    def fit(train_x, train_y, val_x, val_y, n_classes: int):
        model = KNeighborsClassifier(n_neighbors=min(k, len(train_y)), metric="cosine", algorithm="brute")
        model.fit(train_x, train_y)
        return lambda x: _full_proba(model, x, n_classes)
    return fit


def logreg(train_x, train_y, val_x, val_y, n_classes: int):
    """Standardised features, multinomial logistic regression; C picked on validation balanced accuracy."""
    scaler = StandardScaler().fit(train_x)
    if len(np.unique(train_y)) < 2:  # one class labelled: nothing to regress
        return majority(train_x, train_y, val_x, val_y, n_classes)
    best = None
    for c in LOGREG_C:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
            model = LogisticRegression(C=c, max_iter=300).fit(scaler.transform(train_x), train_y)
            score = balanced_accuracy_score(val_y, model.predict(scaler.transform(val_x))) if len(val_y) else 0.0
        if best is None or score > best[0]:
            best = (score, model)
    model = best[1]
    return lambda x: _full_proba(model, scaler.transform(x), n_classes)


def frozen_features(images: torch.Tensor, cfg: FinetuneConfig, init: str, seed: int) -> np.ndarray:
    """L2-normalised frozen backbone features of every image; ``init`` random (seeded as the random arm) or simclr."""
    rt = runtime.setup(replace(cfg, channels_last=False), distributed=False)
    torch.manual_seed(seed)  # the random arm's backbone draw (finetune seeds before building the classifier)
    backbone, _ = build_backbone(cfg.arch)
    init_backbone(backbone, cfg.arch, init, cfg.encoder)
    return evaluate.embed(rt.prepare_model(backbone), images, cfg.image_size, rt, cfg.eval_batch_size).float().numpy()


def baselines_for(cfg: FinetuneConfig) -> dict[str, tuple[str, Fitter]]:
    """name -> (feature kind, fitter); the SimCLR ones only with an encoder."""
    table = {"majority": ("pixels", majority), "pixel-1nn": ("pixels", knn(1)), "pixel-20nn": ("pixels", knn(20)),
             "pixel-logreg": ("pixels", logreg), "random-knn": ("random", knn(20))}
    if cfg.encoder:
        table.update({"simclr-knn": ("simclr", knn(20)), "simclr-logreg": ("simclr", logreg)})
    return table


def score_one(cfg: FinetuneConfig, name: str, fitter: Fitter, features: np.ndarray, images: data.ImageSet,
              split: dict, out: Path) -> dict:
    """Fit one baseline on the labelled subset, score validation and test once, write the run's records."""
    started = time.time()
    classes, labels = task_labels(images, cfg)
    index = {part: images.indices_of(paths) for part, paths in
             (("train", splits.labelled_paths(split, cfg)), ("val", split["val"]), ("test", split["test"]))}
    predict = fitter(features[index["train"]], labels[index["train"]], features[index["val"]],
                     labels[index["val"]], len(classes))
    val_probabilities = predict(features[index["val"]]) if len(index["val"]) else np.zeros((0, len(classes)))
    val = evaluate.classification_metrics(labels[index["val"]], val_probabilities.argmax(1), classes)
    val_part = split_predictions(images, split, index["val"], labels, val_probabilities)
    probabilities = predict(features[index["test"]])
    test_labels = labels[index["test"]]
    test = {**evaluate.classification_metrics(test_labels, probabilities.argmax(1), classes), "loss": float("nan")}
    test_paths = [images.paths[i] for i in index["test"]]
    groups = [str(split["groups"][p]) for p in test_paths]
    best = {"best_epoch": 0, "best_metric": val["balanced_accuracy"]}
    metrics = {**test_metrics(test, probabilities, test_labels, groups, split, classes, val_part),
               **run_facts(replace(cfg, init="random"), split, index, images.paths, best),
               "init": name, "mode": MODE, "epochs": 0, "encoder": cfg.encoder if "simclr" in name else None,
               "encoder_sha256": fileio.file_sha256(cfg.encoder) if "simclr" in name else None}
    fileio.prepare_run_dir(out)
    fileio.atomic_write_text(out / "config.yaml", _config_yaml(cfg, name))
    write_predictions(out / "predictions.csv", test_paths, groups, test_labels, probabilities, classes)
    write_predictions(out / "val_predictions.csv", val_part[3], val_part[2], val_part[1], val_part[0], classes)
    metrics["wall_s"] = round(time.time() - started, 2)
    write_json(out / "metrics.json", metrics)  # written last: it marks the run complete
    return metrics


def _config_yaml(cfg: FinetuneConfig, name: str) -> str:
    import yaml

    values = {**config_to_dict(cfg), "init": name, "mode": MODE, "epochs": 0, "sweep": False}
    return yaml.safe_dump(values, sort_keys=False)


@rundir.holds_run_dirs
def run_all(cfg: FinetuneConfig) -> Path:
    """Every baseline x fraction x seed under ``cfg.out``; finished ones (metrics.json) are skipped.

    The sweep root is locked as a sweep locks it: a sweep and its baselines never write it at once.
    """
    root = rundir.locked(cfg.out or "runs/sweep")
    images = data.load_dataset(cfg)
    split_file = Path(cfg.splits) if cfg.splits else root / "splits.json"  # the sweep's, when it ran first
    if not split_file.is_file():
        splits.write_splits(splits.splits_for(cfg, images), split_file)
    split = splits.splits_for(replace(cfg, splits=str(split_file)), images)
    pixels = grouping.thumbnail_features(images)
    feature_cache: dict[tuple[str, int], np.ndarray] = {}
    for seed in cfg.seeds:
        for fraction in cfg.fractions:
            for name, (kind, fitter) in baselines_for(cfg).items():
                out = root / f"{name}-{MODE}" / f"frac{fraction:g}" / f"seed{seed}"
                if (out / "metrics.json").is_file():
                    continue
                key = (kind, seed if kind == "random" else 0)
                if kind != "pixels" and key not in feature_cache:
                    feature_cache[key] = frozen_features(images.images, cfg, kind, seed)
                features = pixels if kind == "pixels" else feature_cache[key]
                cell = replace(cfg, label_frac=fraction, seed=seed, out=str(out), splits=str(split_file))
                metrics = score_one(cell, name, fitter, features, images, split, out)
                print(f"{name:>14} label_frac={fraction:g} seed={seed}: test balanced accuracy "
                      f"{100 * metrics['balanced_accuracy']:.1f} % (val {100 * metrics['val_balanced_accuracy']:.1f})",
                      flush=True)
    return root


@friendly_errors
def main(argv: list[str] | None = None) -> Path:
    cfg = parse_config(FinetuneConfig, "finetune", argv, __doc__)
    if cfg.encoder and not Path(cfg.encoder).is_file():
        raise UserError(f"--encoder {cfg.encoder}: file not found")
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    return run_all(cfg)


if __name__ == "__main__":
    runtime.reexec_with_tuned_malloc()
    main()
