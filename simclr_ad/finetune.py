"""Fine-tune (or linear-probe) a classifier on a fraction of the training labels.

    python -m simclr_ad.finetune --label-frac 0.1 --init simclr --encoder RUN/encoder.pt
    python -m simclr_ad.finetune --sweep --fractions 0.01 0.1 0.2 0.5 1.0 --inits simclr random --seeds 0 1 2 ...

Defaults: AdamW (lr 1e-4, weight decay 1e-8), cross-entropy, 100 epochs, whole network
trainable. The model is selected on validation balanced accuracy (best.pt, early
stopping); the test split is evaluated exactly once, with the selected model. Both
arms of a comparison read the same label subset from the same split file and start
from the same seeded initialisation, except for the SimCLR backbone weights.
"""
from __future__ import annotations

import csv
import hashlib
import io
import itertools
import os
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from simclr_ad import augment, checkpoint, clinical, data, evaluate, fileio, losses, plots, rundir, runs, runtime, splits
from simclr_ad.config import FinetuneConfig, config_to_dict, parse_config, replace
from simclr_ad.data import class_key
from simclr_ad.errors import UserError, friendly_errors
from simclr_ad.models import build_classifier, init_backbone
from simclr_ad.optim import cosine_with_warmup
from simclr_ad.runlog import RunLog, write_json


def task_labels(images: data.ImageSet, cfg: FinetuneConfig) -> tuple[list[str], np.ndarray]:
    """Class names and labels for the task: the dataset's classes, or ``binary_names`` for binary."""
    if cfg.task == "multiclass":
        return list(images.classes), images.labels
    positive = {class_key(c) for c in cfg.positive_classes}
    is_positive = np.array([class_key(c) in positive for c in images.classes])
    if not is_positive.any() or is_positive.all():
        raise UserError(f"--positive-classes {' '.join(cfg.positive_classes)} must match some but not all of "
                        f"the dataset's classes ({', '.join(images.classes)})")
    return list(cfg.binary_names), is_positive[images.labels].astype(np.int64)


def epoch_batches(n: int, cfg: FinetuneConfig, rt: runtime.Runtime, epoch: int) -> list[torch.Tensor]:
    """The epoch's batches of indices into the labelled subset; as many in every epoch."""
    return [b for b in runtime.epoch_batches(n, cfg.batch_size, cfg.seed, epoch, rt, drop_last=False,
                                             min_batches=cfg.min_steps_per_epoch)
            if len(b) > 1]  # BatchNorm needs 2+ samples


def param_groups(model: torch.nn.Module, cfg: FinetuneConfig) -> list[dict]:
    """The trainable parameters: one group at lr, or (encoder_lr_mult < 1) the head at lr first (the logged
    lr), then the backbone at lr x encoder_lr_mult."""
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    backbone = [p for name, p in trainable if name.split(".", 1)[0] == "backbone"]
    if cfg.encoder_lr_mult == 1 or not backbone:
        return [{"params": [p for _, p in trainable], "lr": cfg.lr}]  # one group, as runs before the key had
    head = [p for name, p in trainable if name.split(".", 1)[0] != "backbone"]
    return [{"params": head, "lr": cfg.lr}, {"params": backbone, "lr": cfg.lr * cfg.encoder_lr_mult}]


def bn_subset(n: int, cfg: FinetuneConfig) -> torch.Tensor:
    """The labelled images BatchNorm is recalibrated on: the same ``bn_recalibrate`` of them every epoch."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed))[:cfg.bn_recalibrate]


def build_scheduler(cfg: FinetuneConfig, optimizer, steps_per_epoch: int):
    """ReduceLROnPlateau (stepped per epoch on the validation loss) or a per-step LambdaLR."""
    if cfg.lr_schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=cfg.plateau_factor,
                                                          patience=cfg.plateau_patience)
    total, warmup = cfg.epochs * steps_per_epoch, round(cfg.warmup_epochs * steps_per_epoch)
    if cfg.lr_schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: cosine_with_warmup(step, total, warmup))


def train_step(model, x: torch.Tensor, y: torch.Tensor, loss_fn, optimizer, rt: runtime.Runtime,
               epoch: int = 0) -> torch.Tensor:
    """One supervised step (the one bench times too): forward under autocast, fp32 loss, backward, update."""
    with rt.autocast():
        logits = model(x)
    loss = loss_fn(logits.float(), y)
    if not torch.isfinite(loss):
        raise UserError(f"loss became {loss.item()} at epoch {epoch + 1}; stopped, last checkpoint intact")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss


def train_one_epoch(model, images: torch.Tensor, labels: torch.Tensor, cfg: FinetuneConfig, rt: runtime.Runtime,
                    optimizer, scheduler, loss_fn, generator: torch.Generator, epoch: int) -> dict:
    """One pass over the labelled subset with light augmentation; returns mean train loss."""
    model.train()
    if cfg.mode == "linear":
        model.backbone.eval()  # a linear probe must not move BN statistics either
    batches = epoch_batches(len(images), cfg, rt, epoch)
    per_step = not isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    total, count, started = 0.0, 0, time.perf_counter()
    bar = tqdm(batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="step", leave=False,
               disable=not (cfg.progress and rt.is_main), dynamic_ncols=True)
    for index in bar:
        x = rt.to_input(augment.augment(images[index].to(rt.device), cfg.image_size, cfg, generator))
        loss = train_step(model, x, labels[index].to(rt.device), loss_fn, optimizer, rt, epoch)
        if per_step:
            scheduler.step()
        total += loss.item() * len(index)
        count += len(index)
        bar.set_postfix(loss=f"{total / count:.4f}", img_s=f"{count / (time.perf_counter() - started):.1f}")
    return {"train_loss": total / max(1, count), "img_per_s": count / max(1e-9, time.perf_counter() - started)}


def evaluate_split(model, images: torch.Tensor, labels: np.ndarray, cfg: FinetuneConfig, rt, loss_fn,
                   classes: list[str]) -> tuple[dict, np.ndarray]:
    probabilities, logits = evaluate.predict_proba(model, images, cfg.image_size, rt, cfg.eval_batch_size)
    target = torch.as_tensor(labels)
    loss = float(loss_fn(torch.as_tensor(logits), target)) if len(labels) else float("nan")
    metrics = evaluate.classification_metrics(labels, probabilities.argmax(1), classes)
    return {"loss": loss, **metrics}, probabilities


def write_predictions(path: Path, paths: list[str], groups: list[str], labels: np.ndarray,
                      probabilities: np.ndarray, classes: list[str]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "group", "true", "pred", *[f"p_{c}" for c in classes]])
    for p, g, y, prob in zip(paths, groups, labels, probabilities):
        writer.writerow([p, g, classes[y], classes[int(prob.argmax())], *[f"{v:.6f}" for v in prob]])
    fileio.atomic_write_text(path, buffer.getvalue())


def fit(model, train: tuple, val: tuple, classes: list[str], cfg: FinetuneConfig, rt: runtime.Runtime,
        optimizer, scheduler, loss_fns: tuple, ckpt: dict | None, run_dir: Path, log: RunLog) -> dict:
    """Epochs from the checkpoint's on, selecting on validation (best.pt); returns the selection state."""
    (train_images, train_labels), (val_images, val_labels), (loss_fn, eval_loss) = train, val, loss_fns
    best = ckpt["extra"] if ckpt else {"best_metric": -1.0, "best_val_loss": float("inf"), "best_epoch": 0,
                                       "stale_epochs": 0}
    for epoch in range(ckpt["epoch"] if ckpt else 0, cfg.epochs):
        if cfg.early_stop_patience and best["stale_epochs"] >= cfg.early_stop_patience:
            break
        torch.manual_seed(cfg.seed * 1_000_003 + epoch)  # dropout: resumable, reproducible
        generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
        lr = optimizer.param_groups[0]["lr"]  # at the epoch's start (a per-step schedule moves it)
        stats = train_one_epoch(model, train_images, train_labels, cfg, rt, optimizer, scheduler, loss_fn, generator,
                                epoch)
        if cfg.mode == "finetune" and cfg.bn_recalibrate:
            evaluate.recalibrate_batchnorm(model, train_images[bn_subset(len(train_images), cfg)], cfg.image_size, rt,
                                           cfg.eval_batch_size)
        val, _ = evaluate_split(model, val_images, val_labels, cfg, rt, eval_loss, classes)
        if cfg.lr_schedule == "plateau":
            scheduler.step(val["loss"])
        improved = val["balanced_accuracy"] > best["best_metric"] or (
            val["balanced_accuracy"] == best["best_metric"] and val["loss"] < best["best_val_loss"])
        if improved:
            best = {"best_metric": val["balanced_accuracy"], "best_val_loss": val["loss"], "best_epoch": epoch + 1,
                    "stale_epochs": 0}
            checkpoint.save(checkpoint.make(model, None, None, epoch + 1, epoch + 1, best["best_metric"],
                                            config_to_dict(cfg), cfg.arch, _model_info(classes, cfg)),
                            run_dir / runs.BEST_CHECKPOINT)
        else:
            best["stale_epochs"] += 1
        log.log({"epoch": epoch + 1, **stats, "val_loss": val["loss"], "val_accuracy": val["accuracy"],
                 "val_balanced_accuracy": val["balanced_accuracy"], "lr": lr},
                step=epoch + 1)
        checkpoint.save(checkpoint.make(model, optimizer, scheduler, epoch + 1, epoch + 1, best["best_metric"],
                                        config_to_dict(cfg), cfg.arch, best), run_dir / runs.LAST_CHECKPOINT)
    return best


def test_once(model, images: data.ImageSet, split: dict, index: dict, all_labels: np.ndarray, classes: list[str],
              cfg: FinetuneConfig, rt: runtime.Runtime, eval_loss, best: dict, run_dir: Path, log: RunLog) -> dict:
    """Test the model selected on validation (best.pt), once; write predictions.csv and the TensorBoard
    figures; return the metrics (without wall_s)."""
    if (run_dir / runs.BEST_CHECKPOINT).is_file():
        model.load_state_dict(checkpoint.load(run_dir / runs.BEST_CHECKPOINT)["model"])
    val = split_predictions(images, split, index["val"], all_labels,
                            evaluate.predict_proba(model, images.images[index["val"]], cfg.image_size, rt,
                                                   cfg.eval_batch_size)[0])  # the binary threshold is chosen here
    test_labels = all_labels[index["test"]]
    test, probabilities = evaluate_split(model, images.images[index["test"]], test_labels, cfg, rt, eval_loss, classes)
    test_paths = [images.paths[i] for i in index["test"]]
    groups = [str(split["groups"][p]) for p in test_paths]
    metrics = {**test_metrics(test, probabilities, test_labels, groups, split, classes, val),
               **run_facts(cfg, split, index, images.paths, best)}
    write_predictions(run_dir / "predictions.csv", test_paths, groups, test_labels, probabilities, classes)
    write_predictions(run_dir / "val_predictions.csv", val[3], val[2], val[1], val[0], classes)
    if log.writer is not None:
        shown = np.arange(min(8, len(test_paths)))
        inputs = augment.prepare(images.images[index["test"][shown]], cfg.image_size)
        plots.log_run_figures(log.writer, metrics, model.float().to(memory_format=torch.contiguous_format),
                              cfg.arch, inputs, probabilities[shown].argmax(1).tolist(), classes,
                              true=test_labels[shown].tolist(), step=best["best_epoch"], layer=cfg.cam_layer)
    return metrics


@rundir.holds_run_dirs
def run(cfg: FinetuneConfig, images: data.ImageSet | None = None) -> Path:
    """One fine-tune run; returns its run dir (metrics.json marks it complete)."""
    # ---------------------------------------------------------------- config
    started = time.time()
    fileio.git_sha()  # record the code version as it is now, at the start
    rt = runtime.setup(cfg, distributed=False)  # one run = one process; sweeps spread runs over ranks
    cfg = replace(cfg, label_unit=splits.label_unit_for(cfg))  # recorded resolved: auto's meaning may change
    budget = f"n{cfg.label_subjects}" if cfg.label_subjects else f"f{cfg.label_frac}"
    run_dir = rundir.claim(cfg, f"runs/finetune-{cfg.init}-{cfg.mode}-{budget}-s{cfg.seed}")
    if (run_dir / "metrics.json").is_file():  # the test split was already evaluated: never again
        print(f"fine-tuning already finished in {run_dir} (metrics.json)")
        return run_dir

    # ---------------------------------------------------------------- data
    images = images if images is not None else data.load_dataset(cfg)
    split = splits.splits_for(cfg, images)
    splits.check_evaluable(split)
    classes, all_labels = task_labels(images, cfg)
    index = {name: images.indices_of(paths) for name, paths in
             (("train", splits.labelled_paths(split, cfg)), ("val", split["val"]), ("test", split["test"]))}
    train_images = images.images[torch.from_numpy(index["train"])]
    train_labels = torch.from_numpy(all_labels[index["train"]])
    if rt.device.type == "cuda":
        train_images = train_images.to(rt.device)

    # ---------------------------------------------------------------- model
    torch.manual_seed(cfg.seed)  # same seed -> same head (and random backbone) in every arm
    model = build_classifier(cfg.arch, len(classes), cfg.dropout)
    init_backbone(model.backbone, cfg.arch, cfg.init, cfg.encoder)
    if cfg.mode == "linear":
        model.backbone.requires_grad_(False)
    model = rt.prepare_model(model)
    optimizer = torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                  fused=True)  # 39 -> 18 ms/step, ResNet18
    scheduler = build_scheduler(cfg, optimizer, len(epoch_batches(len(train_images), cfg, rt, 0)))
    weights = losses.class_weights(train_labels, len(classes)).to(rt.device) if cfg.class_weights else None
    loss_fn = torch.nn.CrossEntropyLoss(weight=weights, label_smoothing=cfg.label_smoothing)
    eval_loss = torch.nn.CrossEntropyLoss()

    # ---------------------------------------------------------------- resume
    ckpt = checkpoint.restore(run_dir / runs.LAST_CHECKPOINT, model, optimizer, scheduler, cfg.arch)
    log = RunLog(run_dir, enabled=rt.is_main, resume_epoch=ckpt["epoch"] if ckpt else None)

    # ---------------------------------------------------------------- loop (model selection on val only)
    best = fit(model, (train_images, train_labels), (images.images[index["val"]], all_labels[index["val"]]),
               classes, cfg, rt, optimizer, scheduler, (loss_fn, eval_loss), ckpt, run_dir, log)

    # ---------------------------------------------------------------- test, once, with the selected model; save
    metrics = test_once(model, images, split, index, all_labels, classes, cfg, rt, eval_loss, best, run_dir, log)
    log.close()
    metrics["wall_s"] = round(time.time() - started, 2)
    write_json(run_dir / "metrics.json", metrics)  # written last: it marks the run complete
    return run_dir


def split_predictions(images: data.ImageSet, split: dict, index: np.ndarray, labels: np.ndarray,
                      probabilities: np.ndarray) -> tuple:
    """(probabilities, labels, groups, paths) of one split part: test_metrics's ``val``."""
    paths = [images.paths[i] for i in index]
    return probabilities, labels[index], [str(split["groups"][p]) for p in paths], paths


def test_metrics(test: dict, probabilities: np.ndarray, labels: np.ndarray, groups: list[str], split: dict,
                 classes: list[str], val: tuple | None = None) -> dict:
    """Slice-level test metrics, plus subject-level ones (slice probabilities averaged) when groups exist.

    ``val`` (validation probabilities, labels, groups) chooses the binary threshold (clinical.py).
    """
    metrics = {**{k: v for k, v in test.items() if k != "loss"}, "test_loss": test["loss"], "classes": classes}
    val_probabilities, val_labels, val_groups = (val or (None, None, None))[:3]
    metrics.update(clinical.clinical_metrics(probabilities, labels, val_probabilities, val_labels))
    if split["group_by"] != "image":
        subject_true, subject_pred = evaluate.subject_level(probabilities, labels, groups)
        subject = evaluate.classification_metrics(subject_true, subject_pred, classes)
        metrics.update({f"subject_{k}": subject[k] for k in ("accuracy", "balanced_accuracy", "macro_f1",
                                                              "confusion_matrix", "n")})
        metrics.update(clinical.subject_clinical_metrics(probabilities, labels, groups,
                                                         val[:3] if val is not None else None))
    return metrics


def run_facts(cfg: FinetuneConfig, split: dict, index: dict, paths: list[str], best: dict) -> dict:
    """What a report needs to know about how a run was made."""
    train_paths = "\n".join(sorted(paths[i] for i in index["train"]))
    return {"label_frac": cfg.label_frac, "n_train": int(len(index["train"])), "n_val": int(len(index["val"])),
            "n_test": int(len(index["test"])), "init": cfg.init, "mode": cfg.mode, "arch": cfg.arch,
            "label_unit": splits.resolve_label_unit(cfg.label_unit, split["group_by"]),
            "label_subjects": cfg.label_subjects,
            "n_train_subjects": len({str(split["groups"][paths[i]]) for i in index["train"]}),
            "fold": split.get("fold"), "n_folds": split.get("n_folds"),
            "seed": cfg.seed, "task": cfg.task, "best_epoch": best["best_epoch"],
            "val_balanced_accuracy": best["best_metric"], "group_by": split["group_by"], "split_seed": split["seed"],
            "image_size": cfg.image_size, "epochs": cfg.epochs, "data": cfg.data_dir or "synthetic",
            "encoder": cfg.encoder, "pretrain_on": _pretrain_on(cfg), "git_sha": fileio.git_sha(),
            "encoder_sha256": fileio.file_sha256(cfg.encoder) if cfg.init == "simclr" and cfg.encoder else None,
            # both arms of a comparison must show the same hash: same label subset
            "train_subset_sha1": hashlib.sha1(train_paths.encode()).hexdigest()}


def _model_info(classes: list[str], cfg: FinetuneConfig) -> dict:
    return {"classes": classes, "image_size": cfg.image_size, "task": cfg.task}


def _pretrain_on(cfg: FinetuneConfig) -> str | None:
    """The pretraining protocol of a SimCLR encoder, read from its run's config.yaml."""
    if cfg.init != "simclr" or not cfg.encoder:
        return None
    return (runs.read_config(Path(cfg.encoder).parent) or {}).get("pretrain_on")


@rundir.holds_run_dirs
def sweep(cfg: FinetuneConfig) -> Path:
    """Run the grid inits x modes x fractions x seeds; finished runs (with metrics.json) are skipped.

    A cell whose recorded settings, split or encoder differ is refused (rundir.py), and so is a
    ``splits.json`` these settings would compute differently; ``--overwrite`` redoes them.

    One split file, written at the sweep root, serves every cell. Under torchrun,
    grid cells are spread over ranks (rank r runs every world_size-th cell).
    """
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    root = rundir.locked(cfg.out or "runs/sweep", enabled=rank == 0)
    if "simclr" in cfg.inits and not cfg.encoder:
        raise UserError("the sweep includes --inits simclr: pass --encoder PRETRAIN_RUN/encoder.pt")
    images = data.load_dataset(cfg)
    split_file = Path(cfg.splits) if cfg.splits else root / "splits.json"
    if not cfg.splits:
        rundir.write_split(splits.splits_for(cfg, images), split_file, cfg.overwrite)
    # seeds outermost: a sweep stopped early still holds complete arm-vs-arm comparisons
    cells = [(init, mode, fraction, seed) for seed, fraction, mode, init in
             itertools.product(cfg.seeds, cfg.fractions, cfg.modes, cfg.inits)]
    for i, (init, mode, fraction, seed) in enumerate(cells):
        out = root / f"{init}-{mode}" / f"frac{fraction:g}" / f"seed{seed}"
        if i % world != rank:
            continue
        cell = replace(cfg, sweep=False, init=init, mode=mode, label_frac=fraction, seed=seed, out=str(out),
                       splits=str(split_file))
        cell = replace(cell, label_unit=splits.label_unit_for(cell))  # as run() records it
        if runs.restore_into_sweep(cell, root):
            print(f"[{i + 1}/{len(cells)}] restored from {cfg.restore_from}: {out}", flush=True)
            continue
        print(f"[{i + 1}/{len(cells)}] {init} {mode} label_frac={fraction:g} seed={seed} -> {out}", flush=True)
        run(cell, images)
    return root


@friendly_errors
def main(argv: list[str] | None = None) -> Path:
    cfg = parse_config(FinetuneConfig, "finetune", argv, __doc__)
    if int(os.environ.get("WORLD_SIZE", 1)) > 1 and not cfg.sweep:
        raise UserError("under torchrun, fine-tune with --sweep (grid cells are spread over ranks); "
                        "run a single fine-tune as a plain process")
    return sweep(cfg) if cfg.sweep else run(cfg)


if __name__ == "__main__":
    runtime.reexec_with_tuned_malloc()
    main()
