"""Leakage-safe evaluation protocol: grouped splits, subject inference, audit, nested label fractions.

The Kaggle Alzheimer set holds about 200 subjects x 32 axial slices and no subject
ids. Adjacent slices of one scan are near-duplicates, so an image-level random
split puts the same brain in train and test (Yagis et al., Sci Rep 2021). The
default here is therefore a split by subject: by the known ids when the data has
them (manifest ``subject`` column, phantoms), otherwise by groups inferred from
the pixels (``auto``). The naive per-image split stays available as ``image``.

Near-duplicates (defined once, in ``grouping.NearDuplicates``): features are 32x32
thumbnails, mean-centred per image and L2-normalised; d = 1 - cosine. Every image
gets a reference distance, the median distance to its 8th..16th nearest
same-class neighbours (beyond any plausible near-twin: strangers or far slices).
A pair is a near-duplicate when its distance, relative to the two references,
is below the class ratio threshold. That threshold is derived per class from
the data: halfway, in log scale, between the typical nearest-neighbour ratio and
1 (the reference), capped at 0.5. Per-class thresholds and per-image references
keep the rule robust to class imbalance and to regions of image space that are
denser than others.

Auto grouping: connected components of same-class near-duplicate pairs (slices
form chains); a component over 1.5x the typical size is re-split with a stricter
margin (a chain bridging two subjects); fragments under a quarter of the typical
size are attached to the group of their nearest neighbour (end slices of a scan
change faster than the rest). The audit counts the near-duplicate pairs, of any
classes, that cross train/val/test.

Pre-split layouts (``ROOT/{train,val,test}``) keep their given train and test
(and val when present); without a val folder, val is carved out of train by
whole groups. The audit then tells whether the given split leaks.

Label budgets count subjects by default on a grouped split (``label_unit`` subject): a fraction
labels that share of each class's training subjects (at least one), with all their slices, taken
from a seeded per-class subject ranking (``train_subject_rank``), so budgets nest and every arm and
seed sees the same subjects. ``slice`` keeps the per-image ranking (``train_rank``). Split files
written before subject ranks existed get one derived from ``train_rank`` (subjects in the order
their first image appears there), so they stay readable and deterministic.

Near-duplicate features and subject inference live in grouping.py; grouped k-fold splits in
folds.py; the command line (``python -m simclr_ad.data split|audit``) in data_cli.py.
"""
from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np

from simclr_ad.data import DataError, ImageSet
from simclr_ad.fileio import atomic_write_text
from simclr_ad.grouping import FEATURE_SIZE, NearDuplicates, infer_groups, thumbnail_features, weakest_link_summary  # noqa: F401 (scripts/probes use splits.thumbnail_features)

SPLITS = ("train", "val", "test")
DEFAULT_FRACTIONS = (0.01, 0.1, 0.2, 0.5, 1.0)
GROUP_BY = ("default", "subject", "auto", "image")
REQUIRED_KEYS = ("train", "val", "test", "groups", "fractions", "group_by", "seed", "classes", "train_rank")
SPLIT_FORMAT = 1

# --------------------------------------------------------------------------- grouped stratified split

def _resolve_group_by(images: ImageSet, group_by: str) -> str:
    if group_by not in GROUP_BY:
        raise DataError(f"group_by {group_by!r} must be one of {', '.join(GROUP_BY)}")
    if group_by == "default":
        return "subject" if images.subjects is not None else "auto"
    if group_by == "subject" and images.subjects is None:
        raise DataError(f"group_by=subject needs subject ids (a manifest.csv with a 'subject' column); "
                        f"{images.root} has none: use group_by auto to infer them from the images")
    return group_by


def _group_ids(images: ImageSet, group_by: str, fragments: bool = False) -> tuple[list[str], Optional[dict],
                                                                                 Optional[list[str]]]:
    """A string group id per image, how auto groups were made, and (auto, ``fragments``) the id of each
    image's chain fragment: the near-duplicate component it was in before fragments were attached to
    their nearest group ("g0012f1": group g0012's second fragment)."""
    if fragments and group_by != "auto":
        raise DataError(f"keeping chain fragments apart needs group_by auto (inferred groups), not {group_by}")
    if group_by == "subject":
        return [str(s) for s in images.subjects], None, None  # type: ignore[union-attr]
    if group_by == "image":
        return [f"i{k:05d}" for k in range(len(images))], None, None
    rule = NearDuplicates.fit(images)
    groups = infer_groups(images, rule)
    info = {"method": "connected near-duplicates within a class (see simclr_ad/splits.py)",
            "feature_size": FEATURE_SIZE, "decoded_size": int(images.images.shape[-1]),  # type: ignore[union-attr]
            "threshold": rule.threshold(images.classes)}
    if not fragments:
        return [f"g{g:04d}" for g in groups], info, None
    pairs = list(zip(groups.tolist(), infer_groups(images, rule, attach=False).tolist()))
    number: dict[tuple[int, int], int] = {}  # (group, fragment) -> the fragment's rank in its group
    seen: Counter = Counter()
    for pair in pairs:
        if pair not in number:
            number[pair], seen[pair[0]] = seen[pair[0]], seen[pair[0]] + 1
    return [f"g{g:04d}" for g in groups], info, [f"g{g:04d}f{number[(g, f)]}" for g, f in pairs]


def _assign(names: list[str], sizes: dict[str, int], targets: dict[str, float],
            rng: np.random.Generator) -> dict[str, str]:
    """Greedy over a seeded permutation of one class's groups: each group goes to the first split
    (test, then val) it brings closer to its target image count, otherwise to train."""
    assignment, filled = {}, {name: 0 for name in targets}
    for idx in rng.permutation(len(names)):
        group = names[idx]
        for split, target in targets.items():
            if filled[split] + sizes[group] / 2 <= target:
                assignment[group], filled[split] = split, filled[split] + sizes[group]
                break
        else:
            assignment[group] = "train"
    # minimum: train, test and val each get a group while there are groups to give (train first)
    needed = [s for s in ("train", "test", "val") if s in targets or s == "train"][:len(names)]
    for split in needed:
        if split not in assignment.values():
            counts = Counter(assignment.values())
            donor = max((s for s in counts if counts[s] > 1),
                        key=lambda s: (counts[s], s == "train"), default=None)
            if donor is None:
                break
            moved = [g for g in reversed(list(assignment)) if assignment[g] == donor][0]
            assignment[moved] = split
    return assignment


def _group_label(labels: np.ndarray, members: list[int]) -> int:
    counts = np.bincount(labels[members])
    return int(np.argmax(counts))  # majority; ties to the lower class index


def group_members(group_ids: Sequence[str], keep: Sequence[bool] | None = None) -> dict[str, list[int]]:
    """Each group's image indices (only those with ``keep`` true when given), groups in first-seen order."""
    members: dict[str, list[int]] = {}
    for k, group in enumerate(group_ids):
        if keep is None or keep[k]:
            members.setdefault(group, []).append(k)
    return members


def group_labels(labels: np.ndarray, members: dict[str, list[int]]) -> dict[str, int]:
    """Each group's majority class."""
    return {g: _group_label(labels, m) for g, m in members.items()}


def _split_groups(images: ImageSet, group_ids: list[str], val_frac: float, test_frac: float,
                  seed: int) -> tuple[list[str], list[str]]:
    """Split per image, and warnings. Pre-split layouts keep their folders (val carved from train if absent)."""
    rng = np.random.default_rng(seed)
    members = group_members(group_ids)
    label_of = group_labels(images.labels, members)
    class_total = np.bincount(images.labels, minlength=len(images.classes))
    notes: list[str] = []
    if images.presplit is not None:
        split_of = list(images.presplit)
        crossing = sorted(g for g, m in members.items() if len({split_of[k] for k in m}) > 1)
        if crossing:
            notes.append(f"{len(crossing)} group(s) span the given {'/'.join(sorted(set(split_of)))} folders "
                         "(the source split leaks; see `audit`)")
        if "val" in split_of:
            return split_of, notes
        pool = {g: m for g, m in members.items() if all(split_of[k] == "train" for k in m)}
        targets_by_class = {c: {"val": val_frac * class_total[c]} for c in range(len(images.classes))}
    else:
        split_of = ["train"] * len(images)
        pool = members
        targets_by_class = {c: {"test": test_frac * class_total[c], "val": val_frac * class_total[c]}
                            for c in range(len(images.classes))}
    for c in range(len(images.classes)):
        names = sorted(g for g in pool if label_of[g] == c)
        if not names:
            continue
        assignment = _assign(names, {g: len(pool[g]) for g in names}, targets_by_class[c], rng)
        for group, split in assignment.items():
            for k in pool[group]:
                split_of[k] = split
    for c, name in enumerate(images.classes):
        present = {split_of[k] for k in np.flatnonzero(images.labels == c)}
        missing = [s for s in SPLITS if s not in present]
        if missing and class_total[c]:
            n_groups = sum(1 for g in members if label_of[g] == c)
            notes.append(f"class {name} ({n_groups} group(s)) is absent from {'/'.join(missing)}")
    return split_of, notes


def _fraction_key(fraction: float) -> str:
    return repr(float(fraction))


def _take(fraction: float, ranked: Sequence[str]) -> list[str]:
    """The top ceil(fraction x n) (at least 1) of one class's ranked train images or subjects."""
    if not ranked:
        return []
    count = max(1, math.ceil(round(fraction * len(ranked), 9)))
    return list(ranked[:count])


def _subset(splits: dict, fraction: float) -> list[str]:
    chosen = set()
    for name in splits["classes"]:
        chosen.update(_take(fraction, splits["train_rank"].get(name, [])))
    return [p for p in splits["train"] if p in chosen]


def _check_fraction(fraction) -> float:
    try:
        value = float(fraction)
    except (TypeError, ValueError):
        raise DataError(f"label fraction {fraction!r} is not a number; it must be in (0, 1]") from None
    if not (0 < value <= 1) or math.isnan(value):
        raise DataError(f"label fraction {fraction} is outside (0, 1]; use e.g. 0.01, 0.1 or 1.0")
    return value


LABEL_UNITS = ("auto", "subject", "slice")


def resolve_label_unit(unit: str, group_by: str) -> str:
    """``auto``: subjects on a grouped split (a diagnosis is per patient), slices on an image split."""
    if unit not in LABEL_UNITS:
        raise DataError(f"label unit {unit!r} must be one of {', '.join(LABEL_UNITS)}")
    if unit != "auto":
        return unit
    return "slice" if group_by == "image" else "subject"


def label_unit_for(cfg) -> str:
    """The resolved label unit of a fine-tune config: its split file's protocol decides ``auto``."""
    group_by = read_splits(cfg.splits)["group_by"] if cfg.splits and Path(cfg.splits).is_file() else cfg.group_by
    return resolve_label_unit(cfg.label_unit, group_by)


def subject_rank(splits: dict) -> dict[str, list[str]]:
    """Per class, the training subjects (groups) in their seeded budget order.

    Stored as ``train_subject_rank``; a split file that predates it gets the order in which each
    subject's first image appears in ``train_rank`` (a subject counts for its majority class there).
    """
    if splits.get("train_subject_rank") is not None:
        return splits["train_subject_rank"]
    votes: dict[str, Counter] = {}
    first: dict[tuple[int, str], int] = {}  # (class, subject) -> position of its first image in that class's rank
    for c, name in enumerate(splits["classes"]):
        for k, path in enumerate(splits["train_rank"].get(name, [])):
            group = str(splits["groups"][path])
            votes.setdefault(group, Counter())[c] += 1
            first.setdefault((c, group), k)
    ranked: dict[str, list[tuple[int, str]]] = {name: [] for name in splits["classes"]}
    for group, counts in votes.items():
        c = max(counts, key=lambda k: (counts[k], -k))  # majority class; ties to the lower index
        ranked[splits["classes"][c]].append((first[(c, group)], group))
    return {name: [g for _, g in sorted(items)] for name, items in ranked.items()}


def labelled_subjects(splits: dict, fraction: float, per_class: int = 0) -> list[str]:
    """The training subjects labelled at ``fraction`` of each class's subjects (>= 1 per class that has
    any), or at ``per_class`` subjects of each class when > 0; nested, seeded by the split. A class
    without training images is a DataError, as it is for the slice unit. (A subject counts for its
    majority class: a class that is never a majority, e.g. tumour slices, still comes with its subjects.)"""
    value = _check_fraction(fraction)
    _every_class_in_train(splits, f"label budget {per_class or fraction}")
    stored = (splits.get("subject_fractions") or {}).get(_fraction_key(value)) if per_class <= 0 else None
    return list(stored) if stored is not None else _subjects_at(subject_rank(splits), value, per_class)


def _every_class_in_train(splits: dict, budget: str) -> None:
    empty = [name for name in splits["classes"] if not splits["train_rank"].get(name)]
    if empty:
        raise DataError(f"{budget} cannot label every class: the training split has no image of {', '.join(empty)}")


def _subjects_at(ranks: dict[str, list[str]], fraction: float, per_class: int = 0) -> list[str]:
    chosen: list[str] = []
    for ranked in ranks.values():
        chosen += list(ranked[:per_class]) if per_class > 0 else _take(fraction, ranked)
    return sorted(chosen)


def labelled_paths(splits: dict, cfg) -> list[str]:
    """The labelled training paths of a fine-tune config (label_frac, label_unit, label_subjects)."""
    unit = resolve_label_unit(cfg.label_unit, splits["group_by"])
    return label_subset(splits, cfg.label_frac, unit, getattr(cfg, "label_subjects", 0))


def label_subset(splits: dict, fraction: float, unit: str = "slice", per_class: int = 0) -> list[str]:
    """Train paths labelled at ``fraction``: stratified, >= 1 per class, nested.

    ``unit`` slice: that share of each class's training images. ``unit`` subject: every slice of
    ``labelled_subjects`` (``per_class`` > 0: that many subjects per class). Stored fractions are
    returned as stored; any other fraction in (0, 1] is taken from the same per-class ranking, so
    every subset nests with every other.
    """
    if unit == "subject":
        chosen = set(labelled_subjects(splits, fraction, per_class))
        return [p for p in splits["train"] if str(splits["groups"][p]) in chosen]
    if unit != "slice":
        raise DataError(f"label unit {unit!r} must be subject or slice (resolve auto first)")
    value = _check_fraction(fraction)
    _every_class_in_train(splits, f"label fraction {fraction}")
    n_classes, n_train = len(splits["classes"]), len(splits["train"])
    if value * n_train < n_classes:
        raise DataError(f"label fraction {fraction} of {n_train} training images is fewer than one image per "
                        f"class ({n_classes} classes); use at least {n_classes / n_train:.4g}")
    stored = splits["fractions"].get(_fraction_key(value))
    return list(stored) if stored is not None else _subset(splits, value)


def _counts(images: ImageSet, split_of: list[str], group_ids: list[str]) -> tuple[dict, dict]:
    images_per = {s: {c: 0 for c in images.classes} for s in SPLITS}
    groups_per = {s: {c: set() for c in images.classes} for s in SPLITS}
    for idx, split in enumerate(split_of):
        name = images.classes[images.labels[idx]]
        images_per[split][name] += 1
        groups_per[split][name].add(group_ids[idx])
    return images_per, {s: {c: len(g) for c, g in v.items()} for s, v in groups_per.items()}


def _check_shares(val_frac: float, test_frac: float) -> None:
    if not (0 < val_frac < 1 and 0 < test_frac < 1 and val_frac + test_frac < 1):
        raise DataError(f"val fraction {val_frac} and test fraction {test_frac} must be in (0, 1) "
                        "and sum to less than 1")


def make_splits(images: ImageSet, group_by: str = "default", val_frac: float = 0.1, test_frac: float = 0.2,
                seed: int = 0, fractions: Iterable[float] = DEFAULT_FRACTIONS) -> dict:
    """The splits.json object: grouped, class-stratified train/val/test plus nested label fractions."""
    _check_shares(val_frac, test_frac)
    if len(images) == 0:
        raise DataError(f"no images to split under {images.root}")
    resolved = _resolve_group_by(images, group_by)
    group_ids, grouping, _ = _group_ids(images, resolved)
    split_of, notes = _split_groups(images, group_ids, val_frac, test_frac, seed)
    return build_split(images, split_of, group_ids, grouping, notes, seed, fractions,
                       {"group_by": resolved, "group_by_requested": group_by, "val_frac": float(val_frac),
                        "test_frac": float(test_frac)})


def build_split(images: ImageSet, split_of: list[str], group_ids: list[str], grouping: Optional[dict],
                notes: list[str], seed: int, fractions: Iterable[float], extra: dict) -> dict:
    """The split file's object for a given train/val/test per image: label rankings (per image and per
    subject, each from its own seeded stream), the stored fractions, counts and group statistics."""
    by_split = {s: sorted(p for p, t in zip(images.paths, split_of) if t == s) for s in SPLITS}
    rng = np.random.default_rng([seed, 1])  # its own stream: the ranking does not move the split
    train_rank = {}
    for c, name in enumerate(images.classes):
        members = sorted(p for p, t, y in zip(images.paths, split_of, images.labels) if t == "train" and y == c)
        train_rank[name] = [members[k] for k in rng.permutation(len(members))]
    subject_rng = np.random.default_rng([seed, 2])  # and the subject ranking its own
    train_label = group_labels(images.labels, group_members(group_ids, [t == "train" for t in split_of]))
    subject_rank_ = {}
    for c, name in enumerate(images.classes):
        members = sorted(g for g, label in train_label.items() if label == c)
        subject_rank_[name] = [members[k] for k in subject_rng.permutation(len(members))]
    splits = {"train": by_split["train"], "train_rank": train_rank, "classes": list(images.classes),
              "groups": dict(zip(images.paths, group_ids)), "train_subject_rank": subject_rank_}
    fraction_values = sorted({_check_fraction(f) for f in fractions} | {1.0})
    image_counts, group_counts = _counts(images, split_of, group_ids)
    sizes = np.array(list(Counter(group_ids).values()))
    splits.update({
        "format": SPLIT_FORMAT,
        "layout": images.layout,
        "seed": int(seed),
        **extra,
        "val": by_split["val"],
        "test": by_split["test"],
        "fractions": {_fraction_key(f): _subset(splits, f) for f in fraction_values},
        "subject_fractions": {_fraction_key(f): _subjects_at(subject_rank_, f) for f in fraction_values},
        "counts": image_counts,
        "group_counts": group_counts,
        "group_stats": {"n_groups": int(len(sizes)), "min": int(sizes.min()), "median": float(np.median(sizes)),
                        "max": int(sizes.max()), "mixed_class_groups": _mixed_groups(images, group_ids)},
        "grouping": grouping,
        "notes": notes,
    })
    return splits


def _mixed_groups(images: ImageSet, group_ids: list[str]) -> int:
    labels: dict[str, set] = {}
    for group, label in zip(group_ids, images.labels):
        labels.setdefault(group, set()).add(int(label))
    return sum(1 for v in labels.values() if len(v) > 1)


# --------------------------------------------------------------------------- the split file

def write_splits(splits: dict, path: str | Path) -> None:
    """Write atomically; the same dict always gives the same bytes."""
    atomic_write_text(Path(path), json.dumps(splits, indent=1, sort_keys=True, ensure_ascii=False) + "\n")


def read_splits(path: str | Path) -> dict:
    """Load and check a split file; any problem is one DataError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"split file not found: {path} (write one with `python -m simclr_ad.data split`)")
    try:
        splits = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"split file {path} is not valid JSON ({err}); re-create it with "
                        "`python -m simclr_ad.data split`") from None
    if not isinstance(splits, dict):
        raise DataError(f"split file {path} must hold one JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in splits]
    if missing:
        raise DataError(f"split file {path} lacks key(s) {', '.join(missing)} "
                        "(written by another tool or an older simclr_ad?)")
    version = splits.get("format", SPLIT_FORMAT)
    if not isinstance(version, int) or version > SPLIT_FORMAT:
        raise DataError(f"split file {path} has format {splits['format']}, newer than this simclr_ad "
                        f"understands ({SPLIT_FORMAT}); upgrade simclr_ad")
    for key in SPLITS:
        if not isinstance(splits[key], list) or not all(isinstance(p, str) for p in splits[key]):
            raise DataError(f"split file {path}: '{key}' must be a list of paths")
    seen: dict[str, str] = {}
    for key in SPLITS:
        for p in splits[key]:
            if p in seen:
                raise DataError(f"split file {path}: {p!r} is in both {seen[p]} and {key}")
            seen[p] = key
    for key in ("groups", "fractions", "train_rank"):
        if not isinstance(splits[key], dict):
            raise DataError(f"split file {path}: '{key}' must be an object")
    train = set(splits["train"])
    for key, paths in splits["fractions"].items():
        try:
            float(key)
        except ValueError:
            raise DataError(f"split file {path}: fraction key {key!r} is not a number") from None
        if not isinstance(paths, list) or not set(paths) <= train:
            raise DataError(f"split file {path}: fraction {key} must list training paths only")
    ranked = [p for paths in splits["train_rank"].values() for p in paths]
    if sorted(ranked) != sorted(train):
        raise DataError(f"split file {path}: 'train_rank' does not rank exactly the training paths")
    if splits.get("train_subject_rank") is not None:  # absent in older split files: derived (subject_rank)
        ranked = sorted(g for groups in splits["train_subject_rank"].values() for g in groups)
        if ranked != sorted({str(splits["groups"][p]) for p in train}):
            raise DataError(f"split file {path}: 'train_subject_rank' does not rank exactly the training subjects")
    return splits


def split_indices(images: ImageSet, splits: dict) -> dict[str, np.ndarray]:
    """Positions of train/val/test in ``images``; a path missing from the dataset is a DataError."""
    return {key: images.indices_of(splits[key]) for key in SPLITS}


def splits_for(cfg, images: ImageSet) -> dict:
    """The split a stage uses: ``cfg.splits`` when set (checked against the data), else computed."""
    if cfg.splits:
        splits = read_splits(cfg.splits)
        if list(splits["classes"]) != list(images.classes):
            raise DataError(f"split file {cfg.splits} has classes {', '.join(splits['classes'])} but the "
                            f"data under {images.root} has {', '.join(images.classes)}")
        split_indices(images, splits)
        return splits
    return make_splits(images, cfg.group_by, cfg.val_frac, cfg.test_frac, cfg.split_seed)


def check_evaluable(splits: dict, where: str = "fine-tuning") -> None:
    """Model selection needs validation images and the result needs test images: say so, by count."""
    empty = [key for key in ("val", "test") if not splits.get(key)]
    if empty:
        raise DataError(f"{where} needs validation and test images, but the split has no {' and no '.join(empty)} "
                        f"images ({len(splits.get('train') or [])} train); use more data, a larger --val-frac/"
                        "--test-frac, or --group-by image if groups are too few")


# --------------------------------------------------------------------------- audit

def audit(images: ImageSet, splits: dict, max_examples: int = 12) -> dict:
    """Near-duplicate pairs (any classes) whose images sit in different splits, worst first."""
    rule = NearDuplicates.fit(images)
    i, j, cos = rule.pairs(across_classes=True)
    split_of = np.full(len(images), "", dtype=object)
    for key in SPLITS:
        split_of[images.indices_of(splits[key])] = key
    si, sj = split_of[i], split_of[j]
    assigned = (si != "") & (sj != "")
    cross = assigned & (si != sj)
    order = {s: k for k, s in enumerate(SPLITS)}
    pair_names = np.array([f"{a}|{b}" if order[a] < order[b] else f"{b}|{a}"
                           for a, b in zip(si[cross], sj[cross])], dtype=object)
    by_splits = {f"{a}|{b}": int(np.sum(pair_names == f"{a}|{b}"))
                 for k, a in enumerate(SPLITS) for b in SPLITS[k + 1:]}
    twins = {}
    for key in ("val", "test"):
        members = np.flatnonzero(split_of == key)
        with_twin = set(i[(si == key) & (sj == "train")]) | set(j[(sj == key) & (si == "train")])
        twins[key] = round(len(with_twin) / len(members), 4) if len(members) else None
    ci, cj, cc = i[cross], j[cross], cos[cross]
    worst = np.lexsort((cj, ci, -cc))[:max_examples]
    examples = [{"a": images.paths[ci[k]], "b": images.paths[cj[k]],
                 "splits": f"{split_of[ci[k]]}|{split_of[cj[k]]}",
                 "labels": [images.classes[images.labels[ci[k]]], images.classes[images.labels[cj[k]]]],
                 "cosine": round(float(cc[k]), 5)} for k in worst]
    return {
        "cross_split_pairs": int(cross.sum()),
        "pairs_by_splits": by_splits,
        "near_duplicate_pairs": int(assigned.sum()),
        "cross_class_pairs": int(np.sum(images.labels[i] != images.labels[j])),
        "share_with_train_twin": twins,
        "n_images": {key: int(np.sum(split_of == key)) for key in SPLITS},
        "group_by": splits.get("group_by"),
        "threshold": rule.threshold(images.classes),
        "weakest_link": weakest_link_summary([str(splits["groups"].get(p, "")) for p in images.paths], rule),
        "examples": examples,
    }
