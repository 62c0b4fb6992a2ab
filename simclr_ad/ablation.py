"""The ablation report: pretraining variants side by side (kNN monitor, then fine-tuning per fraction).

    python -m simclr_ad.report --ablation DIR --out REPORT_DIR

DIR holds one dir per variant, ``DIR/<name>/{pretrain,finetune}``; ``base`` is the one the
others are compared with.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from simclr_ad import plots, stats
from simclr_ad.document import Document
from simclr_ad.fileio import atomic_write_bytes, atomic_write_text
from simclr_ad.runlog import read_records
from simclr_ad.runs import ReportError, Run, copy_pretrain_records, copy_run_records, find_runs, read_config

ABLATION_BASE = "base"  # the variant the others are compared with (configs/cpu.yaml unchanged)
_NOT_A_KNOB = {"out", "format", "overwrite"}


@dataclass
class Variant:
    """One ablation variant: a pretraining run (absent for a no-pretraining baseline) and its fine-tunes."""

    name: str
    config: dict[str, Any]
    curve: list[dict]  # the pretrain run's metrics.jsonl records
    runs: list[Run]


def read_variants(root: Path) -> list[Variant]:
    """Every ``root/<name>/`` holding ``pretrain/`` and/or ``finetune/``; base first, baselines last."""
    if not root.is_dir():
        raise ReportError(f"ablation dir not found: {root}")
    variants = []
    for path in sorted(p for p in root.iterdir() if p.is_dir()):
        log = path / "pretrain" / "metrics.jsonl"
        curve = read_records(log) if log.is_file() else []
        runs = find_runs([path / "finetune"]) if (path / "finetune").is_dir() else []
        if curve or runs:
            variants.append(Variant(path.name, read_config(path / "pretrain") or {},
                                    curve, runs))
    if not variants:
        raise ReportError(f"no variants (dirs with pretrain/ or finetune/) under {root}")
    return sorted(variants, key=lambda v: (v.name != ABLATION_BASE, not v.curve, v.name))


def changed_keys(config: dict[str, Any], base: dict[str, Any]) -> str:
    """``key=value`` for every config key that differs from ``base`` (run paths aside)."""
    diff = [f"{k}={config[k]}" for k in sorted(config) if k not in _NOT_A_KNOB and config[k] != base.get(k)]
    return ", ".join(diff) or "–"


def _knn(curve: Sequence[dict]) -> list[tuple[int, float]]:
    return [(r["epoch"], r["knn_balanced_accuracy"]) for r in curve if "knn_balanced_accuracy" in r]


def _mean_ci(values: Sequence[float]) -> str:
    if not values:
        return "–"
    mean, _, ci = stats.mean_std_ci95(values)
    return stats.percent(mean, ci, len(values), len(values))


def ablation_document(variants: Sequence[Variant], root: Path, figures: dict[str, bytes]) -> Document:
    """Pretraining variants side by side: kNN monitor, and fine-tuning selected and reported per fraction."""
    doc = Document(figures)
    base = next((v.config for v in variants if v.name == ABLATION_BASE), variants[0].config)
    doc.heading(1, "simclr_ad ablation: which pretraining knob moves the number")
    doc.para(f"Variants under {root}. Each changes the keys shown from the base run. Pretraining: the kNN monitor "
             "(balanced accuracy of a weighted 20-NN on frozen backbone features, train bank, validation queries; "
             "epoch 0 is the initialisation). Fine-tuning: mean over seeds, ± 95% CI; 'val' is what a choice may be "
             "made on, 'test' is reported only.")
    doc.heading(2, "Pretraining")
    table = []
    for v in variants:
        if not v.curve:
            continue
        knn, trained = _knn(v.curve), [r for r in v.curve if "loss" in r]
        best = max(knn, key=lambda k: k[1]) if knn else None
        table.append([v.name, changed_keys(v.config, base), trained[-1]["epoch"] if trained else 0,
                      f"{trained[-1]['loss']:.3f}" if trained else "–",
                      f"{100 * knn[0][1]:.1f}" if knn else "–", f"{100 * knn[-1][1]:.1f}" if knn else "–",
                      f"{100 * best[1]:.1f} (epoch {best[0]})" if best else "–",
                      f"{sum(r.get('epoch_s', 0) for r in trained) / 60:.1f}"])
    doc.table(["variant", "changed", "epochs", "final loss", "kNN at init", "kNN at end", "kNN best",
               "train min"], table)
    doc.figure("ablation_knn.png", "kNN monitor (validation balanced accuracy) per pretraining variant")
    doc.heading(2, "Fine-tuning")
    fracs = sorted({r.label_frac for v in variants for r in v.runs if r.complete})
    header = ["variant", "arm"] + [f"{plots.percent_labels(f)} {part}" for f in fracs
                                   for part in ("val bal. acc.", "test bal. acc.", "test subject bal. acc.")]
    table = []
    for v in variants:
        complete = [r for r in v.runs if r.complete]
        if not complete:
            continue
        line = [v.name, plots.arm_label(complete[0].init, complete[0].mode)]
        for frac in fracs:
            members = [r for r in complete if math.isclose(r.label_frac, frac)]
            line += [_mean_ci([float(r.metrics["val_balanced_accuracy"]) for r in members]),
                     _mean_ci([float(r.metrics["balanced_accuracy"]) for r in members]),
                     _mean_ci([float(r.metrics["subject_balanced_accuracy"]) for r in members
                               if "subject_balanced_accuracy" in r.metrics])]
        table.append(line)
    doc.table(header, table)
    return doc


def write_ablation(root: Path, out: Path) -> Path:
    """ablation.md + ablation_knn.png in ``out``, and every variant's run records under ``out/<variant>/``."""
    variants = read_variants(root)
    for v in variants:
        if v.curve:
            copy_pretrain_records(root / v.name / "pretrain", out / v.name / "pretrain")
        if v.runs:
            copy_run_records(v.runs, [str(root / v.name / "finetune")], out / v.name / "finetune")
    figure = plots.png_bytes(plots.curves_figure({v.name: _knn(v.curve) for v in variants if v.curve}, "pretraining epoch",
                                           "kNN balanced accuracy (validation)", "kNN monitor per variant"))
    atomic_write_bytes(out / "ablation_knn.png", figure)
    atomic_write_text(out / "ablation.md", ablation_document(variants, root, {"ablation_knn.png": figure}).markdown())
    return out / "ablation.md"
