"""The report's clinical part: pooled out-of-fold predictions, clinical metrics with intervals over
test subjects, per-subject results, reliability diagrams, and the paired comparison of arms.

Each complete run's ``predictions.csv`` (test probabilities per slice) is read; the runs of one
arm and seed are pooled over their folds, so with K folds every subject is tested once per seed
(a single split is one "fold"). Predictions use the run's validation-chosen binary threshold
(metrics.json ``threshold`` / ``subject_threshold``), else the most probable class. Subject level:
the slices' mean probabilities (clinical.subject_probabilities).

Intervals over test subjects are percentile intervals of a cluster bootstrap (stats.subject_draws:
subjects drawn with replacement within their true class, all their slices kept). A statistic with several seeds is the mean
over seeds on each draw. The paired comparison draws the same subjects for both arms (same folds,
seeds and label subsets) and bootstraps the difference: the headline table of a comparison.
"""
from __future__ import annotations

import csv
import io
import math
import warnings
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from simclr_ad import clinical, plots
from simclr_ad.document import Document
from simclr_ad.runs import Run, data_groups, path_key, sort_key
from simclr_ad.stats import BOOTSTRAP_DRAWS, bootstrap, mean_std_ci95, paired_bootstrap, percent, subject_draws

LEVELS = ("slice", "subject")
REFERENCE_INIT = "random"  # the arm every other init is compared with
PAIRED_METRICS = ("balanced_accuracy", "auroc")


@dataclass
class Rows:
    """Test rows of one level: ids (paths or subjects), bootstrap clusters (subjects), labels,
    probabilities [N, C], predictions and the fold each row was tested in."""

    ids: np.ndarray
    clusters: np.ndarray
    true: np.ndarray
    probabilities: np.ndarray
    pred: np.ndarray
    fold: np.ndarray

    def take(self, index: np.ndarray) -> "Rows":
        return Rows(*(getattr(self, k)[index] for k in ("ids", "clusters", "true", "probabilities", "pred", "fold")))


@dataclass
class Pooled:
    """One arm and seed, pooled over its folds."""

    protocol: str
    init: str
    mode: str
    label_frac: float
    seed: int
    classes: list[str]
    folds: list
    n_folds: int | None
    levels: dict[str, Rows]

    @property
    def cell(self) -> tuple:
        return self.protocol, self.init, self.mode, self.label_frac


@dataclass
class ClinicalStudy:
    pooled: list[Pooled] = field(default_factory=list)
    figures: dict[str, bytes] = field(default_factory=dict)
    headline: list[list] = field(default_factory=list)
    table: list[list] = field(default_factory=list)
    subjects_csv: str = ""
    notes: list[str] = field(default_factory=list)
    binary: bool = False  # some arm has two classes: sensitivity and specificity are shown


# --------------------------------------------------------------------------- reading and pooling

def read_predictions(path) -> tuple[list[str], list[str], np.ndarray, np.ndarray, list[str]]:
    """(paths, groups, true class indices, probabilities [N, C], classes) of a predictions.csv."""
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
        classes = [c[2:] for c in reader.fieldnames or [] if c.startswith("p_")]
    index = {c: k for k, c in enumerate(classes)}
    probabilities = np.array([[float(r[f"p_{c}"]) for c in classes] for r in rows], dtype=np.float64)
    return ([r["path"] for r in rows], [r["group"] for r in rows], np.array([index[r["true"]] for r in rows],
            dtype=np.int64), probabilities.reshape(len(rows), len(classes)), classes)


def _run_levels(run: Run) -> tuple[dict[str, Rows], list[str]]:
    paths, groups, true, probabilities, classes = read_predictions(run.path / "predictions.csv")
    paths = [path_key(p) for p in paths]  # a restored (redacted) run pairs with a re-run one image by image
    if data_groups(run.group_by):  # real patient ids are keyed in committed records: key them all alike
        groups = [path_key(g) for g in groups]
    fold = np.full(len(paths), run.get("fold", -1) if run.get("fold") is not None else -1)
    levels = {"slice": Rows(np.asarray(paths), np.asarray(groups), true, probabilities,
                            clinical.predict_at(probabilities, run.get("threshold")), fold)}
    if run.group_by != "image" and len(paths):
        names, s_true, s_probs = clinical.subject_probabilities(probabilities, true, groups)
        levels["subject"] = Rows(np.asarray(names), np.asarray(names), s_true, s_probs,
                                 clinical.predict_at(s_probs, run.get("subject_threshold")), fold[:len(names)])
    return levels, classes


def pool(runs: Sequence[Run]) -> tuple[list[Pooled], list[str]]:
    """Per arm and seed, the trained runs' test rows concatenated over folds; notes on what is left out."""
    by_key: dict[tuple, list[Run]] = {}
    for run in runs:
        if run.complete and run.mode != "reference" and (run.path / "predictions.csv").is_file():
            by_key.setdefault((run.protocol, run.init, run.mode, run.label_frac, run.seed), []).append(run)
    pooled, notes = [], []
    for (protocol, init, mode, frac, seed), members in sorted(by_key.items(), key=lambda kv: (sort_key(*kv[0][:4]),
                                                                                               kv[0][4])):
        members.sort(key=lambda r: (r.get("fold") is None, r.get("fold") or 0))
        parts, classes, folds = {level: [] for level in LEVELS}, None, []
        for run in members:
            levels, run_classes = _run_levels(run)
            if classes is not None and (run_classes != classes or run.get("fold") in folds):
                notes.append(f"{run.path}: left out of the pooled predictions (another class list, or fold "
                             f"{run.get('fold')} counted twice)")
                continue
            classes = run_classes
            folds.append(run.get("fold"))
            for level, rows in levels.items():
                parts[level].append(rows)
        levels = {level: Rows(*(np.concatenate([getattr(r, k) for r in rows]) for k in
                                ("ids", "clusters", "true", "probabilities", "pred", "fold")))
                  for level, rows in parts.items() if rows}
        n_folds = members[0].get("n_folds")
        if n_folds and len(folds) < n_folds:
            notes.append(f"{plots.arm_label(init, mode)} at {plots.percent_labels(frac)} labels, seed {seed}: "
                         f"{len(folds)} of {n_folds} folds complete; the other folds' subjects are not tested")
        pooled.append(Pooled(protocol, init, mode, frac, seed, classes or [], folds, n_folds, levels))
    return pooled, notes


# --------------------------------------------------------------------------- statistics

def metric_of(name: str, rows: Rows, index: np.ndarray) -> float:
    """One metric of the rows at ``index`` (a bootstrap draw or all rows)."""
    if name == "balanced_accuracy":
        return clinical.balanced_accuracy(rows.true[index], rows.pred[index])
    if name == "auroc":
        return clinical.auroc(rows.true[index], rows.probabilities[index])
    raise ValueError(f"unknown metric {name}")


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


def seed_mean(name: str, arm: Sequence[Rows]) -> Callable[[np.ndarray], float]:
    """``index -> mean over seeds`` of a metric: the statistic a bootstrap draws."""
    return lambda index: _mean([metric_of(name, rows, index) for rows in arm])


def aligned(arms: Sequence[Sequence[Pooled]], level: str) -> tuple[np.ndarray, list[list[Rows]]]:
    """The rows every pooled member of every arm tested, in one order: (clusters, rows per arm and seed)."""
    members = [p for arm in arms for p in arm]
    common = sorted(set.intersection(*(set(p.levels[level].ids.tolist()) for p in members)))
    out = []
    for arm in arms:
        seeds = []
        for p in arm:
            position = {k: i for i, k in enumerate(p.levels[level].ids.tolist())}
            seeds.append(p.levels[level].take(np.array([position[k] for k in common], dtype=np.int64)))
        out.append(seeds)
    return (out[0][0].clusters if common else np.array([])), out


def _ci(result: dict) -> str:
    lo, hi = result["ci95"]
    if math.isnan(result["point"]):
        return "–"
    return f"{100 * result['point']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"


def _signed(result: dict) -> str:
    lo, hi = result["ci95"]
    return "–" if math.isnan(result["point"]) else f"{100 * result['point']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def _cells(pooled: Sequence[Pooled]) -> dict[tuple, list[Pooled]]:
    cells: dict[tuple, list[Pooled]] = {}
    for p in pooled:
        cells.setdefault(p.cell, []).append(p)
    return cells


def paired_rows(pooled: Sequence[Pooled], draws: int, seed: int = 0) -> list[list]:
    """The headline: per protocol, mode, fraction and level, each init minus random init, with the paired
    bootstrap CI over subjects of the difference in balanced accuracy and AUROC and P(difference > 0)."""
    cells, table = _cells(pooled), []
    for (protocol, init, mode, frac), arm in cells.items():
        reference = cells.get((protocol, REFERENCE_INIT, mode, frac))
        if init == REFERENCE_INIT or not reference:
            continue
        seeds = sorted({p.seed for p in arm} & {p.seed for p in reference})
        arm = [p for p in arm if p.seed in seeds]
        reference = [p for p in reference if p.seed in seeds]
        for level in LEVELS:
            if not seeds or not all(level in p.levels for p in (*arm, *reference)):
                continue
            clusters, (rows_a, rows_b) = aligned([arm, reference], level)
            if not len(clusters):
                continue
            shared = subject_draws(clusters, draws, seed, strata=rows_a[0].true)
            line = [plots.percent_labels(frac), f"{plots.arm_label(init, mode)} − {plots.arm_label(REFERENCE_INIT, mode)}",
                    protocol, level]
            for name in PAIRED_METRICS:
                result = paired_bootstrap(seed_mean(name, rows_a), seed_mean(name, rows_b), len(clusters), shared)
                line += [_signed(result), "–" if math.isnan(result["share_positive"])
                         else f"{result['share_positive']:.2f}"]
            line += [len(set(clusters.tolist())), f"{len(seeds)} × {len(arm[0].folds)}"]
            table.append(line)
    return table


def _runs_stat(runs: Sequence[Run], cell: tuple, key: str) -> str:
    values = [float(r.metrics[key]) for r in runs if r.complete and (r.protocol, r.init, r.mode, r.label_frac) == cell
              and isinstance(r.metrics.get(key), (int, float))]
    if not values:
        return "–"
    mean, _, ci = mean_std_ci95(values)
    return percent(mean, ci, len(values), len(values)) + f" (n={len(values)})"


def clinical_rows(pooled: Sequence[Pooled], runs: Sequence[Run], draws: int, seed: int = 0) -> list[list]:
    """Per arm, fraction and level: pooled balanced accuracy and AUROC with CIs over subjects, beside the
    mean ± CI over folds × seeds of the runs' own numbers; sensitivity, specificity (two classes) and ECE."""
    table = []
    for cell, arm in _cells(pooled).items():
        for level in LEVELS:
            if not all(level in p.levels for p in arm):
                continue
            clusters, (rows,) = aligned([arm], level)
            if not len(clusters):
                continue
            shared = subject_draws(clusters, draws, seed, strata=rows[0].true)
            binary = len(arm[0].classes) == 2
            prefix = "" if level == "slice" else "subject_"
            bal = bootstrap(seed_mean("balanced_accuracy", rows), len(clusters), shared)
            auc = bootstrap(seed_mean("auroc", rows), len(clusters), shared)
            both = np.concatenate([r.true for r in rows]), np.concatenate([r.pred for r in rows])
            sens, spec = clinical.sensitivity_specificity(*both) if binary else (float("nan"),) * 2
            ece = clinical.expected_calibration_error(np.concatenate([r.true for r in rows]),
                                                      np.concatenate([r.probabilities for r in rows]))
            bal_key = f"{prefix}threshold_balanced_accuracy" if binary else f"{prefix}balanced_accuracy"
            table.append([plots.percent_labels(cell[3]), plots.arm_label(cell[1], cell[2]), cell[0], level,
                          len(set(clusters.tolist())), _ci(bal), _runs_stat(runs, cell, bal_key), _ci(auc),
                          _runs_stat(runs, cell, f"{prefix}auroc"),
                          *["–" if math.isnan(v) else f"{100 * v:.1f}" for v in (sens, spec)], f"{ece:.3f}"])
    return table


def subjects_csv(pooled: Sequence[Pooled]) -> str:
    """One row per arm, seed and test subject: its fold, true class, prediction and mean probabilities."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    classes = pooled[0].classes if pooled else []
    writer.writerow(["protocol", "init", "mode", "label_frac", "seed", "fold", "subject", "true", "pred", "correct",
                     *[f"p_{c}" for c in classes]])
    for p in pooled:
        rows = p.levels.get("subject")
        if rows is None or p.classes != classes:
            continue
        for k in range(len(rows.ids)):
            writer.writerow([p.protocol, p.init, p.mode, f"{p.label_frac:g}", p.seed, int(rows.fold[k]), rows.ids[k],
                             p.classes[rows.true[k]], p.classes[rows.pred[k]], int(rows.true[k] == rows.pred[k]),
                             *[f"{v:.6f}" for v in rows.probabilities[k]]])
    return buffer.getvalue()


def class_coverage(pooled: Sequence[Pooled]) -> list[str]:
    """Test subjects per class over the pooled folds; a class tested in fewer of them than were pooled is
    named (folds not yet run are pool's notes, not a class's)."""
    notes = []
    for protocol in dict.fromkeys(p.protocol for p in pooled):
        first = next(p for p in pooled if p.protocol == protocol)
        rows = first.levels.get("subject") or first.levels["slice"]
        counts = []
        for c, name in enumerate(first.classes):
            member = rows.true == c
            n_subjects, n_folds = len(set(rows.clusters[member].tolist())), len(set(rows.fold[member].tolist()))
            counts.append(f"{name} {n_subjects}")
            if 0 < n_folds < len(first.folds):
                notes.append(f"group_by={protocol}: class {name} has {n_subjects} test subject(s): it is tested in "
                             f"{n_folds} of the {len(first.folds)} pooled fold(s) only; its numbers rest on those "
                             "subjects")
        notes.insert(0, f"group_by={protocol}: test subjects pooled over {len(first.folds)} fold(s): " + ", ".join(counts))
    return notes


def reliability_figures(pooled: Sequence[Pooled]) -> dict[str, bytes]:
    """reliability_<frac>[_<protocol>].png: slice-level reliability diagram per arm, seeds pooled."""
    several = len({p.protocol for p in pooled}) > 1
    figures: dict[str, dict] = {}
    for (protocol, init, mode, frac), arm in _cells(pooled).items():
        true = np.concatenate([p.levels["slice"].true for p in arm])
        probabilities = np.concatenate([p.levels["slice"].probabilities for p in arm])
        name = f"reliability_{frac:g}" + (f"_{protocol}" if several else "") + ".png"
        ece = clinical.expected_calibration_error(true, probabilities)
        figures.setdefault(name, {})[f"{plots.arm_label(init, mode)} (ECE {ece:.3f})"] = \
            clinical.reliability_bins(true, probabilities)
    return {name: plots.png_bytes(plots.reliability_figure(bins, f"{name[len('reliability_'):-4]} labels: "
                                                           "test slices, seeds and folds pooled"))
            for name, bins in figures.items()}


def clinical_study(runs: Sequence[Run], draws: int = BOOTSTRAP_DRAWS) -> ClinicalStudy:
    """Everything the clinical part of the report shows, from the runs' stored predictions."""
    pooled, notes = pool(runs)
    if not pooled:
        return ClinicalStudy(notes=["no run holds predictions.csv: no pooled, per-subject or paired results"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return ClinicalStudy(pooled, reliability_figures(pooled), paired_rows(pooled, draws),
                             clinical_rows(pooled, runs, draws), subjects_csv(pooled),
                             class_coverage(pooled) + notes, any(len(p.classes) == 2 for p in pooled))


# --------------------------------------------------------------------------- document

def headline_part(doc: Document, study: ClinicalStudy) -> None:
    """The paired difference of each arm against random init, with its CI over test subjects."""
    doc.heading(2, "Headline: paired difference of the arms")
    if not study.headline:
        doc.para("No pair of arms with predictions on the same test subjects (same folds and seeds): "
                 "no paired comparison.")
        return
    doc.para("Difference in points (arm minus random init) on the same test subjects, folds, seeds and label "
             f"subsets; 95 % paired cluster bootstrap over test subjects ({BOOTSTRAP_DRAWS} draws; with several "
             "seeds, each draw averages the seeds). P(Δ>0): share of draws favouring the arm. Balanced accuracy "
             "at the validation-chosen threshold for a binary task, else of the most probable class."
             + (" Protocol image has no subjects: its draws resample single images, near-duplicates of their "
                "neighbours, so its intervals are too narrow." if any(r[2] == "image" for r in study.headline) else ""))
    doc.table(["labels", "comparison", "protocol", "level", "Δ balanced accuracy [95% CI]", "P(Δ>0)",
               "Δ AUROC [95% CI]", "P(Δ>0)", "test subjects", "seeds × folds"], study.headline)


def clinical_part(doc: Document, study: ClinicalStudy) -> None:
    """Pooled clinical metrics, coverage notes, reliability diagrams and the per-subject file."""
    doc.heading(2, "Clinical metrics (pooled out-of-fold test predictions)")
    if study.table:
        binary = study.binary
        by_image = any(row[2] == "image" for row in study.table)
        doc.para("Pooled: every tested subject once per seed, seeds averaged; [95 % CI over test subjects, cluster "
                 "bootstrap]. Over runs: mean ± 95 % t-CI over folds × seeds of each run's own number. AUROC: "
                 "one-vs-rest macro (multiclass) or of P(positive) (binary). "
                 + ("Sensitivity and specificity at each run's validation-chosen threshold (Youden's J). "
                    if binary else "")
                 + "ECE: top-label, 15 equal-width bins. Subject level: slice probabilities averaged per subject."
                 + (" Protocol image has no subjects: its units (and CIs) are single images, which are "
                    "near-duplicates of their neighbours, so those intervals are too narrow." if by_image else ""))
        doc.table(["labels", "arm", "protocol", "level", "subjects", "bal. acc. pooled [CI subjects]",
                   "bal. acc. over runs", "AUROC pooled [CI subjects]", "AUROC over runs",
                   *(["sensitivity", "specificity"] if binary else []), "ECE"],
                  [row if binary else row[:9] + row[11:] for row in study.table])
    if study.notes:
        doc.items(study.notes)
    for name in sorted(study.figures, key=lambda n: n):
        doc.figure(name, f"{name}: reliability diagram (marker size: slices per bin)")
    if study.subjects_csv:
        doc.para("Per-subject results (true class, prediction, mean probabilities, fold) of every arm and seed: "
                 "subjects.csv.")
