"""Leakage-safe evaluation protocol: grouped splits, subject inference, audit, nested label fractions.

The Kaggle Alzheimer set holds about 200 subjects x 32 axial slices and no subject
ids. Adjacent slices of one scan are near-duplicates, so an image-level random
split puts the same brain in train and test (Yagis et al., Sci Rep 2021). The
default here is therefore a split by subject: by the known ids when the data has
them (manifest ``subject`` column, phantoms), otherwise by groups inferred from
the pixels (``auto``). The naive per-image split stays available as ``image``.

Near-duplicates (defined once, in ``NearDuplicates``): features are 32x32
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

``python -m simclr_ad.data split|audit`` is the command-line face (``add_cli``).
"""
from __future__ import annotations

import argparse
import json
import math
import warnings
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from simclr_ad.data import DataError, ImageSet
from simclr_ad.fileio import atomic_write_text

SPLITS = ("train", "val", "test")
DEFAULT_FRACTIONS = (0.01, 0.1, 0.2, 0.5, 1.0)
GROUP_BY = ("default", "subject", "auto", "image")
REQUIRED_KEYS = ("train", "val", "test", "groups", "fractions", "group_by", "seed", "classes", "train_rank")
SPLIT_FORMAT = 1
CLI_IMAGE_SIZE = 128  # = CommonConfig.image_size, so `data split` and the stages infer the same groups

FEATURE_SIZE = 32  # thumbnail side: adjacent slices stay near-identical, fine texture and noise average out
NEIGHBOURS = 16  # candidate neighbours per image
REFERENCE_RANKS = (8, 16)  # 1-based neighbour ranks whose median distance is the image's reference
MAX_RATIO = 0.5  # a near-duplicate is at least twice closer than the reference, whatever the data say
OVERSIZE = 1.5  # components above this multiple of the typical group size are re-split
FRAGMENT = 0.25  # components below this fraction of the typical group size are attached to a neighbour
MIN_DISTANCE = 1e-6  # exact duplicates have d = 0; keep the logarithm finite


# --------------------------------------------------------------------------- features and neighbours

def thumbnail_features(images: ImageSet) -> np.ndarray:
    """Mean-centred, unit-norm 32x32 thumbnails, float64 [N, D] (area-averaged from the decoded size)."""
    if images.images is None:
        raise DataError("grouping and the audit need decoded images (call simclr_ad.data.decode first)")
    chunks = []
    for start in range(0, len(images.images), 512):  # float copies of 128 px images are large
        pixels = images.images[start:start + 512].float()
        if pixels.shape[-1] > FEATURE_SIZE:
            pixels = torch.nn.functional.adaptive_avg_pool2d(pixels, FEATURE_SIZE)
        chunks.append(pixels.reshape(len(pixels), -1).double().numpy())
    feats = np.concatenate(chunks) if chunks else np.zeros((0, FEATURE_SIZE ** 2))
    feats = feats - feats.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(feats, axis=1, keepdims=True)
    return feats / np.where(norms > 0, norms, 1.0)  # a blank image stays a zero vector


def _nearest(feats: np.ndarray, members: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most similar images among ``members`` (sorted indices) for each member, itself excluded.

    Returns (neighbour index [M, k], cosine [M, k]) by decreasing cosine; -1 pads when there
    are fewer than k others. The search runs in float32; the returned cosines are recomputed
    in float64 so that ranks and thresholds do not depend on BLAS threading.
    """
    neighbours = np.full((len(members), k), -1, dtype=np.int64)
    cosines = np.full((len(members), k), -np.inf)
    k_eff = min(k, len(members) - 1)
    if k_eff < 1:
        return neighbours, cosines
    pool = feats[members].astype(np.float32)
    for start in range(0, len(members), 512):
        rows = members[start:start + 512]
        sim = pool[start:start + len(rows)] @ pool.T
        sim[np.arange(len(rows)), np.arange(start, start + len(rows))] = -np.inf
        top = np.argpartition(-sim, k_eff - 1, axis=1)[:, :k_eff]
        cand = members[top]
        exact = np.einsum("qd,qkd->qk", feats[rows], feats[cand])
        order = np.lexsort((cand, -exact), axis=1)  # by cosine, ties by index
        neighbours[start:start + len(rows), :k_eff] = np.take_along_axis(cand, order, axis=1)
        cosines[start:start + len(rows), :k_eff] = np.take_along_axis(exact, order, axis=1)
    return neighbours, cosines


def _log_distance(cosine: np.ndarray) -> np.ndarray:
    return np.log10(np.clip(1.0 - cosine, MIN_DISTANCE, None))


# --------------------------------------------------------------------------- the near-duplicate criterion

@dataclass(frozen=True)
class NearDuplicates:
    """The one near-duplicate rule, fitted to a dataset; used by grouping and by the audit."""

    features: np.ndarray  # float64 [N, D], see thumbnail_features
    labels: np.ndarray  # int64 [N]
    reference: np.ndarray  # float [N], log10 reference distance (8th..16th same-class neighbours)
    log_ratio: np.ndarray  # float [C], log10 of each class's ratio threshold
    neighbours: np.ndarray  # int64 [N, K], same-class candidates (-1: none)
    cosines: np.ndarray  # float [N, K]

    @classmethod
    def fit(cls, images: ImageSet) -> "NearDuplicates":
        feats = thumbnail_features(images)
        labels = np.asarray(images.labels, dtype=np.int64)
        n_classes = max(len(images.classes), int(labels.max()) + 1 if len(labels) else 0)
        neighbours = np.full((len(labels), NEIGHBOURS), -1, dtype=np.int64)
        cosines = np.full((len(labels), NEIGHBOURS), -np.inf)
        for c in range(n_classes):
            members = np.flatnonzero(labels == c)
            neighbours[members], cosines[members] = _nearest(feats, members, NEIGHBOURS)
        log_dist = _log_distance(cosines)
        valid = neighbours >= 0
        lo, hi = REFERENCE_RANKS
        reference = np.median(log_dist[:, lo - 1:hi], axis=1)
        for i in np.flatnonzero(valid.sum(axis=1) < hi):  # tiny classes: what there is
            row = log_dist[i][valid[i]]
            reference[i] = np.median(row[lo - 1:hi]) if len(row) >= lo else row[-1] if len(row) else np.nan
        log_ratio = np.full(n_classes, math.log10(MAX_RATIO))
        for c in range(n_classes):
            members = np.flatnonzero((labels == c) & valid[:, 0])
            if len(members):
                nearest_ratio = np.median(log_dist[members, 0] - reference[members])
                log_ratio[c] = min(0.5 * nearest_ratio, math.log10(MAX_RATIO))
        return cls(feats, labels, reference, log_ratio, neighbours, cosines)

    def margin(self, i: np.ndarray, j: np.ndarray, cosine: np.ndarray) -> np.ndarray:
        """log10(d / reference) minus the threshold, per pair; <= 0 means near-duplicate."""
        relative = _log_distance(cosine) - 0.5 * (self.reference[i] + self.reference[j])
        return relative - 0.5 * (self.log_ratio[self.labels[i]] + self.log_ratio[self.labels[j]])

    def candidate_pairs(self, across_classes: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Unique candidate pairs (i < j) with their cosine: same-class kNN, or kNN over all images."""
        if across_classes:
            everyone = np.arange(len(self.labels))
            neighbours, cosines = _nearest(self.features, everyone, NEIGHBOURS)
        else:
            neighbours, cosines = self.neighbours, self.cosines
        rows = np.repeat(np.arange(len(self.labels)), neighbours.shape[1])
        cols, cos = neighbours.ravel(), cosines.ravel()
        keep = cols >= 0
        i, j, cos = np.minimum(rows, cols)[keep], np.maximum(rows, cols)[keep], cos[keep]
        _, first = np.unique(i * len(self.labels) + j, return_index=True)
        return i[first], j[first], cos[first]

    def pairs(self, across_classes: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Near-duplicate pairs (i < j, cosine); across_classes also looks for twins with other labels."""
        i, j, cos = self.candidate_pairs(across_classes)
        near = self.margin(i, j, cos) <= 0
        return i[near], j[near], cos[near]

    def threshold(self, classes: Sequence[str]) -> dict:
        """The fitted rule in words and numbers, for split files and audit reports."""
        per_class, typical_cos = {}, {}
        for c, name in enumerate(classes):
            per_class[name] = round(float(10 ** self.log_ratio[c]), 4)
            refs = self.reference[(self.labels == c) & np.isfinite(self.reference)]
            typical = 1 - 10 ** (np.median(refs) + self.log_ratio[c]) if len(refs) else None
            typical_cos[name] = None if typical is None else round(float(typical), 5)
        return {
            "rule": "1-cos(32x32 mean-centred thumbnails) <= ratio x reference distance "
                    "(median distance to the 8th..16th same-class neighbours)",
            "ratio": per_class,
            "typical_cosine": typical_cos,
        }


# --------------------------------------------------------------------------- subject inference

def _components(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    graph = coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def _typical_size(component: np.ndarray) -> float:
    """Median group size seen by an image (image-weighted), so singletons do not outvote groups."""
    sizes = np.bincount(component)
    return float(np.median(sizes[component]))


def _split_oversized(component: np.ndarray, i, j, margin, steps: int = 6, step: float = 0.05) -> np.ndarray:
    """Re-split components over OVERSIZE x typical size with a stricter margin (chains bridging subjects)."""
    edges = np.ones(len(i), dtype=bool)
    for level in range(1, steps + 1):
        sizes = np.bincount(component)
        multi = sizes[sizes >= 2]
        if not len(multi):
            break
        oversized = np.flatnonzero(sizes > OVERSIZE * np.median(multi))
        if not len(oversized):
            break
        inside = np.isin(component[i], oversized)
        edges &= ~(inside & (margin > -step * level))
        component = _components(len(component), i[edges], j[edges])
    return component


def _attach_fragments(component: np.ndarray, i, j, cosine, rounds: int = 8) -> np.ndarray:
    """Attach components smaller than FRAGMENT x typical size to their most similar neighbour's group."""
    min_size = FRAGMENT * _typical_size(component)
    for _ in range(rounds):
        sizes = np.bincount(component)
        ci, cj = component[i], component[j]
        small_i, small_j = sizes[ci] < min_size, sizes[cj] < min_size
        # an edge seen from each side: (small component, other component, cosine)
        src = np.concatenate([ci[small_i & (ci != cj)], cj[small_j & (ci != cj)]])
        dst = np.concatenate([cj[small_i & (ci != cj)], ci[small_j & (ci != cj)]])
        cos = np.concatenate([cosine[small_i & (ci != cj)], cosine[small_j & (ci != cj)]])
        if not len(src):
            break
        order = np.lexsort((dst, -cos, src))
        best = order[np.r_[True, src[order][1:] != src[order][:-1]]]
        merged = _components(len(sizes), src[best], dst[best])
        component = merged[component]
    return component


def _relabel(component: np.ndarray) -> np.ndarray:
    """Group ids numbered by the first image of each group: stable and independent of scipy's order."""
    _, first = np.unique(component, return_index=True)
    rank = np.empty(component.max() + 1, dtype=np.int64)
    rank[component[np.sort(first)]] = np.arange(len(first))
    return rank[component]


def infer_groups(images: ImageSet, rule: Optional[NearDuplicates] = None) -> np.ndarray:
    """Auto grouping: an int group id per image; slices of one inferred subject share an id.

    Groups never mix classes. ``images.images`` must be decoded.
    """
    if len(images) == 0:
        return np.zeros(0, dtype=np.int64)
    rule = rule or NearDuplicates.fit(images)
    i, j, cos = rule.candidate_pairs()
    margin = rule.margin(i, j, cos)
    near = margin <= 0
    component = _components(len(images), i[near], j[near])
    component = _split_oversized(component, i[near], j[near], margin[near])
    component = _attach_fragments(component, i, j, cos)
    return _relabel(component)


def label_free_groups(images: ImageSet) -> np.ndarray:
    """Subject ids per image for self-supervision: the known ones, else ``infer_groups`` with labels hidden.

    Hiding the labels lets groups span classes; on the Kaggle set they still come out as 200 groups
    of 32 slices, each within one class.
    """
    if images.subjects is not None:
        return np.unique(np.asarray(images.subjects, dtype=str), return_inverse=True)[1].astype(np.int64)
    return infer_groups(replace(images, labels=np.zeros(len(images), dtype=np.int64), classes=["all"]))


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


def _group_ids(images: ImageSet, group_by: str) -> tuple[list[str], Optional[dict]]:
    """A string group id per image, plus how auto groups were made."""
    if group_by == "subject":
        return [str(s) for s in images.subjects], None  # type: ignore[union-attr]
    if group_by == "image":
        return [f"i{k:05d}" for k in range(len(images))], None
    rule = NearDuplicates.fit(images)
    groups = infer_groups(images, rule)
    info = {"method": "connected near-duplicates within a class (see simclr_ad/splits.py)",
            "feature_size": FEATURE_SIZE, "decoded_size": int(images.images.shape[-1]),  # type: ignore[union-attr]
            "threshold": rule.threshold(images.classes)}
    return [f"g{g:04d}" for g in groups], info


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


def _split_groups(images: ImageSet, group_ids: list[str], val_frac: float, test_frac: float,
                  seed: int) -> tuple[list[str], list[str]]:
    """Split per image, and warnings. Pre-split layouts keep their folders (val carved from train if absent)."""
    rng = np.random.default_rng(seed)
    members: dict[str, list[int]] = {}
    for idx, group in enumerate(group_ids):
        members.setdefault(group, []).append(idx)
    label_of = {g: _group_label(images.labels, m) for g, m in members.items()}
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
    """The top ceil(fraction x n) (at least 1) of one class's ranked train images."""
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


def label_subset(splits: dict, fraction: float) -> list[str]:
    """Train paths labelled at ``fraction`` of the training split: stratified, >= 1 per class, nested.

    Stored fractions are returned as stored; any other fraction in (0, 1] is taken from the
    same per-class ranking (``train_rank``), so every subset nests with every other.
    """
    value = _check_fraction(fraction)
    empty = [name for name in splits["classes"] if not splits["train_rank"].get(name)]
    if empty:
        raise DataError(f"label fraction {fraction} cannot give every class at least one image: "
                        f"the training split has no image of {', '.join(empty)}")
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
    group_ids, grouping = _group_ids(images, resolved)
    split_of, notes = _split_groups(images, group_ids, val_frac, test_frac, seed)
    by_split = {s: sorted(p for p, t in zip(images.paths, split_of) if t == s) for s in SPLITS}

    rng = np.random.default_rng([seed, 1])  # its own stream: the ranking does not move the split
    train_rank = {}
    for c, name in enumerate(images.classes):
        members = sorted(p for p, t, y in zip(images.paths, split_of, images.labels) if t == "train" and y == c)
        train_rank[name] = [members[k] for k in rng.permutation(len(members))]
    splits = {"train": by_split["train"], "train_rank": train_rank, "classes": list(images.classes)}
    fraction_values = sorted({_check_fraction(f) for f in fractions} | {1.0})
    image_counts, group_counts = _counts(images, split_of, group_ids)
    sizes = np.array(list(Counter(group_ids).values()))
    splits.update({
        "format": SPLIT_FORMAT,
        "layout": images.layout,
        "group_by": resolved,
        "group_by_requested": group_by,
        "seed": int(seed),
        "val_frac": float(val_frac),
        "test_frac": float(test_frac),
        "val": by_split["val"],
        "test": by_split["test"],
        "groups": dict(zip(images.paths, group_ids)),
        "fractions": {_fraction_key(f): _subset(splits, f) for f in fraction_values},
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
        "examples": examples,
    }


def save_montage(images: ImageSet, report: dict, out_png: str | Path) -> None:
    """One row per example pair of the audit: the two images side by side with splits and cosine."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    examples = report.get("examples", [])
    if images.images is None:
        raise DataError("the montage needs decoded images (call simclr_ad.data.decode first)")
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    rows = max(1, len(examples))
    fig, axes = plt.subplots(rows, 2, figsize=(4.4, 2.2 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    if not examples:
        axes[0, 0].text(0, 0.5, "no near-duplicate pair crosses the splits", fontsize=9)
    for row, example in enumerate(examples):
        a, b = images.indices_of([example["a"], example["b"]])
        for col, (idx, key) in enumerate(((a, "a"), (b, "b"))):
            axes[row, col].imshow(images.images[idx, 0].numpy(), cmap="gray", vmin=0, vmax=255)
            axes[row, col].set_title(f"{example['splits'].split('|')[col]}: {Path(example[key]).name}", fontsize=7)
        axes[row, 0].text(1.02, -0.08, f"cos {example['cosine']:.4f}", transform=axes[row, 0].transAxes,
                          ha="center", fontsize=7)
    fig.suptitle(f"{report.get('cross_split_pairs', 0)} near-duplicate pairs cross splits "
                 f"(group_by={report.get('group_by')})", fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------- CLI

def _load(args: argparse.Namespace) -> ImageSet:
    from simclr_ad import data

    if not args.data_dir:
        raise DataError(f"`{args.command}` needs --data-dir DIR (class folders, pre-split folders or a manifest)")
    if args.image_size < 16:
        raise DataError(f"--image-size {args.image_size} is too small (>= 16)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unreadable files are listed in the summary instead
        from simclr_ad.volume_data import slicing_of
        images = data.decode(data.scan(args.data_dir, slicing=slicing_of(args)), args.image_size, args.cache_dir)
    if images.skipped:
        print(f"skipped {len(images.skipped)} file(s): " + ", ".join(p for p, _ in images.skipped[:5])
              + (" ..." if len(images.skipped) > 5 else ""))
    return images


def format_summary(splits: dict) -> str:
    """Per-split class counts and group statistics, as printed by `data split`."""
    stats = splits["group_stats"]
    lines = [f"group_by {splits['group_by']} (asked: {splits.get('group_by_requested')}), seed {splits['seed']}: "
             f"{stats['n_groups']} groups, sizes {stats['min']}..{stats['max']} (median {stats['median']:g})"
             + (f", {stats['mixed_class_groups']} with mixed classes" if stats.get("mixed_class_groups") else "")]
    width = max(len(c) for c in splits["classes"] + ["total"])
    lines.append(f"  {'':<{width}}  " + "  ".join(f"{s:>14}" for s in SPLITS))
    for name in splits["classes"]:
        cells = [f"{splits['counts'][s][name]:6d} img {splits['group_counts'][s][name]:4d} gr" for s in SPLITS]
        lines.append(f"  {name:<{width}}  " + "  ".join(cells))
    totals = [f"{sum(splits['counts'][s].values()):6d} img {len({splits['groups'][p] for p in splits[s]}):4d} gr"
              for s in SPLITS]
    lines.append(f"  {'total':<{width}}  " + "  ".join(totals))
    fractions = sorted(splits["fractions"].items(), key=lambda kv: float(kv[0]))
    lines.append("  label fractions (train images): " + ", ".join(f"{k}: {len(v)}" for k, v in fractions))
    if splits.get("grouping"):
        ratio = splits["grouping"]["threshold"]["ratio"]
        cos = splits["grouping"]["threshold"]["typical_cosine"]
        lines.append("  near-duplicate ratio per class: "
                     + ", ".join(f"{c} {ratio[c]:.3f} (~cos {cos[c]})" for c in splits["classes"]))
    lines += [f"  note: {note}" for note in splits.get("notes", [])]
    return "\n".join(lines)


def _cmd_split(args: argparse.Namespace) -> None:
    if not args.out:
        raise DataError("`split` needs --out FILE (e.g. --out splits.json)")
    _check_shares(args.val, args.test)  # before the slow decode
    images = _load(args)
    splits = make_splits(images, args.group_by, args.val, args.test, args.seed)
    write_splits(splits, args.out)
    if args.json:
        print(json.dumps({k: splits[k] for k in ("group_by", "seed", "classes", "counts", "group_counts",
                                                 "group_stats", "grouping", "notes")}, indent=2, sort_keys=True))
        return
    print(f"wrote {args.out}: {len(images)} images from {images.root}")
    print(format_summary(splits))


def _cmd_audit(args: argparse.Namespace) -> None:
    if not args.splits:
        raise DataError("`audit` needs --splits FILE (written by `python -m simclr_ad.data split`)")
    splits = read_splits(args.splits)
    images = _load(args)
    report = audit(images, splits, max_examples=args.max_examples)
    if args.montage:
        save_montage(images, report, args.montage)
    if args.out:
        atomic_write_text(Path(args.out), json.dumps(report, indent=2, sort_keys=True) + "\n")
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
        return
    pairs = ", ".join(f"{k}: {v}" for k, v in report["pairs_by_splits"].items())
    twins = report["share_with_train_twin"]
    print(f"{args.splits} (group_by {report['group_by']}): {report['cross_split_pairs']} of "
          f"{report['near_duplicate_pairs']} near-duplicate pairs cross splits ({pairs})")
    print("  share with a near-twin in train: "
          + ", ".join(f"{k} {100 * v:.1f}%" for k, v in twins.items() if v is not None))
    for example in report["examples"]:
        print(f"  {example['cosine']:.5f}  {example['splits']:<10}  {example['a']}  ~  {example['b']}")
    if args.montage:
        print(f"  montage: {args.montage}")


def add_cli(subparsers) -> None:
    """Register `split` and `audit` on the sub-parsers of ``python -m simclr_ad.data``."""
    def common(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--data-dir", default=None, help="dataset root (class folders, pre-split or manifest)")
        parser.add_argument("--cache-dir", default=None, help="decoded-image cache (default ~/.cache/simclr_ad)")
        parser.add_argument("--image-size", type=int, default=CLI_IMAGE_SIZE,
                            help=f"decode size; keep the stages' image_size to infer the same groups "
                                 f"(default {CLI_IMAGE_SIZE})")
        parser.add_argument("--json", action="store_true", help="print one JSON object")
        from simclr_ad.volume_data import add_cli_args

        add_cli_args(parser, preview=False)  # volumes: cut them as the stages' slice_axis/slices do

    split = subparsers.add_parser("split", help="write a grouped, stratified splits.json with label fractions")
    common(split)
    split.add_argument("--out", default=None, help="split file to write, e.g. splits.json")
    split.add_argument("--group-by", default="default", choices=GROUP_BY,
                       help="subject ids, auto-inferred groups or naive per-image "
                            "(default: subject when ids are known, else auto)")
    split.add_argument("--val", type=float, default=0.1, help="validation share of all images (default 0.1)")
    split.add_argument("--test", type=float, default=0.2, help="test share of all images (default 0.2)")
    split.add_argument("--seed", type=int, default=0)
    split.set_defaults(handler=_cmd_split)

    check = subparsers.add_parser("audit", help="count near-duplicate pairs that cross train/val/test")
    common(check)
    check.add_argument("--splits", default=None, help="split file to check")
    check.add_argument("--montage", default=None, help="save a PNG of the worst crossing pairs")
    check.add_argument("--out", default=None, help="also write the JSON report to this file")
    check.add_argument("--max-examples", type=int, default=12)
    check.set_defaults(handler=_cmd_audit)
