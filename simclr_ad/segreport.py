"""Segmentation (and detection) report: Dice vs masked-patient fraction for both arms, overlay grids.

    python -m simclr_ad.segreport --runs SEG_SWEEP [--detection FINETUNE_SWEEP] --out REPORT_DIR [--copy-runs]

Writes ``segmentation.md``, ``segmentation_summary.csv``, ``dice_vs_masks.png`` and per fraction
``overlays_mask<F>.png``: the same test slices (the largest true masks, one per test patient
first) under every arm, with the truth as a green contour and the prediction in red. Overlays
need the runs' best.pt and the data their config.yaml names; without them they are skipped and
said so. ``--detection`` adds AUROC, sensitivity and specificity (at the run's validation-chosen
threshold, else p >= 0.5) of fine-tune runs whose predictions.csv has a tumour column. Missing or partial runs are listed, never dropped.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import yaml

from simclr_ad import segmetrics
from simclr_ad.fileio import atomic_write_bytes, atomic_write_text
from simclr_ad.errors import UserError, friendly_errors
from simclr_ad.runs import redact_paths

SEG_COLUMNS = ("test_patient_dice", "test_dice_tumour", "test_dice", "test_iou_tumour", "test_hd95")
ARM_ORDER = ("simclr", "imagenet", "random")


def mean_ci(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and half-width of the 95 % t-interval over seeds (None for one value); NaNs dropped."""
    from scipy import stats

    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not finite:
        return float("nan"), None
    if len(finite) == 1:
        return finite[0], None
    sd = float(np.std(finite, ddof=1))
    return float(np.mean(finite)), float(stats.t.ppf(0.975, len(finite) - 1) * sd / math.sqrt(len(finite)))


def _fmt(mean: float, ci: float | None, digits: int = 3) -> str:
    if not math.isfinite(mean):
        return "–"
    return f"{mean:.{digits}f}" + (f" ± {ci:.{digits}f}" if ci is not None else "")


def find_runs(root: Path, stage: str | None) -> tuple[list[dict], list[Path]]:
    """(metrics of complete runs, with ``_dir``; dirs of partial ones) under ``root``, by config.yaml."""
    complete, partial = [], []
    for config in sorted(Path(root).rglob("config.yaml")):
        run_dir = config.parent
        if stage == "segment" and "mask_frac" not in (yaml.safe_load(config.read_text()) or {}):
            continue
        metrics = run_dir / "metrics.json"
        if not metrics.is_file():
            partial.append(run_dir)
            continue
        record = json.loads(metrics.read_text())
        if stage == "segment" and record.get("stage") != "segment":
            continue
        complete.append({**record, "_dir": run_dir})
    return complete, partial


def _arm_key(init: str) -> tuple[int, str]:
    return (ARM_ORDER.index(init) if init in ARM_ORDER else len(ARM_ORDER), init)


def summarise_segmentation(runs: Sequence[dict]) -> list[dict]:
    """One row per (init, mask_frac): mean and CI over seeds of each of SEG_COLUMNS."""
    cells: dict[tuple[str, float], list[dict]] = defaultdict(list)
    for run in runs:
        cells[(run["init"], float(run["mask_frac"]))].append(run)
    rows = []
    for (init, frac), members in sorted(cells.items(), key=lambda kv: (_arm_key(kv[0][0]), kv[0][1])):
        row: dict[str, Any] = {"init": init, "mask_frac": frac, "n_seeds": len(members),
                               "n_train_patients": members[0].get("n_train_patients"),
                               "subset_sha1s": len({m.get("train_subset_sha1") for m in members})}
        for column in SEG_COLUMNS:
            row[column], row[f"{column}_ci95"] = mean_ci([m.get(column, float("nan")) for m in members])
        rows.append(row)
    return rows


def detection_rows(runs: Sequence[dict]) -> list[dict]:
    """AUROC, sensitivity, specificity per fine-tune run (from predictions.csv), then mean/CI per cell."""
    cells: dict[tuple[str, float], list[dict]] = defaultdict(list)
    for run in runs:
        path = run["_dir"] / "predictions.csv"
        if not path.is_file():
            continue
        with open(path, newline="") as handle:
            table = list(csv.DictReader(handle))
        column = next((c for c in (table[0] if table else {}) if c.lower() in ("p_tumour", "p_tumor")), None)
        if column is None:
            continue
        positive = column[2:]
        chosen = run.get("threshold")  # the run's validation cut-off on P(class 1), as predict applies it
        threshold = chosen if isinstance(chosen, (int, float)) and list(run.get("classes") or [])[-1:] == [positive] \
            else 0.5
        cells[(run["init"], float(run["label_frac"]))].append(segmetrics.detection_metrics(
            [int(r["true"] == positive) for r in table], [float(r[column]) for r in table], threshold))
    rows = []
    for (init, frac), members in sorted(cells.items(), key=lambda kv: (_arm_key(kv[0][0]), kv[0][1])):
        row: dict[str, Any] = {"init": init, "label_frac": frac, "n_seeds": len(members)}
        for key in ("auroc", "sensitivity", "specificity"):
            row[key], row[f"{key}_ci95"] = mean_ci([m[key] for m in members])
        rows.append(row)
    return rows


def dice_figure(rows: Sequence[dict]) -> bytes:
    """PNG: test patient Dice and tumour-slice Dice vs masked-patient fraction, one line per arm."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.6), dpi=100)
    for k, (column, title) in enumerate((("test_patient_dice", "patient (3-D) Dice"),
                                         ("test_dice_tumour", "slice Dice on tumour slices"))):
        ax = fig.add_subplot(1, 2, k + 1)
        for init in sorted({r["init"] for r in rows}, key=_arm_key):
            arm = [r for r in rows if r["init"] == init]
            ax.errorbar([100 * r["mask_frac"] for r in arm], [r[column] for r in arm],
                        yerr=[r[f"{column}_ci95"] or 0.0 for r in arm], marker="o", capsize=3, label=init)
        ax.set_xscale("log")
        ax.set_xlabel("masked training patients (%)")
        ax.set_ylabel(title)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


# --------------------------------------------------------------------------- overlays

def pick_slices(run: dict, count: int) -> list[str]:
    """Test slices to draw: each test patient's largest true mask, largest first, then the next largest."""
    with open(run["_dir"] / "predictions.csv", newline="") as handle:
        table = [r for r in csv.DictReader(handle) if int(r["true_area"]) > 0]
    table.sort(key=lambda r: (-int(r["true_area"]), r["path"]))
    firsts, seen = [], set()
    for row in table:
        if row["group"] not in seen:
            seen.add(row["group"])
            firsts.append(row["path"])
    rest = [r["path"] for r in table if r["path"] not in set(firsts)]
    return (firsts + rest)[:count]


def _predict_slices(run: dict, paths: list[str], datasets: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images uint8 [K,S,S], truths bool, predictions bool) of ``paths`` under ``run``'s best.pt."""
    import torch

    from simclr_ad import checkpoint, runtime, segment
    from simclr_ad.config import SegmentConfig, config_from_dict, replace
    from simclr_ad.unet import build_unet

    cfg = config_from_dict(SegmentConfig, yaml.safe_load((run["_dir"] / "config.yaml").read_text()))
    key = (cfg.data_dir, cfg.image_size, cfg.synth_n, cfg.synth_seed, cfg.synth_slices)
    if key not in datasets:
        datasets[key] = segment.load_dataset(replace(cfg, progress=False))
    images = datasets[key]
    index = images.indices_of(paths)
    model = build_unet(cfg.arch)
    model.load_state_dict(checkpoint.load(run["_dir"] / "best.pt")["model"])
    rt = runtime.Runtime(device=torch.device("cpu"), dtype=None, channels_last=False)
    probs = segment.predict_probabilities(model, images.images[index], cfg.image_size, rt, 64)
    return images.images[index, 0].numpy(), images.masks[index, 0].numpy(), probs >= cfg.threshold


def overlay_figure(rows: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], title: str) -> bytes:
    """PNG: a row of truth contours, then one row of predictions per arm, same slices in every row."""
    from matplotlib.figure import Figure

    from simclr_ad.segviz import overlay

    first = next(iter(rows.values()))
    n = len(first[0])
    fig = Figure(figsize=(1.6 * n + 1, 1.7 * (len(rows) + 1)), dpi=100)
    lines = [("truth", [overlay(img, None, truth) for img, truth in zip(first[0], first[1])])]
    lines += [(arm, [overlay(img, pred, truth) for img, truth, pred in zip(*value)]) for arm, value in rows.items()]
    for r, (name, tiles) in enumerate(lines):
        for c, tile in enumerate(tiles):
            ax = fig.add_subplot(len(lines), n, r * n + c + 1)
            ax.imshow(tile, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name)
            if r > 0:
                ax.set_title(f"Dice {segmetrics.dice(rows[name][2][c], first[1][c]):.2f}", fontsize=8)
    fig.suptitle(title, fontsize=9)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def overlay_study(runs: Sequence[dict], count: int) -> tuple[dict[str, bytes], list[str]]:
    """Overlay grids per masked-patient fraction (lowest seed per arm); notes for what was skipped."""
    figures, notes, datasets = {}, [], {}
    for frac in sorted({float(r["mask_frac"]) for r in runs}):
        arms = {}
        for run in sorted((r for r in runs if float(r["mask_frac"]) == frac), key=lambda r: (_arm_key(r["init"]),
                                                                                               r["seed"])):
            arms.setdefault(run["init"], run)
        paths = pick_slices(next(iter(arms.values())), count)
        if not paths:
            notes.append(f"{frac:g}: no tumour slice in the test split")
            continue
        rows = {}
        for init, run in arms.items():
            if not (run["_dir"] / "best.pt").is_file():
                notes.append(f"{run['_dir']}: no best.pt (records only), its overlays are skipped")
                continue
            try:
                rows[f"{init} (seed {run['seed']})"] = _predict_slices(run, paths, datasets)
            except (UserError, OSError) as err:
                notes.append(f"{run['_dir']}: overlays skipped ({err})")
        if rows:
            figures[f"overlays_mask{frac:g}.png"] = overlay_figure(
                rows, f"{100 * frac:g} % of training patients masked; green: truth, red: prediction")
    return figures, notes


# --------------------------------------------------------------------------- document

def document(seg: Sequence[dict], det: Sequence[dict], partial: Sequence[Path], figures: dict[str, bytes],
             notes: Sequence[str]) -> str:
    lines = ["# Segmentation report", "",
             "Test split, model selected on the validation split's mean patient (3-D) Dice; mean ± 95 % t-interval "
             "over seeds. Dice of a slice whose truth and prediction are both empty is 1 and counts in "
             "'all slices'; 'tumour slices' is the mean over slices with a non-empty truth (the published "
             "convention); HD95 in pixels at the run's image size, over tumour slices where it is defined.", "",
             "## Dice vs masked-patient fraction", "",
             "| arm | masked patients | train patients | seeds | patient Dice | Dice, tumour slices | Dice, all slices "
             "| IoU, tumour slices | HD95 (px) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in seg:
        lines.append(f"| {r['init']} | {100 * r['mask_frac']:g} % | {r['n_train_patients']} | {r['n_seeds']} | "
                     + " | ".join(_fmt(r[c], r[f"{c}_ci95"], 1 if c == "test_hd95" else 3) for c in SEG_COLUMNS) + " |")
    if any(r["subset_sha1s"] > 1 for r in seg):
        lines += ["", "**Warning:** some cells' seeds trained on different masked subsets (train_subset_sha1)."]
    if "dice_vs_masks.png" in figures:
        lines += ["", "![Dice vs masked-patient fraction](dice_vs_masks.png)"]
    if det:
        lines += ["", "## Detection (tumour slice or not)", "",
                  "Fine-tune runs' test predictions, positive = tumour, at each run's validation-chosen "
                  "threshold (Youden's J), else p ≥ 0.5.", "",
                  "| arm | labelled slices | seeds | AUROC | sensitivity | specificity |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['init']} | {100 * r['label_frac']:g} % | {r['n_seeds']} | "
                  + " | ".join(_fmt(r[k], r[f"{k}_ci95"]) for k in ("auroc", "sensitivity", "specificity")) + " |"
                  for r in det]
    grids = sorted(name for name in figures if name.startswith("overlays_"))
    if grids:
        lines += ["", "## Overlays (same test slices under every arm)", ""]
        lines += [f"![{name}]({name})" for name in grids]
    if partial or notes:
        lines += ["", "## Missing, partial or skipped", ""] + [f"- {p}: no metrics.json (unfinished)" for p in partial]
        lines += [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def copy_records(runs: Sequence[dict], root: Path, dest: Path) -> None:
    """Each run's records under ``dest``: config.yaml, metrics.jsonl, the test predictions with every path
    and patient id keyed (``runs.redact_paths``), and metrics.json last; never checkpoints.

    With them a sweep on another machine restores the run (``segment --restore-from``)."""
    for run in runs:
        for name in ("config.yaml", "metrics.jsonl", "predictions.csv", "metrics.json"):
            if (run["_dir"] / name).is_file():
                data = (run["_dir"] / name).read_bytes()
                atomic_write_bytes(dest / run["_dir"].relative_to(root) / name,
                                   redact_paths(data, groups=True) if name == "predictions.csv" else data)


@friendly_errors
def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m simclr_ad.segreport", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", required=True, metavar="DIR", help="segment runs (a sweep root)")
    parser.add_argument("--detection", metavar="DIR", help="fine-tune runs of the tumour detector")
    parser.add_argument("--out", required=True, metavar="REPORT_DIR")
    parser.add_argument("--overlays", type=int, default=6, metavar="N", help="test slices per overlay grid (0: none)")
    parser.add_argument("--copy-runs", action="store_true",
                        help="copy the segment runs' records (predictions keyed) to OUT/seg_runs")
    args = parser.parse_args(argv)

    # ---------------------------------------------------------------- runs and statistics
    runs, partial = find_runs(Path(args.runs), "segment")
    if not runs:
        raise UserError(f"no finished segment runs (metrics.json with stage segment) under {args.runs}")
    seg = summarise_segmentation(runs)
    det = detection_rows(find_runs(Path(args.detection), None)[0]) if args.detection else []

    # ---------------------------------------------------------------- figures and document
    figures = {"dice_vs_masks.png": dice_figure(seg)}
    overlays, notes = overlay_study(runs, args.overlays) if args.overlays > 0 else ({}, [])
    figures.update(overlays)
    out = Path(args.out)
    for name, png in figures.items():
        atomic_write_bytes(out / name, png)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(seg[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(seg)
    atomic_write_text(out / "segmentation_summary.csv", buffer.getvalue())
    atomic_write_text(out / "segmentation.md", document(seg, det, partial, figures, notes))
    if args.copy_runs:
        copy_records(runs, Path(args.runs), out / "seg_runs")
    print(f"segmentation report: {out / 'segmentation.md'} ({len(runs)} run(s), {len(partial)} partial)")
    return out


if __name__ == "__main__":
    main()
