"""Segment lesions with a U-Net whose encoder is our backbone, from a fraction of the masked patients.

    python -m simclr_ad.segment --data-dir ../shared/data/lgg_flair_256 --init simclr --encoder RUN/encoder.pt \
        --mask-frac 0.1 --out runs/seg
    python -m simclr_ad.segment --sweep --fractions 0.1 1.0 --inits simclr random --seeds 0 1 2 --encoder ... --out ...

The data is a manifest with a ``mask`` column (LGG: ``path,mask,subject,slice,label``); with
no ``--data-dir`` it is the lesion phantom set (lesions.py). The split is by patient (the
subject column); ``--splits`` takes the detection stage's split file so both tasks test on the
same patients. ``--mask-frac`` keeps the masks of that share of the training patients (at least
one), ranked by the split seed alone: nested (10 % of patients lie inside 20 %), and the same
for both arms and every run seed. Loss: BCE + soft Dice. The model is selected on the mean
patient (3-D) Dice of the validation split; the test split is evaluated once, with it.

A run dir holds config.yaml, metrics.jsonl (one line per epoch), last.pt and best.pt (written
atomically), tb/ (scalars and overlays of validation slices), and at the end metrics.json and
predictions.csv (one row per test slice). Re-running the same command resumes.
"""
from __future__ import annotations

import csv
import hashlib
import io
import itertools
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from simclr_ad import augment, checkpoint, data, fileio, lesions, masks, rundir, runs, runtime, segmetrics, splits
from simclr_ad.config import SegmentConfig, config_to_dict, parse_config, replace
from simclr_ad.errors import UserError, friendly_errors
from simclr_ad.optim import cosine_with_warmup
from simclr_ad.runlog import RunLog, write_json
from simclr_ad.unet import build_unet, init_encoder

STAGE = "segment"


# --------------------------------------------------------------------------- data

def load_dataset(cfg: SegmentConfig) -> data.ImageSet:
    """The manifest ``cfg.data_dir`` names (it must have a mask column), or the lesion phantoms."""
    if cfg.data_dir is None:
        root = lesions.lesion_dir(cfg.synth_n, cfg.synth_seed, cfg.image_size, cfg.synth_slices, cfg.cache_dir)
        found = data.scan(root)
    else:
        found = data.scan(cfg.data_dir, allow_absolute=cfg.allow_absolute_paths)
    if found.mask_paths is None:
        raise UserError(f"segmentation needs masks: {found.root} has no manifest with a 'mask' column "
                        "filled on every row (path,mask,subject,label)")
    return data.decode(found, cfg.image_size, cfg.cache_dir, strict=cfg.strict, progress=cfg.progress)


def mask_subset(split: dict, fraction: float) -> list[str]:
    """Training paths of the first ceil(fraction x patients) training patients (>= 1), ranked by the split seed.

    The ranking depends on the split alone, so the subsets nest across fractions and are the same
    for every arm and run seed.
    """
    patients = sorted({str(split["groups"][p]) for p in split["train"]})
    if not patients:
        raise UserError("the split has no training patients")
    ranked = [patients[k] for k in np.random.default_rng([int(split["seed"]), 24]).permutation(len(patients))]
    chosen = set(ranked[:max(1, math.ceil(round(fraction * len(patients), 9)))])
    return [p for p in split["train"] if str(split["groups"][p]) in chosen]


# --------------------------------------------------------------------------- loss and loop

def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice over the whole batch (empty slices do not make it undefined). [B,1,H,W] each."""
    prob = torch.sigmoid(logits)
    intersection = (prob * target).sum()
    return 1 - (2 * intersection + eps) / (prob.sum() + target.sum() + eps)


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, cfg: SegmentConfig) -> torch.Tensor:
    """bce_weight x BCE + dice_weight x soft-Dice loss; logits and target float [B,1,H,W]."""
    return (cfg.bce_weight * F.binary_cross_entropy_with_logits(logits, target)
            + cfg.dice_weight * soft_dice_loss(logits, target))


def train_one_epoch(model, images: torch.Tensor, truths: torch.Tensor, cfg: SegmentConfig, rt: runtime.Runtime,
                    optimizer, scheduler, generator: torch.Generator, epoch: int) -> dict:
    """One pass over the masked training slices, image and mask augmented alike; returns mean loss."""
    model.train()
    batches = [b for b in runtime.epoch_batches(len(images), cfg.batch_size, cfg.seed, epoch, rt, drop_last=False,
                                                min_batches=cfg.min_steps_per_epoch) if len(b) > 1]
    total, count, started = 0.0, 0, time.perf_counter()
    bar = tqdm(batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="step", leave=False,
               disable=not (cfg.progress and rt.is_main), dynamic_ncols=True)
    for index in bar:
        x, target = masks.augment_pair(images[index].to(rt.device), truths[index].to(rt.device), cfg.image_size, cfg,
                                       generator)
        with rt.autocast():
            logits = model(rt.to_input(x))
        loss = segmentation_loss(logits.float(), target, cfg)
        if not torch.isfinite(loss):
            raise UserError(f"loss became {loss.item()} at epoch {epoch + 1}; stopped, last checkpoint intact")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total += loss.item() * len(index)
        count += len(index)
        bar.set_postfix(loss=f"{total / count:.4f}", img_s=f"{count / (time.perf_counter() - started):.1f}")
    return {"train_loss": total / max(1, count), "img_per_s": count / max(1e-9, time.perf_counter() - started)}


@torch.no_grad()
def predict_probabilities(model, images: torch.Tensor, size: int, rt: runtime.Runtime, batch_size: int) -> np.ndarray:
    """Foreground probabilities float32 [N, size, size] of uint8 images [N,1,H,W] (eval transform)."""
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = rt.to_input(augment.prepare(images[start:start + batch_size], size))
        with rt.autocast():
            out.append(torch.sigmoid(model(x).float())[:, 0].cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, size, size), np.float32)


def evaluate_masks(probabilities: np.ndarray, truths: np.ndarray, patients: list[str], threshold: float,
                   with_hd95: bool = True) -> tuple[dict, list[dict]]:
    """Slice rows and their summary (segmetrics.summarise) at ``threshold``; truths bool [N, S, S]."""
    preds = probabilities >= threshold
    rows = []
    for p, t, prob in zip(preds, truths, probabilities):
        row = segmetrics.slice_metrics(p, t) if with_hd95 else {
            "dice": segmetrics.dice(p, t), "iou": segmetrics.iou(p, t), "hd95": float("nan"),
            "true_area": int(t.sum()), "pred_area": int(p.sum())}
        rows.append({**row, "max_prob": float(prob.max()) if prob.size else 0.0})
    return segmetrics.summarise(rows, segmetrics.patient_dice(preds, truths, patients)), rows


def log_overlays(writer, images: torch.Tensor, truths: np.ndarray, probabilities: np.ndarray, threshold: float,
                 step: int, tag: str = "val/overlays") -> None:
    """TensorBoard grid of image, truth contour (green) and prediction (red)."""
    from simclr_ad.segviz import grid, overlay

    tiles = [overlay(images[k, 0].numpy(), probabilities[k] >= threshold, truths[k]) for k in range(len(images))]
    if tiles:
        writer.add_image(tag, grid(tiles, columns=len(tiles)), step, dataformats="HWC")


def write_predictions(path: Path, paths: list[str], patients: list[str], rows: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "group", "true_area", "pred_area", "dice", "iou", "hd95", "max_prob"])
    for p, g, r in zip(paths, patients, rows):
        writer.writerow([p, g, r["true_area"], r["pred_area"], f"{r['dice']:.6f}", f"{r['iou']:.6f}",
                         f"{r['hd95']:.4f}", f"{r['max_prob']:.6f}"])
    fileio.atomic_write_text(path, buffer.getvalue())


# --------------------------------------------------------------------------- one run

def _indices(cfg: SegmentConfig, images: data.ImageSet, split: dict) -> dict[str, np.ndarray]:
    return {"train": images.indices_of(mask_subset(split, cfg.mask_frac)), "val": images.indices_of(split["val"]),
            "test": images.indices_of(split["test"])}


def _shown_slices(truths: np.ndarray, count: int) -> np.ndarray:
    """The ``count`` slices with the largest truth masks (tumour slices first), in a fixed order."""
    return np.argsort(-truths.reshape(len(truths), -1).sum(1), kind="stable")[:count]


@rundir.holds_run_dirs
def run(cfg: SegmentConfig, images: data.ImageSet | None = None) -> Path:
    """One segmentation run; returns its run dir (metrics.json marks it complete)."""
    # ---------------------------------------------------------------- config
    started = time.time()
    fileio.git_sha()
    rt = runtime.setup(cfg, distributed=False)
    run_dir = rundir.claim(cfg, f"runs/segment-{cfg.init}-m{cfg.mask_frac}-s{cfg.seed}")
    if (run_dir / "metrics.json").is_file():
        print(f"segmentation already finished in {run_dir} (metrics.json)")
        return run_dir

    # ---------------------------------------------------------------- data (split by patient)
    images = images if images is not None else load_dataset(cfg)
    split = splits.splits_for(cfg, images)
    splits.check_evaluable(split, "segmentation")
    index = _indices(cfg, images, split)
    patients = [str(split["groups"][p]) for p in images.paths]

    # ---------------------------------------------------------------- model
    torch.manual_seed(cfg.seed)  # same seed -> same decoder (and random encoder) in every arm
    model = build_unet(cfg.arch)
    init_encoder(model, cfg.arch, cfg.init, cfg.encoder)
    model = rt.prepare_model(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = len([b for b in runtime.epoch_batches(len(index["train"]), cfg.batch_size, cfg.seed, 0, rt, drop_last=False,
                                                  min_batches=cfg.min_steps_per_epoch) if len(b) > 1])
    total, warmup = cfg.epochs * steps, round(cfg.warmup_epochs * steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: cosine_with_warmup(step, total, warmup))

    # ---------------------------------------------------------------- resume
    ckpt = checkpoint.restore(run_dir / "last.pt", model, optimizer, scheduler, cfg.arch)
    start_epoch = ckpt["epoch"] if ckpt else 0
    best = ckpt["extra"] if ckpt else {"best_metric": -1.0, "best_epoch": 0, "stale_epochs": 0}
    log = RunLog(run_dir, enabled=rt.is_main, resume_epoch=start_epoch if ckpt else None)

    # ---------------------------------------------------------------- loop, then test once with the selected model
    best = _fit(model, optimizer, scheduler, images, index, patients, cfg, rt, run_dir, log, start_epoch, best)
    _test_once(model, images, index, patients, split, cfg, rt, run_dir, log, best, started)
    return run_dir


def _fit(model, optimizer, scheduler, images: data.ImageSet, index: dict, patients: list[str], cfg: SegmentConfig,
         rt, run_dir: Path, log: RunLog, start_epoch: int, best: dict) -> dict:
    """Train from ``start_epoch``, selecting on validation patient Dice (best.pt); last.pt each epoch."""
    train_images, train_masks = images.images[index["train"]], images.masks[index["train"]]
    val_truth = images.masks[index["val"], 0].numpy()
    shown = _shown_slices(val_truth, cfg.overlay_slices)  # positions in the validation split
    for epoch in range(start_epoch, cfg.epochs):
        if cfg.early_stop_patience and best["stale_epochs"] >= cfg.early_stop_patience:
            break
        generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
        lr = optimizer.param_groups[0]["lr"]
        stats = train_one_epoch(model, train_images, train_masks, cfg, rt, optimizer, scheduler, generator, epoch)
        probs = predict_probabilities(model, images.images[index["val"]], cfg.image_size, rt, cfg.eval_batch_size)
        val, _ = evaluate_masks(probs, val_truth, [patients[i] for i in index["val"]], cfg.threshold, with_hd95=False)
        if val["patient_dice"] > best["best_metric"]:
            best = {"best_metric": val["patient_dice"], "best_epoch": epoch + 1, "stale_epochs": 0}
            checkpoint.save(checkpoint.make(model, None, None, epoch + 1, epoch + 1, best["best_metric"],
                                            config_to_dict(cfg), cfg.arch, model_info(cfg)), run_dir / "best.pt")
        else:
            best["stale_epochs"] += 1
        log.log({"epoch": epoch + 1, **stats, "val_patient_dice": val["patient_dice"], "val_dice": val["dice"],
                 "val_dice_tumour": val["dice_tumour"], "lr": lr}, step=epoch + 1)
        if log.writer is not None and len(shown):
            log_overlays(log.writer, images.images[index["val"][shown]], val_truth[shown], probs[shown], cfg.threshold,
                         epoch + 1)
        checkpoint.save(checkpoint.make(model, optimizer, scheduler, epoch + 1, epoch + 1, best["best_metric"],
                                        config_to_dict(cfg), cfg.arch, best), run_dir / "last.pt")
    return best


def _test_once(model, images: data.ImageSet, index: dict, patients: list[str], split: dict, cfg: SegmentConfig,
               rt, run_dir: Path, log: RunLog, best: dict, started: float) -> None:
    """Evaluate the selected model on the test patients once; write predictions.csv, then metrics.json."""
    if (run_dir / "best.pt").is_file():
        model.load_state_dict(checkpoint.load(run_dir / "best.pt")["model"])
    test_probs = predict_probabilities(model, images.images[index["test"]], cfg.image_size, rt, cfg.eval_batch_size)
    test_truth = images.masks[index["test"], 0].numpy()
    test_patients = [patients[i] for i in index["test"]]
    summary, rows = evaluate_masks(test_probs, test_truth, test_patients, cfg.threshold)

    # ---------------------------------------------------------------- save
    write_predictions(run_dir / "predictions.csv", [images.paths[i] for i in index["test"]], test_patients, rows)
    if log.writer is not None:
        pick = _shown_slices(test_truth, 8)
        log_overlays(log.writer, images.images[index["test"][pick]], test_truth[pick], test_probs[pick], cfg.threshold,
                     best["best_epoch"], tag="test/overlays")
    log.close()
    metrics = {**{f"test_{k}": v for k, v in summary.items()}, **run_facts(cfg, split, index, images, patients, best),
               "wall_s": round(time.time() - started, 2)}
    write_json(run_dir / "metrics.json", metrics)  # written last: it marks the run complete


def model_info(cfg: SegmentConfig) -> dict:
    """What predict needs from a segmentation best.pt besides its weights."""
    return {"task": STAGE, "image_size": cfg.image_size, "threshold": cfg.threshold}


def run_facts(cfg: SegmentConfig, split: dict, index: dict, images: data.ImageSet, patients: list[str],
              best: dict) -> dict:
    """What a report needs to know about how a run was made."""
    train_paths = "\n".join(sorted(images.paths[i] for i in index["train"]))
    return {"stage": STAGE, "init": cfg.init, "mask_frac": cfg.mask_frac, "seed": cfg.seed, "arch": cfg.arch,
            "n_train": int(len(index["train"])), "n_train_patients": len({patients[i] for i in index["train"]}),
            "n_val": int(len(index["val"])), "n_test": int(len(index["test"])),
            "best_epoch": best["best_epoch"], "val_patient_dice": best["best_metric"],
            "group_by": split["group_by"], "split_seed": split["seed"], "image_size": cfg.image_size,
            "epochs": cfg.epochs, "threshold": cfg.threshold, "data": cfg.data_dir or "lesion phantoms",
            "encoder": cfg.encoder, "git_sha": fileio.git_sha(),
            "encoder_sha256": fileio.file_sha256(cfg.encoder) if cfg.init == "simclr" and cfg.encoder else None,
            # both arms of a comparison must show the same hash: the same masked patients
            "train_subset_sha1": hashlib.sha1(train_paths.encode()).hexdigest()}


# --------------------------------------------------------------------------- sweep and CLI

@rundir.holds_run_dirs
def sweep(cfg: SegmentConfig) -> Path:
    """Run fractions x inits x seeds (seeds outermost), one split file for all; finished runs are skipped."""
    root = rundir.locked(cfg.out or "runs/segment-sweep")
    if "simclr" in cfg.inits and not cfg.encoder:
        raise UserError("the sweep includes --inits simclr: pass --encoder PRETRAIN_RUN/encoder.pt")
    images = load_dataset(cfg)
    split_file = Path(cfg.splits) if cfg.splits else root / "splits.json"
    if not cfg.splits:
        rundir.write_split(splits.splits_for(cfg, images), split_file, cfg.overwrite)
    cells = [(init, fraction, seed) for seed, fraction, init in itertools.product(cfg.seeds, cfg.fractions, cfg.inits)]
    for i, (init, fraction, seed) in enumerate(cells):
        out = root / init / f"mask{fraction:g}" / f"seed{seed}"
        cell = replace(cfg, sweep=False, init=init, mask_frac=fraction, seed=seed, out=str(out), splits=str(split_file))
        if runs.restore_into_sweep(cell, root):
            print(f"[{i + 1}/{len(cells)}] restored from {cfg.restore_from}: {out}", flush=True)
            continue
        print(f"[{i + 1}/{len(cells)}] {init} mask_frac={fraction:g} seed={seed} -> {out}", flush=True)
        run(cell, images)
    return root


@friendly_errors
def main(argv: list[str] | None = None) -> Path:
    cfg = parse_config(SegmentConfig, STAGE, argv, __doc__)
    return sweep(cfg) if cfg.sweep else run(cfg)


if __name__ == "__main__":
    runtime.reexec_with_tuned_malloc()
    main()
