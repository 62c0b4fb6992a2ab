"""Grouped, class-stratified k-fold cross-validation: every subject is tested exactly once.

One 20 % test split of about 40 subjects decides every number with an interval of about
±15 points, and can hold only one of the Kaggle set's two Moderate subjects. K folds test
every subject once: scikit-learn's ``StratifiedGroupKFold`` (shuffled, seeded) deals whole
groups (subjects, or inferred groups) to K disjoint test parts with each class's share kept
as far as the group sizes allow. The validation part of fold k is drawn, class-stratified and
by whole groups, from the subjects outside its test part (the same greedy rule as the single
split, splits._assign); the rest train. Each fold is an ordinary split file (splits.build_split)
with ``fold`` and ``n_folds`` added, so every stage reads it as ``--splits``.

A class with fewer subjects than folds cannot be tested in every fold: this is said in
``notes`` (of every fold file and of the summary), never dropped silently.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from simclr_ad.data import DataError, ImageSet
from simclr_ad.fileio import atomic_write_text
from simclr_ad.splits import (DEFAULT_FRACTIONS, _assign, _check_shares, _group_ids, _resolve_group_by, build_split,
                              group_labels, group_members, write_splits)

SUMMARY_FILE = "folds.json"


def fold_file(out_dir: str | Path, fold: int) -> Path:
    return Path(out_dir) / f"fold{fold}.json"


def test_folds(labels: np.ndarray, group_ids: list[str], n_folds: int, seed: int) -> list[set[str]]:
    """The groups of each fold's test part: disjoint, together every group (StratifiedGroupKFold)."""
    from sklearn.model_selection import StratifiedGroupKFold  # here: importing the package stays light

    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    groups = np.asarray(group_ids)
    return [set(groups[test].tolist()) for _, test in splitter.split(np.zeros(len(labels)), labels, groups)]


def rare_class_notes(classes: list[str], label_of: dict[str, int], n_folds: int) -> list[str]:
    """A class with fewer subjects (``label_of``: group -> class) than folds is tested in only some
    folds: say so."""
    notes = []
    for c, name in enumerate(classes):
        n_groups = sum(1 for g in label_of.values() if g == c)
        if 0 < n_groups < n_folds:
            notes.append(f"class {name} has {n_groups} subject(s) for {n_folds} folds: it is tested in "
                         f"{n_groups} fold(s) only (each of its subjects once), absent from the others' test parts")
    return notes


def make_folds(images: ImageSet, n_folds: int, group_by: str = "default", val_frac: float = 0.1, seed: int = 0,
               fractions=DEFAULT_FRACTIONS, keep_fragments: bool = False) -> list[dict]:
    """K split dicts: fold k tests the k-th part, validates on ~val_frac of the images from the other
    subjects (by whole groups, per class) and trains on the rest.

    ``keep_fragments`` (group_by auto): the folds are the same, made from the stitched groups, but the
    split files record each chain fragment as its own subject, so label budgets and subject-level
    metrics count fragments (a sensitivity check of the stitching)."""
    if n_folds < 2:
        raise DataError(f"--folds {n_folds}: cross-validation needs at least 2 folds")
    _check_shares(val_frac, 1.0 / n_folds)
    resolved = _resolve_group_by(images, group_by)
    group_ids, grouping, fragment_ids = _group_ids(images, resolved, keep_fragments)
    members = group_members(group_ids)
    if len(members) < n_folds:
        raise DataError(f"--folds {n_folds} needs at least {n_folds} groups; the data has {len(members)}")
    label_of = group_labels(images.labels, members)
    class_total = np.bincount(images.labels, minlength=len(images.classes))
    rare = rare_class_notes(images.classes, label_of, n_folds)
    if images.presplit is not None:  # said, never silent: the folds re-split the given folders
        rare.insert(0, f"the data comes in {'/'.join(sorted(set(images.presplit)))} folders; the folds pool them "
                       "and re-split by subject (the folders' own split is not used)")
    out = []
    for fold, tested in enumerate(test_folds(images.labels, group_ids, n_folds, seed)):
        rng = np.random.default_rng([seed, 3, fold])
        split_of = ["test" if g in tested else "train" for g in group_ids]
        for c in range(len(images.classes)):
            names = sorted(g for g in members if label_of[g] == c and g not in tested)
            if len(names) < 2:  # a class's only subject outside the test part trains; val goes without it
                continue
            for group, split in _assign(names, {g: len(members[g]) for g in names},
                                        {"val": val_frac * class_total[c]}, rng).items():
                for k in members[group]:
                    split_of[k] = split
        notes = list(rare)
        for c, name in enumerate(images.classes):
            missing = [s for s in ("train", "val", "test")
                       if class_total[c] and s not in {split_of[k] for k in np.flatnonzero(images.labels == c)}]
            if missing:
                notes.append(f"fold {fold}: class {name} is absent from {'/'.join(missing)}")
        extra = {"group_by": resolved, "group_by_requested": group_by, "val_frac": float(val_frac),
                 "test_frac": round(sum(len(members[g]) for g in tested) / len(images), 4),
                 "fold": fold, "n_folds": n_folds}
        if fragment_ids is not None:
            extra.update(fragments_kept=True, n_stitched_groups=len(members))
        out.append(build_split(images, split_of, fragment_ids or group_ids, grouping, notes, seed, fractions, extra))
    return out


def folds_summary(folds: list[dict]) -> dict:
    """Per fold its test subjects per class; and whether every subject is tested exactly once."""
    tested: dict[str, int] = {}
    per_fold = []
    for split in folds:
        subjects = sorted({str(split["groups"][p]) for p in split["test"]})
        for s in subjects:
            tested[s] = tested.get(s, 0) + 1
        per_fold.append({"fold": split["fold"], "test_subjects": subjects,
                         "test_images": len(split["test"]), "val_images": len(split["val"]),
                         "train_images": len(split["train"]), "test_groups_per_class": split["group_counts"]["test"]})
    all_subjects = set(folds[0]["groups"].values())
    return {"n_folds": len(folds), "seed": folds[0]["seed"], "group_by": folds[0]["group_by"],
            "n_subjects": len(all_subjects), "each_subject_tested_once": set(tested) == all_subjects
            and set(tested.values()) == {1}, "folds": per_fold,
            "notes": [n for n in folds[0]["notes"] if not n.startswith("fold ")]
            + [n for f in folds for n in f["notes"] if n.startswith("fold ")]}


def write_folds(folds: list[dict], out_dir: str | Path) -> tuple[Path, list[Path]]:
    """fold<k>.json per fold and folds.json (the summary) in ``out_dir``; returns the summary's path and
    the fold files of an earlier, larger K that it removed (never mixed in with the new folds)."""
    out_dir = Path(out_dir)
    if out_dir.suffix == ".json":
        raise DataError(f"--folds writes one split file per fold: give --out a directory, not {out_dir}")
    for split in folds:
        write_splits(split, fold_file(out_dir, split["fold"]))
    summary = out_dir / SUMMARY_FILE
    try:
        before = int(json.loads(summary.read_text())["n_folds"])
    except (OSError, ValueError, KeyError, TypeError):
        before = 0
    removed = [fold_file(out_dir, k) for k in range(len(folds), before) if fold_file(out_dir, k).is_file()]
    for path in removed:
        path.unlink()
    atomic_write_text(summary, json.dumps(folds_summary(folds), indent=1, sort_keys=True) + "\n")
    return summary, removed


def format_folds(folds: list[dict]) -> str:
    """What `data split --folds` prints: per fold the test subjects per class, then the coverage check."""
    summary = folds_summary(folds)
    lines = [f"{summary['n_folds']} folds, group_by {summary['group_by']}, seed {summary['seed']}: "
             f"{summary['n_subjects']} subjects, each tested exactly once: {summary['each_subject_tested_once']}"]
    classes = folds[0]["classes"]
    width = max(len(c) for c in classes)
    lines.append(f"  {'fold':<6}" + "".join(f"{c[:width]:>{width + 2}}" for c in classes)
                 + "   test img / val img / train img")
    for entry in summary["folds"]:
        lines.append(f"  {entry['fold']:<6}" + "".join(f"{entry['test_groups_per_class'][c]:>{width + 2}}"
                                                       for c in classes)
                     + f"   {entry['test_images']} / {entry['val_images']} / {entry['train_images']}")
    lines += [f"  note: {note}" for note in summary["notes"]]
    return "\n".join(lines)
