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
in the tables. protocol is metrics.json's resolved ``group_by`` (subject|auto|image).
"""
from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import html
import io
import json
import math
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
import yaml
from scipy import stats

from simclr_ad import augment, evaluate, gradcam, plots, runtime
from simclr_ad.fileio import atomic_write_bytes, atomic_write_text
from simclr_ad.errors import UserError, friendly_errors
from simclr_ad.runlog import RECORD_FILES, read_records

METRICS = ("accuracy", "balanced_accuracy", "macro_f1")
SUBJECT_METRICS = tuple(f"subject_{m}" for m in METRICS)
METRIC_TITLES = {"balanced_accuracy": "Balanced accuracy", "accuracy": "Accuracy", "macro_f1": "Macro-F1"}
PROTOCOL_ORDER = ("subject", "auto", "default", "image")  # grouped protocols first: they are the honest ones
INIT_ORDER = ("simclr", "imagenet", "random")
MODE_ORDER = ("finetune", "linear", "reference")
REFERENCE_MODE = plots.REFERENCE_MODE  # the mode of simclr_ad.baselines' runs
SETTING_KEYS = ("arch", "image_size", "epochs", "task", "data", "pretrain_on", "encoder_sha256")  # agree within a cell
DATA_KEYS = ("data_dir", "synth_n", "synth_seed", "synth_slices", "synth_min_subjects", "image_size", "cache_dir")


class ReportError(UserError):
    pass


# --------------------------------------------------------------------------- runs

@dataclass
class Run:
    """One fine-tune run directory; ``metrics`` is None while it is incomplete."""

    path: Path
    config: dict[str, Any]
    metrics: dict[str, Any] | None = None
    problem: str | None = None  # why it is incomplete

    @property
    def complete(self) -> bool:
        return self.metrics is not None

    def get(self, key: str, default: Any = None) -> Any:
        """metrics.json first (what the run resolved), then config.yaml."""
        for source in (self.metrics or {}, self.config):
            if source.get(key) is not None:
                return source[key]
        return default

    @property
    def protocol(self) -> str:
        return str(self.get("group_by", "?"))

    @property
    def init(self) -> str:
        return str(self.get("init", "?"))

    @property
    def mode(self) -> str:
        return str(self.get("mode", "?"))

    @property
    def label_frac(self) -> float:
        return float(self.get("label_frac", float("nan")))

    @property
    def seed(self) -> int:
        return int(self.get("seed", -1))


def _read_metrics(path: Path) -> tuple[dict | None, str | None]:
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        return None, f"metrics.json unreadable ({type(err).__name__}: {str(err)[:120]})"
    if not isinstance(metrics, dict):
        return None, "metrics.json does not hold a mapping"
    absent = [k for k in (*METRICS, "init", "mode", "label_frac") if metrics.get(k) is None]
    if absent:
        return None, f"metrics.json lacks {', '.join(absent)}"
    return metrics, None


def _read_run(run_dir: Path) -> Run | None:
    """The run in ``run_dir``, or None when its config.yaml is not a single fine-tune run's."""
    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
    except (OSError, yaml.YAMLError) as err:
        return Run(run_dir, {}, problem=f"config.yaml unreadable ({type(err).__name__})")
    if not isinstance(config, dict) or "label_frac" not in config or config.get("sweep") is True:
        return None
    if not (run_dir / "metrics.json").is_file():
        problem = ("no metrics.json: interrupted (last.pt present; re-running finetune resumes it)"
                   if (run_dir / "last.pt").is_file() else "no metrics.json: not started or failed early")
        return Run(run_dir, config, problem=problem)
    metrics, problem = _read_metrics(run_dir / "metrics.json")
    return Run(run_dir, config, metrics, problem)


def _records_key(run_dir: Path) -> bytes:
    """The run's record files' bytes: a copy (``--copy-runs``) of a run has the same ones."""
    digest = hashlib.sha256()
    for name in RECORD_FILES:
        path = run_dir / name
        digest.update(name.encode() + b"\0" + (path.read_bytes() if path.is_file() else b"") + b"\0")
    return digest.digest()


def _originality(run_dir: Path) -> tuple[bool, int]:
    """Originals hold predictions and checkpoints; copies only records, nested deeper (REPORT/runs/...)."""
    return (run_dir / "predictions.csv").is_file() or (run_dir / "best.pt").is_file(), -len(run_dir.resolve().parts)


def find_runs(roots: Sequence[str | Path]) -> list[Run]:
    """Every fine-tune run dir under ``roots`` (recursively), complete or not, each once.

    A run found twice, as itself and as a copy of its records (a report's ``--copy-runs``
    inside a runs dir), counts once: the copy would add a seed that was never run. The
    original (with its checkpoints and predictions) is kept.
    """
    runs, seen, by_records = [], set(), {}
    for root in map(Path, roots):
        if not root.is_dir():
            raise ReportError(f"runs dir not found: {root}")
        for config_file in sorted(root.rglob("config.yaml")):
            run_dir = config_file.parent
            if run_dir.resolve() in seen:
                continue
            seen.add(run_dir.resolve())
            run = _read_run(run_dir)
            if run is None:
                continue
            key = _records_key(run_dir)
            if key in by_records:
                kept = by_records[key]
                if _originality(run_dir) > _originality(runs[kept].path):
                    runs[kept] = run
                continue
            by_records[key] = len(runs)
            runs.append(run)
    return runs


# --------------------------------------------------------------------------- statistics

def mean_std_ci95(values: Sequence[float]) -> tuple[float, float, float | None]:
    """Mean, std (ddof=1; 0 for one value) and the 95% CI half-width t_{.975,n-1}*std/sqrt(n) (None for n=1)."""
    x = np.asarray(values, dtype=np.float64)
    if len(x) == 0:
        raise ValueError("no values")
    if len(x) == 1:
        return float(x[0]), 0.0, None
    std = float(x.std(ddof=1))
    return float(x.mean()), std, float(stats.t.ppf(0.975, len(x) - 1) * std / math.sqrt(len(x)))


def _sort_key(protocol: str, init: str, mode: str, frac: float = 0.0) -> tuple:
    def rank(value: str, order: Sequence[str]) -> tuple[int, str]:
        return (order.index(value) if value in order else len(order), value)

    return rank(protocol, PROTOCOL_ORDER), rank(init, INIT_ORDER), rank(mode, MODE_ORDER), frac


def summary_columns() -> list[str]:
    return ["protocol", "init", "mode", "label_frac", "n_seeds",
            *[f"{m}_{s}" for m in (*METRICS, *SUBJECT_METRICS, "val_balanced_accuracy") for s in ("mean", "std", "ci95")],
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
    return dict(sorted(cells.items(), key=lambda kv: _sort_key(*kv[0])))


def summarise(runs: Iterable[Run]) -> list[dict[str, Any]]:
    """One row per (protocol, init, mode, label_frac) of complete runs; blank where a metric is absent."""
    rows = []
    for (protocol, init, mode, frac), members in _cells(r for r in runs if r.complete).items():
        row: dict[str, Any] = {"protocol": protocol, "init": init, "mode": mode, "label_frac": frac,
                               "n_seeds": len(members)}
        for metric in (*METRICS, *SUBJECT_METRICS, "val_balanced_accuracy"):
            values = [float(r.metrics[metric]) for r in members if isinstance(r.metrics.get(metric), (int, float))]
            mean, std, ci = mean_std_ci95(values) if values else ("", "", "")
            row.update({f"{metric}_mean": mean, f"{metric}_std": std, f"{metric}_ci95": "" if ci is None else ci})
        row.update({f"chance_{m}": "" for m in (*METRICS, *SUBJECT_METRICS)})
        row.update(chance_of(members[0]))  # one split per protocol: every member has the same test set
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
        cell = f"{plots.arm_label(init, mode)} at {percent_labels(frac)} labels ({protocol})"
        for key in SETTING_KEYS:
            values = sorted({str(r.get(key)) for r in members})
            if len(values) > 1:
                notes.append(f"{cell} mixes {key} = {', '.join(values)}")
        repeated = sorted(s for s, n in Counter(r.seed for r in members).items() if n > 1)
        if repeated:
            notes.append(f"{cell} counts seed(s) {repeated} more than once (same run in two --runs dirs?)")
    return notes


# --------------------------------------------------------------------------- figures

def png_bytes(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def percent_labels(frac: Any) -> str:
    """0.1 -> '10%' (as the tables and titles show label fractions)."""
    try:
        return f"{100 * float(frac):g}%"
    except (TypeError, ValueError):
        return str(frac)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "x"


def arm_tag(init: str, mode: str) -> str:
    """File-name part of an arm: the init, plus the mode unless it is finetune."""
    return _safe(init if mode == "finetune" else f"{init}-{mode}")


def confusion_figures(runs: Sequence[Run]) -> dict[str, bytes]:
    """confusion_<arm>_<frac>[_<protocol>].png: the SUM of the seeds' test confusion matrices.

    Every seed of a cell is scored on the same test split, so the summed counts are
    n_seeds x the test set, and the sum's row-normalised panel equals the mean of the
    seeds' per-class recalls. (_<protocol> is added only when several protocols exist.)
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
        total = np.sum([np.asarray(r.metrics["confusion_matrix"], dtype=np.int64) for r in usable], axis=0)
        name = f"confusion_{arm_tag(init, mode)}_{frac:g}" + (f"_{_safe(protocol)}" if several else "") + ".png"
        title = (f"{plots.arm_label(init, mode)}, {percent_labels(frac)} labels, {protocol}: test confusion, "
                 f"sum over {len(usable)} seed(s)")
        figures[name] = png_bytes(plots.confusion_figure(total, classes, title))
    return figures


# --------------------------------------------------------------------------- Grad-CAM study

@dataclass
class CamStudy:
    rows: list[dict[str, Any]] = field(default_factory=list)  # one per (frac, arm)
    figures: dict[str, bytes] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def validation_curves(runs: Sequence[Run]) -> dict[str, list[tuple[int, float]]]:
    """Validation balanced accuracy per epoch, per protocol and arm, at that protocol's largest label fraction.

    One run per line (the lowest seed): the curve shows whether the model kept improving on held-out
    images (undertrained) or peaked early while training went on (fitting the training subjects).
    """
    curves: dict[str, list[tuple[int, float]]] = {}
    done = sorted((r for r in runs if r.complete), key=lambda r: (_sort_key(r.protocol, r.init, r.mode), r.seed))
    for protocol in dict.fromkeys(r.protocol for r in done):
        top = max(r.label_frac for r in done if r.protocol == protocol)
        for run in (r for r in done if r.protocol == protocol and r.label_frac == top):
            name = f"{plots.arm_label(run.init, run.mode)}, group_by={protocol}, {percent_labels(top)} labels"
            log = run.path / "metrics.jsonl"
            if name in curves or not log.is_file():
                continue
            records = read_records(log)
            curves[name] = [(int(r["epoch"]), float(r["val_balanced_accuracy"])) for r in records
                            if "val_balanced_accuracy" in r]
    return curves


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
    from simclr_ad import config, data

    key = tuple(str(run.config.get(k)) for k in DATA_KEYS)
    if key not in cache:
        cfg = config.replace(config.config_from_dict(config.FinetuneConfig, run.config), progress=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # unreadable files were already reported by finetune
            cache[key] = data.load_dataset(cfg)
    return cache[key]


def _resized_masks(masks: torch.Tensor, size: int) -> np.ndarray:
    """Masks [N,H,W] at the model's input size (nearest), as the CAMs are."""
    resized = torch.nn.functional.interpolate(masks[:, None].float(), size=(size, size), mode="nearest")
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


def _cam_one_fraction(runs: Sequence[Run], protocol: str, frac: float, per_class: int, cache: dict,
                      study: CamStudy) -> None:
    from simclr_ad.predict import class_probabilities, load_classifier

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
    paths = select_images(predictions, classes, per_class, allowed)
    if not paths:
        raise ValueError("the two runs share no test image")
    truth = {row["path"]: _class_index(row["true"], classes) for row in predictions}
    true = np.array([truth[p] for p in paths])
    dataset = _dataset(arms["simclr"], cache)
    index = dataset.indices_of(paths)
    inputs = augment.prepare(dataset.images[torch.from_numpy(index)], size)
    masks = dataset.masks[torch.from_numpy(index)] if dataset.masks is not None else None
    cams, preds = {}, {}
    for init, (model, info) in models.items():
        arm = plots.arm_label(init, "finetune")
        preds[arm] = class_probabilities(model, inputs).argmax(axis=1)
        cams[arm] = gradcam.compute_cams(model, info["arch"], inputs, preds[arm])
        row = {"label_frac": frac, "protocol": protocol, "arm": arm, "seed": arms[init].seed,
               "n_images": len(paths), **gradcam.faithfulness(model, inputs, preds[arm], cams[arm])}
        study.rows.append({**row, **(_localisation(cams[arm], masks) if masks is not None else {})})
    title = f"Grad-CAM at {percent_labels(frac)} labels ({protocol}; seeds {arms['simclr'].seed}/{arms['random'].seed})"
    study.figures[f"gradcam_{frac:g}.png"] = png_bytes(
        plots.gradcam_grid_figure(gradcam.display_image(inputs), cams, true, preds, classes, title,
                                  masks=None if masks is None else _resized_masks(masks, size)))


def gradcam_study(runs: Sequence[Run], per_class: int) -> CamStudy:
    """Grad-CAM of a simclr and a random finetune run per label fraction on the same test images.

    Never raises: a failure (data dir gone, bad checkpoint, ...) becomes a note.
    """
    study, cache = CamStudy(), {}
    complete = [r for r in runs if r.complete and r.mode == "finetune"]
    for frac in sorted({r.label_frac for r in complete}):
        protocols = sorted({r.protocol for r in complete if math.isclose(r.label_frac, frac)},
                           key=lambda p: _sort_key(p, "", ""))
        protocol = next((p for p in protocols if all(_pick_run(complete, p, i, frac) for i in ("simclr", "random"))),
                        None)
        if protocol is None:
            continue
        try:
            _cam_one_fraction(complete, protocol, frac, per_class, cache, study)
        except Exception as err:  # noqa: BLE001 -- the report must survive any Grad-CAM failure
            study.notes.append(f"Grad-CAM at {percent_labels(frac)} labels failed: {type(err).__name__}: "
                               f"{str(err)[:300]}")
    if not study.rows and not study.notes:
        study.notes.append("no label fraction has both a simclr and a random finetune run with best.pt")
    return study


def log_run_figures(writer, metrics: dict, model: torch.nn.Module, arch: str, inputs: torch.Tensor,
                    targets: Sequence[int], classes: Sequence[str], true: Sequence[int] | None = None,
                    step: int | None = None) -> None:
    """Add the test confusion matrix and a Grad-CAM grid to a TensorBoard SummaryWriter.

    ``inputs`` are normalised test images [B,1,H,W] (at most 16 are drawn); ``targets``
    are the classes whose CAM is drawn (usually the predictions); ``true`` (optional)
    labels the rows with the true class and marks errors. A Grad-CAM failure is logged
    as text and warned about, never raised: it must not fail a finished run.
    """
    title = (f"{metrics.get('init')}+{metrics.get('mode')}, {percent_labels(metrics.get('label_frac'))} labels, "
             f"seed {metrics.get('seed')}: test confusion")
    writer.add_figure("test/confusion_matrix", plots.confusion_figure(metrics["confusion_matrix"], classes, title),
                      global_step=step)
    try:
        shown = slice(0, min(16, len(inputs)))
        inputs, targets = inputs[shown], [int(t) for t in list(targets)[shown]]
        cams = gradcam.compute_cams(model, arch, inputs, targets)
        arm = f"{metrics.get('init')}+{metrics.get('mode')}"
        grid = plots.gradcam_grid_figure(gradcam.display_image(inputs), {arm: cams},
                                         None if true is None else list(true)[shown], {arm: targets}, classes)
        writer.add_image("test/gradcam", plots.figure_to_rgb(grid), global_step=step, dataformats="HWC")
    except Exception as err:  # noqa: BLE001
        writer.add_text("test/gradcam_error", f"{type(err).__name__}: {err}", global_step=step)
        warnings.warn(f"Grad-CAM figure not logged: {type(err).__name__}: {err}", stacklevel=2)
    writer.flush()


# --------------------------------------------------------------------------- document

class Document:
    """Blocks rendered both as Markdown and as self-contained HTML (figures as data URIs)."""

    def __init__(self, figures: dict[str, bytes]):
        self.blocks: list[tuple[str, Any]] = []
        self.figures = figures

    def heading(self, level: int, text: str) -> None:
        self.blocks.append(("h", (level, text)))

    def para(self, text: str) -> None:
        self.blocks.append(("p", text))

    def items(self, lines: Sequence[str]) -> None:
        self.blocks.append(("ul", list(lines)))

    def table(self, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        self.blocks.append(("table", ([str(h) for h in header], [[str(c) for c in r] for r in rows])))

    def figure(self, name: str, caption: str) -> None:
        if name in self.figures:
            self.blocks.append(("img", (name, caption)))

    def markdown(self) -> str:
        out = []
        for kind, value in self.blocks:
            if kind == "h":
                out.append("#" * value[0] + " " + value[1])
            elif kind == "p":
                out.append(value)
            elif kind == "ul":
                out.append("\n".join(f"- {line}" for line in value))
            elif kind == "table":
                header, rows = value
                cell = lambda text: text.replace("|", "\\|")  # noqa: E731
                out.append("\n".join(["| " + " | ".join(map(cell, header)) + " |",
                                      "|" + "---|" * len(header),
                                      *("| " + " | ".join(map(cell, r)) + " |" for r in rows)]))
            elif kind == "img":
                out.append(f"![{value[1]}]({value[0]})")
        return "\n\n".join(out) + "\n"

    def html(self, title: str) -> str:
        esc = html.escape
        out = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{esc(title)}</title><style>"
               "body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
               "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:3px 8px;"
               "text-align:right}th{background:#eee}td:first-child{text-align:left}"
               "img{max-width:100%}code{background:#f4f4f4}</style></head><body>"]
        for kind, value in self.blocks:
            if kind == "h":
                out.append(f"<h{value[0]}>{esc(value[1])}</h{value[0]}>")
            elif kind == "p":
                out.append(f"<p>{esc(value)}</p>")
            elif kind == "ul":
                out.append("<ul>" + "".join(f"<li>{esc(line)}</li>" for line in value) + "</ul>")
            elif kind == "table":
                header, rows = value
                out.append("<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>"
                           + "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
                           + "</table>")
            elif kind == "img":
                data = base64.b64encode(self.figures[value[0]]).decode("ascii")
                out.append(f"<figure><img src='data:image/png;base64,{data}' alt='{esc(value[1])}'>"
                           f"<figcaption>{esc(value[1])}</figcaption></figure>")
        return "\n".join(out) + "\n</body></html>\n"


def _percent(mean: Any, ci: Any, n: int, n_full: int) -> str:
    if mean == "" or mean is None:
        return "–"
    text = f"{100 * mean:.1f}" + (f" ± {100 * ci:.1f}" if ci not in ("", None) else " (1 seed)")
    return text + (f" (n={n})" if n != n_full and n > 1 else "")


def _arms(rows: Sequence[dict]) -> list[tuple[str, str]]:
    arms = {(r["init"], r["mode"]) for r in rows}
    return sorted(arms, key=lambda a: _sort_key("", *a))


def _fracs(rows: Sequence[dict]) -> list[float]:
    return sorted({float(r["label_frac"]) for r in rows})


def best_reference(rows: Sequence[dict], frac: float) -> dict | None:
    """The reference baseline a network must beat at ``frac``: highest validation balanced accuracy."""
    refs = [r for r in rows if is_reference(r) and math.isclose(float(r["label_frac"]), frac)
            and r.get("val_balanced_accuracy_mean") not in ("", None)]
    return max(refs, key=lambda r: (float(r["val_balanced_accuracy_mean"]), r["init"]), default=None)


def plot_rows(rows: Sequence[dict]) -> list[dict]:
    """The trained arms, plus per protocol and fraction the best reference baseline as one line."""
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
    for protocol in sorted({r["protocol"] for r in rows}, key=lambda p: _sort_key(p, "", "")):
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
                line = [percent_labels(frac)]
                for level in levels:
                    line += [_percent(c[f"{level}{metric}_mean"], c[f"{level}{metric}_ci95"], c["n_seeds"], n_full)
                             if c else "–" for c in cells]
                for level in levels:
                    line += [f"{ref['init']}: {_percent(ref[f'{level}{metric}_mean'], ref[f'{level}{metric}_ci95'], ref['n_seeds'], n_full)}"
                             if ref else "–", _fixed_percent(any_row.get(f"chance_{level}{metric}"))]
                table.append(line)
            doc.table(header, table)
        _reference_table(doc, mine, protocol)


def _fixed_percent(value: Any) -> str:
    return "–" if value in ("", None) or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


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
        line = [percent_labels(frac)]
        for name in refs:
            r = by_cell.get((name, frac))
            line.append(f"{_fixed_percent(r['balanced_accuracy_mean'])} [{_fixed_percent(r['val_balanced_accuracy_mean'])}]"
                        if r else "–")
        table.append(line)
    doc.table(["labels", *refs], table)


def _inflation_tables(doc: Document, rows: Sequence[dict]) -> None:
    protocols = {r["protocol"] for r in rows}
    grouped = [p for p in sorted(protocols, key=lambda p: _sort_key(p, "", "")) if p != "image"]
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
                line = [percent_labels(frac)]
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
    protocols = sorted({r.protocol for r in complete}, key=lambda p: _sort_key(p, "", ""))
    keys = ("group_by", "split_seed", "pretrain_on", "arch", "image_size", "epochs", "task", "git_sha", "data",
            "n_train")
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


def _gradcam_part(doc: Document, study: CamStudy) -> None:
    doc.heading(2, "Grad-CAM")
    doc.para("For each label fraction with both a simclr and a random finetune run (seed 0 preferred), the same "
             "test images (the first N per true class in predictions.csv order) are explained for each arm's "
             "predicted class (GradCAM at models.target_layer). Faithfulness uses grad-cam's metrics on softmax "
             "confidence: ROAD combined (higher = more faithful), drop in confidence when the image is multiplied "
             "by the CAM (lower = better) and the share of images whose confidence rises. Localisation = share of "
             "CAM mass inside the ground-truth atrophy mask, over images with a non-empty mask; chance = the "
             "masks' mean area share (what a uniform map scores).")
    if study.rows:
        has_masks = any("localisation" in r for r in study.rows)
        header = ["labels", "arm", "seed", "images", "ROAD combined ↑", "drop in conf. ↓", "increase in conf."] + \
            (["localisation ↑", "chance", "masks"] if has_masks else [])
        table = []
        for r in study.rows:
            line = [percent_labels(r["label_frac"]), r["arm"], r["seed"], r["n_images"], _fixed(r["road_combined"], 4),
                    _fixed(r["drop_in_confidence"], 4), _fixed(r["increase_in_confidence"], 2)]
            if has_masks:
                line += [_fixed(r.get("localisation"), 3), _fixed(r.get("localisation_chance"), 3), r.get("n_masks", 0)]
            table.append(line)
        doc.table(header, table)
    for name in sorted(study.figures, key=lambda n: float(n[len("gradcam_"):-len(".png")])):
        doc.figure(name, f"Grad-CAM grid {name}")
    if study.notes:
        doc.items(study.notes)


def build_document(runs: Sequence[Run], rows: Sequence[dict], figures: dict[str, bytes], study: CamStudy,
                   roots: Sequence[str]) -> Document:
    doc = Document(figures)
    missing = [r for r in runs if not r.complete]
    doc.heading(1, "simclr_ad fine-tuning report")
    doc.para(f"Runs from {', '.join(map(str, roots))}: {len(runs) - len(missing)} complete, {len(missing)} "
             "missing or partial. Columns of summary.csv: mean, std (ddof=1) and 95% CI half-width "
             "t(0.975, n-1)·std/√n over seeds; with one seed the CI is unknown (blank). Test metrics of the model "
             "selected on validation balanced accuracy.")
    doc.heading(2, "Protocol")
    _protocol_table(doc, runs)
    doc.heading(2, "Results")
    _results_tables(doc, rows)
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


# --------------------------------------------------------------------------- run records

def copy_run_records(runs: Sequence[Run], roots: Sequence[str], dest: Path) -> None:
    """Copy each run's small record files (never checkpoints) to ``dest/<path under its root>``."""
    resolved = [Path(r).resolve() for r in roots]
    for run in runs:
        here = run.path.resolve()
        root = next((r for r in resolved if r == here or r in here.parents), here.parent)
        prefix = Path(root.name) if len(resolved) > 1 else Path()
        for name in RECORD_FILES:
            if (run.path / name).is_file():
                atomic_write_bytes(dest / prefix / here.relative_to(root) / name, (run.path / name).read_bytes())


def copy_pretrain_records(run_dir: Path, dest: Path) -> None:
    """Copy a pretrain run's config.yaml and metrics.jsonl (never its checkpoints) to ``dest``."""
    for name in ("config.yaml", "metrics.jsonl"):
        if (run_dir / name).is_file():
            atomic_write_bytes(dest / name, (run_dir / name).read_bytes())


def pretrain_curve(run_dir: Path, dest: Path) -> bytes | None:
    """Copy a pretrain run's config.yaml/metrics.jsonl to ``dest`` and plot its curve (None if absent)."""
    log = run_dir / "metrics.jsonl"
    if not log.is_file():
        return None
    copy_pretrain_records(run_dir, dest)
    return png_bytes(plots.pretrain_curve_figure(read_records(log)))


# --------------------------------------------------------------------------- ablation

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
        log, config = path / "pretrain" / "metrics.jsonl", path / "pretrain" / "config.yaml"
        curve = read_records(log) if log.is_file() else []
        runs = find_runs([path / "finetune"]) if (path / "finetune").is_dir() else []
        if curve or runs:
            variants.append(Variant(path.name, yaml.safe_load(config.read_text()) if config.is_file() else {},
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
    mean, _, ci = mean_std_ci95(values)
    return _percent(mean, ci, len(values), len(values))


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
    header = ["variant", "arm"] + [f"{percent_labels(f)} {part}" for f in fracs
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
    figure = png_bytes(plots.curves_figure({v.name: _knn(v.curve) for v in variants if v.curve}, "pretraining epoch",
                                           "kNN balanced accuracy (validation)", "kNN monitor per variant"))
    atomic_write_bytes(out / "ablation_knn.png", figure)
    atomic_write_text(out / "ablation.md", ablation_document(variants, root, {"ablation_knn.png": figure}).markdown())
    return out / "ablation.md"


def write_run_md(stages_tsv: Path, out: Path) -> None:
    """RUN.md from a stage log (name, status, seconds, git SHA, command per line) plus the machine."""
    import os
    import platform

    rows = [line.split("\t", 4) for line in stages_tsv.read_text().splitlines() if line.strip()]
    total = sum(int(r[2]) for r in rows if len(r) == 5 and r[2].isdigit())
    lines = ["# How these results were made", "",
             f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, CPU class {runtime.host_class()} "
             f"({runtime.cpu_model() or 'model unknown'}), {platform.platform()}, "
             f"Python {platform.python_version()}, torch {torch.__version__}. "
             f"{'GPU: ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'No GPU'}.", "",
             f"Total wall time of the logged sittings: {total / 3600:.2f} h.", "",
             "| stage | status | wall time | git SHA | exact command |", "|---|---|---|---|---|"]
    for row in rows:
        if len(row) == 5:
            name, status, seconds, sha, command = row
            took = f"{int(seconds) / 60:.1f} min" if seconds.isdigit() else seconds  # e.g. a stage still running
            lines.append(f"| {name} | {status} | {took} | {sha} | `{command}` |")
    atomic_write_text(out, "\n".join(lines) + "\n")


# --------------------------------------------------------------------------- entry point

@friendly_errors
def main(argv: list[str] | None = None) -> Path:
    # ---------------------------------------------------------------- arguments
    parser = argparse.ArgumentParser(prog="python -m simclr_ad.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", action="append", default=[], metavar="DIR", help="dir of fine-tune runs")
    parser.add_argument("--out", required=True, metavar="REPORT_DIR")
    parser.add_argument("--gradcam-per-class", type=int, default=2, metavar="N", help="test images per class")
    parser.add_argument("--no-gradcam", action="store_true", help="skip the Grad-CAM study (fast)")
    parser.add_argument("--pretrain", default=None, metavar="RUN_DIR",
                        help="a pretrain run: its loss/kNN curve goes into the report, its logs into REPORT_DIR")
    parser.add_argument("--copy-runs", action="store_true",
                        help="copy every run's metrics.json, metrics.jsonl and config.yaml into REPORT_DIR/runs/")
    parser.add_argument("--ablation", default=None, metavar="DIR",
                        help="pretraining variants DIR/<name>/{pretrain,finetune}: writes ablation.md instead")
    parser.add_argument("--stages", default=None, metavar="TSV",
                        help="stage log of scripts/real_results.sh: written as RUN.md in REPORT_DIR")
    parser.add_argument("--num-threads", type=int, default=0, metavar="N",
                        help="torch CPU threads (0: torch's default; 1 is fastest on a busy shared CPU)")
    args = parser.parse_args(argv)
    if args.gradcam_per_class < 1:
        raise ReportError("--gradcam-per-class must be >= 1")
    if args.num_threads > 0:
        torch.set_num_threads(args.num_threads)

    out = Path(args.out)
    if args.stages:
        write_run_md(Path(args.stages), out / "RUN.md")
    if args.ablation:
        print(f"ablation: {write_ablation(Path(args.ablation), out)}")
        return out
    if not args.runs and args.pretrain:  # pretraining only: its curve and logs
        curve = pretrain_curve(Path(args.pretrain), out / "pretrain")
        if curve is None:
            raise ReportError(f"no metrics.jsonl in pretrain run {args.pretrain}")
        atomic_write_bytes(out / "pretrain_curve.png", curve)
        print(f"pretraining curve: {out / 'pretrain_curve.png'}")
        return out

    # ---------------------------------------------------------------- runs and statistics
    if not args.runs:
        raise ReportError("give --runs DIR (fine-tune runs) and/or --pretrain RUN_DIR")
    runs = find_runs(args.runs)
    if not runs:
        raise ReportError(f"no fine-tune runs (dirs with a finetune config.yaml) under {', '.join(args.runs)}")
    rows = summarise(runs)
    write_summary_csv(rows, out / "summary.csv")
    if args.copy_runs:
        copy_run_records(runs, args.runs, out / "runs")

    # ---------------------------------------------------------------- figures
    figures = {"label_efficiency.png": png_bytes(plots.label_efficiency_figure(plot_rows(rows))),
               "val_curves.png": png_bytes(plots.curves_figure(validation_curves(runs), "fine-tuning epoch",
                                                               "validation balanced accuracy",
                                                               "validation curve at the largest label fraction"))}
    curve = pretrain_curve(Path(args.pretrain), out / "pretrain") if args.pretrain else None
    if curve:
        figures["pretrain_curve.png"] = curve
    figures.update(confusion_figures(runs))
    study = CamStudy(notes=["skipped (--no-gradcam)"]) if args.no_gradcam else \
        gradcam_study(runs, args.gradcam_per_class)
    figures.update(study.figures)
    for name, png in figures.items():
        atomic_write_bytes(out / name, png)

    # ---------------------------------------------------------------- report
    doc = build_document(runs, rows, figures, study, args.runs)
    if curve:
        doc.heading(2, "Pretraining")
        doc.figure("pretrain_curve.png", f"SimCLR loss and kNN monitor of {args.pretrain}")
    atomic_write_text(out / "report.md", doc.markdown())
    atomic_write_text(out / "report.html", doc.html("simclr_ad report"))
    print(f"report: {out / 'report.md'} ({sum(r.complete for r in runs)} complete run(s), "
          f"{sum(not r.complete for r in runs)} missing/partial)")
    return out


if __name__ == "__main__":
    main()
