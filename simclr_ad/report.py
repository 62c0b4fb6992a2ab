"""Collect fine-tune runs into one report: tables with 95% CIs, figures, Grad-CAM, missing runs.

    python -m simclr_ad.report --runs SWEEP_DIR [--runs DIR2 ...] --out REPORT_DIR
        [--gradcam-per-class N] [--no-gradcam] [--num-threads N]
    python -m simclr_ad.report --ablation DIR --out REPORT_DIR   # pretraining variants side by side

A run is any directory under a ``--runs`` dir (searched recursively) holding the
``config.yaml`` of a fine-tune run (it has ``label_frac``; sweep-level and pretrain
configs are not runs). It is complete when it also holds ``metrics.json``; an
incomplete run is listed in the report, never dropped silently.

Writes to REPORT_DIR: report.md, report.html (self-contained: figures embedded as
base64 PNG), summary.csv, label_efficiency.png, confusion_<arm>_<frac>.png and
gradcam_<frac>.png.

Statistics per (protocol, init, mode, label_frac), over seeds: mean, std with
ddof=1 (0 for one seed), and the 95% CI half-width t_{0.975, n-1} * std / sqrt(n)
(scipy.stats.t). With one seed the CI is unknown: blank in summary.csv, "(1 seed)"
in the tables. protocol is metrics.json's resolved ``group_by`` (subject|auto|image), with
``, N subj./class`` added for a ``--label-subjects N`` run.
"""
from __future__ import annotations

import argparse
import csv
import io
import math
import re
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from simclr_ad import clinical, comparison, evaluate, plots
from simclr_ad.ablation import write_ablation
from simclr_ad.camstudy import CamStudy, gradcam_study
from simclr_ad.document import Document, write_run_md
from simclr_ad.errors import friendly_errors
from simclr_ad.fileio import atomic_write_bytes, atomic_write_text
from simclr_ad.runlog import read_records
from simclr_ad.runs import METRICS, ReportError, Run, copy_pretrain_records, copy_run_records, find_runs, sort_key
from simclr_ad.stats import fixed_percent, mean_std_ci95, percent

__all__ = ["ReportError", "find_runs", "mean_std_ci95", "summarise", "consistency_warnings", "validation_curves",
           "build_document", "main", "run"]

SUBJECT_METRICS = tuple(f"subject_{m}" for m in METRICS)
CLINICAL_METRICS = tuple(f"{level}{m}" for level in ("", "subject_") for m in
                         ("auroc", "ece", "sensitivity", "specificity", "threshold_balanced_accuracy"))
METRIC_TITLES = {"balanced_accuracy": "Balanced accuracy", "accuracy": "Accuracy", "macro_f1": "Macro-F1"}
REFERENCE_MODE = plots.REFERENCE_MODE  # the mode of simclr_ad.baselines' runs
SETTING_KEYS = ("arch", "image_size", "epochs", "task", "data", "pretrain_on", "encoder_sha256",  # agree within a cell
                "label_unit", "label_subjects", "n_folds", "split_seed")



# --------------------------------------------------------------------------- statistics

def summary_columns() -> list[str]:
    return ["protocol", "init", "mode", "label_frac", "n_seeds",
            *[f"{m}_{s}" for m in (*METRICS, *SUBJECT_METRICS, "val_balanced_accuracy", *CLINICAL_METRICS)
              for s in ("mean", "std", "ci95")], "n_train", "n_train_subjects",
            *[f"chance_{m}" for m in (*METRICS, *SUBJECT_METRICS)]]


def is_reference(row_or_mode: dict | str) -> bool:
    """A reference baseline (simclr_ad.baselines), not a trained arm."""
    mode = row_or_mode if isinstance(row_or_mode, str) else row_or_mode["mode"]
    return mode == REFERENCE_MODE


def chance_of(run: Run) -> dict[str, float]:
    """Chance levels of the run's test split (slice and, where recorded, subject level)."""
    if not run.metrics.get("confusion_matrix"):
        return {}
    out = {f"chance_{k}": v for k, v in evaluate.chance_levels(run.metrics["confusion_matrix"]).items()}
    if run.metrics.get("subject_confusion_matrix"):
        out.update({f"chance_subject_{k}": v
                    for k, v in evaluate.chance_levels(run.metrics["subject_confusion_matrix"]).items()})
    return out


def _cells(runs: Iterable[Run]) -> dict[tuple[str, str, str, float], list[Run]]:
    cells: dict[tuple[str, str, str, float], list[Run]] = {}
    for run in runs:
        cells.setdefault((run.protocol, run.init, run.mode, run.label_frac), []).append(run)
    return dict(sorted(cells.items(), key=lambda kv: sort_key(*kv[0])))


def summarise(runs: Iterable[Run]) -> list[dict[str, Any]]:
    """One row per (protocol, init, mode, label_frac) of complete runs; blank where a metric is absent."""
    rows = []
    for (protocol, init, mode, frac), members in _cells(r for r in runs if r.complete).items():
        row: dict[str, Any] = {"protocol": protocol, "init": init, "mode": mode, "label_frac": frac,
                               "n_seeds": len(members)}
        for metric in (*METRICS, *SUBJECT_METRICS, "val_balanced_accuracy", *CLINICAL_METRICS):
            values = [float(r.metrics[metric]) for r in members if isinstance(r.metrics.get(metric), (int, float))]
            mean, std, ci = mean_std_ci95(values) if values else ("", "", "")
            row.update({f"{metric}_mean": mean, f"{metric}_std": std, f"{metric}_ci95": "" if ci is None else ci})
        row.update({f"chance_{m}": "" for m in (*METRICS, *SUBJECT_METRICS)})
        chances = [chance_of(r) for r in members]  # one test split per fold: the mean over the members'
        row.update({k: float(np.mean([c[k] for c in chances if k in c])) for k in chances[0]})
        for key in ("n_train", "n_train_subjects"):  # they differ between folds: shown as a range
            values = sorted({int(r.get(key)) for r in members if r.get(key) is not None})
            row[key] = "" if not values else str(values[0]) if len(values) == 1 else f"{values[0]}-{values[-1]}"
        rows.append(row)
    return rows


def write_summary_csv(rows: Sequence[dict[str, Any]], path: Path) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=summary_columns(), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def consistency_warnings(runs: Sequence[Run]) -> list[str]:
    """Cells that mix settings (arch, data, ...) or count one seed twice: their statistics mislead."""
    notes = []
    for (protocol, init, mode, frac), members in _cells(r for r in runs if r.complete).items():
        cell = f"{plots.arm_label(init, mode)} at {plots.percent_labels(frac)} labels ({protocol})"
        for key in SETTING_KEYS:
            values = sorted({str(r.get(key)) for r in members})
            if len(values) > 1:
                notes.append(f"{cell} mixes {key} = {', '.join(values)}")
        repeated = sorted(s for s, n in Counter((r.seed, r.get("fold")) for r in members).items() if n > 1)
        if repeated:
            notes.append(f"{cell} counts (seed, fold) {repeated} more than once (same run in two --runs dirs?)")
        if len({r.get("fold") is None for r in members}) > 1:
            notes.append(f"{cell} mixes single-split runs with k-fold runs: their test subjects overlap")
    return notes


# --------------------------------------------------------------------------- figures

def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "x"


def arm_tag(init: str, mode: str) -> str:
    """File-name part of an arm: the init, plus the mode unless it is finetune."""
    return _safe(init if mode == "finetune" else f"{init}-{mode}")


def confusion_figures(runs: Sequence[Run]) -> dict[str, bytes]:
    """confusion_<arm>_<frac>[_<protocol>].png: the SUM of the runs' test confusion matrices, in clinical order.

    Every seed of a cell is scored on the same test split (with folds: each subject once per seed), so
    the summed counts are n_seeds x the test set, and the sum's row-normalised panel equals the mean of
    the seeds' per-class recalls. (_<protocol> is added only when several protocols exist.)
    """
    complete = [r for r in runs if r.complete and not is_reference(r.mode)]  # baselines: see their tables
    several = len({r.protocol for r in complete}) > 1
    figures = {}
    for (protocol, init, mode, frac), members in _cells(complete).items():
        usable = [r for r in members if r.metrics.get("confusion_matrix") is not None]
        classes = usable[0].metrics.get("classes") if usable else None
        usable = [r for r in usable if r.metrics.get("classes") == classes]
        if not usable or not classes:
            continue
        total, classes = clinical.reorder_confusion(  # clinical order, e.g. Non -> Very mild -> Mild -> Moderate
            np.sum([np.asarray(r.metrics["confusion_matrix"], dtype=np.int64) for r in usable], axis=0), classes,
            usable[0].config.get("class_order") or ())
        name = f"confusion_{arm_tag(init, mode)}_{frac:g}" + (f"_{_safe(protocol)}" if several else "") + ".png"
        title = (f"{plots.arm_label(init, mode)}, {plots.percent_labels(frac)} labels, {protocol}: test confusion, "
                 f"sum over {len(usable)} seed(s)")
        figures[name] = plots.png_bytes(plots.confusion_figure(total, classes, title))
    return figures


# --------------------------------------------------------------------------- Grad-CAM study

def validation_curves(runs: Sequence[Run]) -> dict[str, list[tuple[int, float]]]:
    """Validation balanced accuracy per epoch, per protocol and arm, at that protocol's largest label fraction.

    One run per line (the lowest seed): the curve shows whether the model kept improving on held-out
    images (undertrained) or peaked early while training went on (fitting the training subjects).
    """
    curves: dict[str, list[tuple[int, float]]] = {}
    done = sorted((r for r in runs if r.complete), key=lambda r: (sort_key(r.protocol, r.init, r.mode), r.seed))
    for protocol in dict.fromkeys(r.protocol for r in done):
        top = max(r.label_frac for r in done if r.protocol == protocol)
        for run in (r for r in done if r.protocol == protocol and r.label_frac == top):
            name = f"{plots.arm_label(run.init, run.mode)}, group_by={protocol}, {plots.percent_labels(top)} labels"
            log = run.path / "metrics.jsonl"
            if name in curves or not log.is_file():
                continue
            records = read_records(log)
            curves[name] = [(int(r["epoch"]), float(r["val_balanced_accuracy"])) for r in records
                            if "val_balanced_accuracy" in r]
    return curves


# --------------------------------------------------------------------------- document

def _arms(rows: Sequence[dict]) -> list[tuple[str, str]]:
    arms = {(r["init"], r["mode"]) for r in rows}
    return sorted(arms, key=lambda a: sort_key("", *a))


def _fracs(rows: Sequence[dict]) -> list[float]:
    return sorted({float(r["label_frac"]) for r in rows})


def best_reference(rows: Sequence[dict], frac: float) -> dict | None:
    """The reference baseline a network must beat at ``frac``: highest validation balanced accuracy."""
    refs = [r for r in rows if is_reference(r) and math.isclose(float(r["label_frac"]), frac)
            and r.get("val_balanced_accuracy_mean") not in ("", None)]
    return max(refs, key=lambda r: (float(r["val_balanced_accuracy_mean"]), r["init"]), default=None)


def plot_rows(rows: Sequence[dict]) -> list[dict]:
    """The trained arms, plus per protocol and fraction the best reference baseline as one line.
    Absolute budgets ("subject, N subj./class") have no fraction to plot: they are in the tables only."""
    rows = [r for r in rows if "," not in r["protocol"]]
    out = [r for r in rows if not is_reference(r)]
    for protocol in {r["protocol"] for r in rows}:
        mine = [r for r in rows if r["protocol"] == protocol]
        for frac in _fracs(mine):
            ref = best_reference(mine, frac)
            if ref:
                out.append({**ref, "init": "best reference (chosen on val)"})
    return out


def _results_tables(doc: Document, rows: Sequence[dict]) -> None:
    """Per protocol and metric: label fraction x arm, slice level with subject level beside it,
    then the best reference baseline (chosen on validation) and the test split's chance level."""
    for protocol in sorted({r["protocol"] for r in rows}, key=lambda p: sort_key(p, "", "")):
        mine = [r for r in rows if r["protocol"] == protocol]
        by_cell = {(r["init"], r["mode"], float(r["label_frac"])): r for r in mine}
        subject = any(r["subject_balanced_accuracy_mean"] != "" for r in mine)
        n_full = max(r["n_seeds"] for r in mine)
        arms = [a for a in _arms(mine) if not is_reference(a[1])]
        levels = ["", "subject_"] if subject else [""]
        header = ["labels"] + [f"{plots.arm_label(*a)}{' (subject)' if level else (' (slice)' if subject else '')}"
                               for level in levels for a in arms] + \
            [f"{name}{' (subject)' if level else (' (slice)' if subject else '')}"
             for level in levels for name in ("best reference", "chance")]
        for metric in ("balanced_accuracy", "accuracy", "macro_f1"):
            doc.heading(3, f"{METRIC_TITLES[metric]}, protocol group_by={protocol} (%, mean ± 95% CI over seeds)")
            table = []
            for frac in _fracs(mine):
                cells = [by_cell.get((*a, frac)) for a in arms]
                ref = best_reference(mine, frac)
                any_row = next((r for r in mine if math.isclose(float(r["label_frac"]), frac)), {})
                line = [f"{plots.percent_labels(frac)} ({_budget(any_row)})"]
                for level in levels:
                    line += [percent(c[f"{level}{metric}_mean"], c[f"{level}{metric}_ci95"], c["n_seeds"], n_full)
                             if c else "–" for c in cells]
                for level in levels:
                    line += [f"{ref['init']}: {percent(ref[f'{level}{metric}_mean'], ref[f'{level}{metric}_ci95'], ref['n_seeds'], n_full)}"
                             if ref else "–", fixed_percent(any_row.get(f"chance_{level}{metric}"))]
                table.append(line)
            doc.table(header, table)
        _reference_table(doc, mine, protocol)


def _budget(row: dict) -> str:
    """'n subj. / n slices' labelled, leaving out what the cell's runs did not record (counts differ between folds)."""
    parts = [f"{row[key]} {unit}" for key, unit in (("n_train_subjects", "subj."), ("n_train", "slices")) if row.get(key)]
    return " / ".join(parts) or "count unknown"


def _reference_table(doc: Document, rows: Sequence[dict], protocol: str) -> None:
    """Every reference baseline's test balanced accuracy (validation in brackets) per label fraction."""
    refs = sorted({r["init"] for r in rows if is_reference(r)})
    if not refs:
        doc.para(f"No reference baselines for group_by={protocol}: run `python -m simclr_ad.baselines` on the same "
                 "split to see what a network must beat.")
        return
    by_cell = {(r["init"], float(r["label_frac"])): r for r in rows if is_reference(r)}
    doc.heading(3, f"Reference baselines, group_by={protocol}: test balanced accuracy % [validation]")
    table = []
    for frac in _fracs(rows):
        line = [plots.percent_labels(frac)]
        for name in refs:
            r = by_cell.get((name, frac))
            line.append(f"{fixed_percent(r['balanced_accuracy_mean'])} [{fixed_percent(r['val_balanced_accuracy_mean'])}]"
                        if r else "–")
        table.append(line)
    doc.table(["labels", *refs], table)


def _inflation_tables(doc: Document, rows: Sequence[dict]) -> None:
    protocols = {r["protocol"] for r in rows}
    grouped = [p for p in sorted(protocols, key=lambda p: sort_key(p, "", "")) if p != "image" and "," not in p]
    # ("subject, N subj./class" cells have an absolute budget: no image-split cell is their counterpart)
    if "image" not in protocols or not grouped:
        doc.para("Only one protocol present"
                 + (f" ({', '.join(sorted(protocols))})" if protocols else "")
                 + ": no image-level vs grouped comparison.")
        return
    by_cell = {(r["protocol"], r["init"], r["mode"], float(r["label_frac"])): r for r in rows}
    for other in grouped:
        for metric in ("balanced_accuracy", "accuracy"):
            arms = [a for a in _arms(rows) if any((p, *a, f) in by_cell for p in ("image", other)
                                                  for f in _fracs(rows))]
            header = ["labels"] + [f"{plots.arm_label(*a)}: {col}" for a in arms for col in ("image", other, "Δ")]
            table = []
            for frac in _fracs(rows):
                line = [plots.percent_labels(frac)]
                for arm in arms:
                    a, b = by_cell.get(("image", *arm, frac)), by_cell.get((other, *arm, frac))
                    ma = a[f"{metric}_mean"] if a else ""
                    mb = b[f"{metric}_mean"] if b else ""
                    line += [f"{100 * ma:.1f}" if ma != "" else "–", f"{100 * mb:.1f}" if mb != "" else "–",
                             f"{100 * (ma - mb):+.1f}" if ma != "" and mb != "" else "–"]
                table.append(line)
            doc.heading(3, f"{METRIC_TITLES[metric]}: image-level split minus group_by={other} (points)")
            doc.table(header, table)


def _protocol_table(doc: Document, runs: Sequence[Run]) -> None:
    complete = [r for r in runs if r.complete]
    protocols = sorted({r.protocol for r in complete}, key=lambda p: sort_key(p, "", ""))
    keys = ("group_by", "split_seed", "n_folds", "pretrain_on", "arch", "image_size", "epochs", "task", "git_sha",
            "data", "label_unit", "n_train", "n_train_subjects")
    table = []
    for key in keys:
        line = [key]
        for protocol in protocols:
            values = [r.get(key) for r in complete if r.protocol == protocol]
            shown = sorted({str(v) for v in values if v is not None}, key=lambda v: (len(v), v))
            line.append(", ".join(shown) if len(shown) <= 6 else f"{shown[0]} … {shown[-1]} ({len(shown)} values)")
        table.append(line)
    table.append(["complete runs"] + [str(sum(r.protocol == p for r in complete)) for p in protocols])
    doc.table(["key"] + [f"protocol {p}" for p in protocols], table)


def _fixed(value: Any, digits: int) -> str:
    """A number with ``digits`` decimals; '–' for a missing or nan one (e.g. no non-empty mask)."""
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _ratio(value: Any, chance: Any) -> float:
    """``value / chance``; nan when either is missing, nan or the chance is 0."""
    try:
        return float(value) / float(chance) if float(chance) > 0 else math.nan
    except (TypeError, ValueError):
        return math.nan


def _gradcam_part(doc: Document, study: CamStudy) -> None:
    doc.heading(2, "Grad-CAM")
    doc.para("For each label fraction with both a simclr and a random finetune run (seed 0 preferred), the same "
             "test images (the first N per true class in predictions.csv order; images = the grid's) are explained "
             "for each arm's predicted class (GradCAM at the run's cam_layer; auto: models.target_layer). Faithfulness uses "
             "grad-cam's metrics on softmax "
             "confidence: ROAD combined (higher = more faithful), drop in confidence when the image is multiplied "
             "by the CAM (lower = better) and the share of images whose confidence rises. Localisation = share of "
             "CAM mass inside the ground-truth atrophy mask, over more test images than the grid (--gradcam-scored-per-class "
             "per class), those with a non-empty mask (masks); chance = the "
             "masks' mean area share (what a uniform map scores); × chance = their ratio.")
    if study.rows:
        has_masks = any("localisation" in r for r in study.rows)
        header = ["labels", "arm", "seed", "layer", "images", "ROAD combined ↑", "drop in conf. ↓",
                  "increase in conf."] + (["localisation ↑", "chance", "× chance", "masks"] if has_masks else [])
        table = []
        for r in study.rows:
            line = [plots.percent_labels(r["label_frac"]), r["arm"], r["seed"], r.get("cam_layer", "auto"), r["n_images"],
                    _fixed(r["road_combined"], 4),
                    _fixed(r["drop_in_confidence"], 4), _fixed(r["increase_in_confidence"], 2)]
            if has_masks:
                line += [_fixed(r.get("localisation"), 3), _fixed(r.get("localisation_chance"), 3),
                         _fixed(_ratio(r.get("localisation"), r.get("localisation_chance")), 1), r.get("n_masks", 0)]
            table.append(line)
        doc.table(header, table)
    for name in sorted(study.figures, key=lambda n: float(n[len("gradcam_"):-len(".png")])):
        doc.figure(name, f"Grad-CAM grid {name}")
    if study.notes:
        doc.items(study.notes)


def build_document(runs: Sequence[Run], rows: Sequence[dict], figures: dict[str, bytes], study: CamStudy,
                   roots: Sequence[str], clinical_study: comparison.ClinicalStudy | None = None) -> Document:
    doc = Document(figures)
    missing = [r for r in runs if not r.complete]
    doc.heading(1, "simclr_ad fine-tuning report")
    doc.para(f"Runs from {', '.join(map(str, roots))}: {len(runs) - len(missing)} complete, {len(missing)} "
             "missing or partial. Columns of summary.csv: mean, std (ddof=1) and 95% CI half-width "
             "t(0.975, n-1)·std/√n over seeds; with one seed the CI is unknown (blank). Test metrics of the model "
             "selected on validation balanced accuracy.")
    doc.heading(2, "Protocol")
    _protocol_table(doc, runs)
    clinical_study = clinical_study or comparison.ClinicalStudy()
    comparison.headline_part(doc, clinical_study)
    doc.heading(2, "Results")
    _results_tables(doc, rows)
    comparison.clinical_part(doc, clinical_study)
    doc.heading(2, "Split inflation")
    _inflation_tables(doc, rows)
    doc.heading(2, "Figures")
    doc.figure("label_efficiency.png", "Balanced accuracy vs label fraction (95% CI band over seeds)")
    doc.figure("val_curves.png", "Validation balanced accuracy per fine-tuning epoch at the largest label fraction "
               "(lowest seed): still rising means undertrained; an early peak means the rest fit the training set")
    for name in sorted(n for n in figures if n.startswith("confusion_")):
        doc.figure(name, f"{name}: test confusion matrix summed over seeds")
    _gradcam_part(doc, study)
    warnings_list = consistency_warnings(runs)
    if warnings_list:
        doc.heading(2, "Warnings")
        doc.items(warnings_list)
    doc.heading(2, "Missing or partial runs")
    if missing:
        doc.table(["run dir", "init", "mode", "labels", "seed", "problem"],
                  [[str(r.path), r.init, r.mode, f"{r.label_frac:g}", r.seed, r.problem] for r in missing])
    else:
        doc.para("None.")
    return doc


def pretrain_curve(run_dir: Path, dest: Path) -> bytes | None:
    """Copy a pretrain run's config.yaml/metrics.jsonl to ``dest`` and plot its curve (None if absent)."""
    log = run_dir / "metrics.jsonl"
    if not log.is_file():
        return None
    copy_pretrain_records(run_dir, dest)
    return plots.png_bytes(plots.pretrain_curve_figure(read_records(log)))


# --------------------------------------------------------------------------- entry point

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m simclr_ad.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", action="append", default=[], metavar="DIR", help="dir of fine-tune runs")
    parser.add_argument("--out", required=True, metavar="REPORT_DIR", help="where the report and its figures go")
    parser.add_argument("--gradcam-per-class", type=int, default=2, metavar="N",
                        help="test images per class in each Grad-CAM grid and its faithfulness scores")
    parser.add_argument("--gradcam-scored-per-class", type=int, default=32, metavar="N",
                        help="test images per class the localisation score averages over (data with masks)")
    parser.add_argument("--no-gradcam", action="store_true", help="skip the Grad-CAM study (fast)")
    parser.add_argument("--pretrain", default=None, metavar="RUN_DIR",
                        help="a pretrain run: its loss/kNN curve goes into the report, its logs into REPORT_DIR")
    parser.add_argument("--copy-runs", action="store_true",
                        help="copy every run's metrics.json, metrics.jsonl and config.yaml into REPORT_DIR/runs/")
    parser.add_argument("--redact-paths", action="store_true",
                        help="with --copy-runs, records fit to commit from real data: trained runs' test "
                             "predictions only, each image named by a sha1: key of its path, not its file name")
    parser.add_argument("--ablation", default=None, metavar="DIR",
                        help="pretraining variants DIR/<name>/{pretrain,finetune}: writes ablation.md instead")
    parser.add_argument("--stages", default=None, metavar="TSV",
                        help="stage log of scripts/real_results.sh: written as RUN.md in REPORT_DIR")
    parser.add_argument("--num-threads", type=int, default=0, metavar="N",
                        help="torch CPU threads (0: torch's default; 1 is fastest on a busy shared CPU)")
    return parser


def run(runs: Sequence[str] = (), out: str | Path = "report", gradcam_per_class: int = 2, no_gradcam: bool = False,
        pretrain: str | None = None, copy_runs: bool = False, redact_paths: bool = False,
        ablation: str | None = None, stages: str | None = None, num_threads: int = 0,
        gradcam_scored_per_class: int = 32) -> Path:
    """The report of fine-tune runs under ``runs`` (or of an ablation, or of a pretrain run alone) in ``out``.

    The keyword arguments are the command line's flags (``python -m simclr_ad.report --help``).
    """
    if gradcam_per_class < 1 or gradcam_scored_per_class < 1:
        raise ReportError("--gradcam-per-class and --gradcam-scored-per-class must be >= 1")
    if redact_paths and not copy_runs:
        raise ReportError("--redact-paths applies to the copied records: give --copy-runs too")
    if num_threads > 0:
        torch.set_num_threads(num_threads)
    out = Path(out)
    if stages:
        write_run_md(Path(stages), out / "RUN.md")
    if ablation:
        print(f"ablation: {write_ablation(Path(ablation), out)}")
        return out
    if not runs and pretrain:  # pretraining only: its curve and logs
        curve = pretrain_curve(Path(pretrain), out / "pretrain")
        if curve is None:
            raise ReportError(f"no metrics.jsonl in pretrain run {pretrain}")
        atomic_write_bytes(out / "pretrain_curve.png", curve)
        print(f"pretraining curve: {out / 'pretrain_curve.png'}")
        return out
    if not runs:
        raise ReportError("give --runs DIR (fine-tune runs) and/or --pretrain RUN_DIR")
    return write_report(list(runs), out, (gradcam_per_class, gradcam_scored_per_class), no_gradcam, pretrain,
                        copy_runs, redact_paths)


def write_report(roots: list[str], out: Path, gradcam_images: tuple[int, int], no_gradcam: bool, pretrain: str | None,
                 copy_runs: bool, redact_paths: bool = False) -> Path:
    """report.md, report.html, summary.csv and the figures of the fine-tune runs under ``roots``.

    ``gradcam_images``: test images per class in the Grad-CAM grids, and in the localisation score."""
    # ---------------------------------------------------------------- runs and statistics
    runs = find_runs(roots)
    if not runs:
        raise ReportError(f"no fine-tune runs (dirs with a finetune config.yaml) under {', '.join(roots)}")
    rows = summarise(runs)
    write_summary_csv(rows, out / "summary.csv")
    if copy_runs:
        copy_run_records(runs, roots, out / "runs", redact_paths)

    # ---------------------------------------------------------------- figures
    figures = {"label_efficiency.png": plots.png_bytes(plots.label_efficiency_figure(plot_rows(rows))),
               "val_curves.png": plots.png_bytes(plots.curves_figure(validation_curves(runs), "fine-tuning epoch",
                                                                     "validation balanced accuracy",
                                                                     "validation curve at the largest label fraction"))}
    curve = pretrain_curve(Path(pretrain), out / "pretrain") if pretrain else None
    if curve:
        figures["pretrain_curve.png"] = curve
    figures.update(confusion_figures(runs))
    clinical_study = comparison.clinical_study(runs)
    figures.update(clinical_study.figures)
    if clinical_study.subjects_csv:
        atomic_write_text(out / "subjects.csv", clinical_study.subjects_csv)
    study = CamStudy(notes=["skipped (--no-gradcam)"]) if no_gradcam else gradcam_study(runs, *gradcam_images)
    figures.update(study.figures)
    for name, png in figures.items():
        atomic_write_bytes(out / name, png)

    # ---------------------------------------------------------------- report
    doc = build_document(runs, rows, figures, study, roots, clinical_study)
    if curve:
        doc.heading(2, "Pretraining")
        doc.figure("pretrain_curve.png", f"SimCLR loss and kNN monitor of {pretrain}")
    atomic_write_text(out / "report.md", doc.markdown())
    atomic_write_text(out / "report.html", doc.html("simclr_ad report"))
    print(f"report: {out / 'report.md'} ({sum(r.complete for r in runs)} complete run(s), "
          f"{sum(not r.complete for r in runs)} missing/partial)")
    return out


@friendly_errors
def main(argv: list[str] | None = None) -> Path:
    """``python -m simclr_ad.report``: the flags, then ``run``."""
    return run(**vars(build_parser().parse_args(argv)))


if __name__ == "__main__":
    main()
