"""Near-duplicate features and subject inference: which images are slices of one brain.

Features are 32x32 thumbnails, mean-centred per image and L2-normalised; d = 1 - cosine.
Every image gets a reference distance, the median distance to its 8th..16th nearest
same-class neighbours. A pair is a near-duplicate when its distance, relative to the two
references, is below the class ratio threshold, derived per class from the data (see
``NearDuplicates``). Auto groups are the connected components of near-duplicate pairs,
re-split when oversized and with fragments attached to their nearest group (see splits.py
for how groups become a split).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional, Sequence

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components, minimum_spanning_tree

from simclr_ad.data import DataError, ImageSet

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


def infer_groups(images: ImageSet, rule: Optional[NearDuplicates] = None, attach: bool = True) -> np.ndarray:
    """Auto grouping: an int group id per image; slices of one inferred subject share an id.

    Groups never mix classes. ``images.images`` must be decoded. ``attach`` False stops before small
    components are attached to their nearest group: the chain fragments, each its own group.
    """
    if len(images) == 0:
        return np.zeros(0, dtype=np.int64)
    rule = rule or NearDuplicates.fit(images)
    i, j, cos = rule.candidate_pairs()
    margin = rule.margin(i, j, cos)
    near = margin <= 0
    component = _components(len(images), i[near], j[near])
    component = _split_oversized(component, i[near], j[near], margin[near])
    return _relabel(_attach_fragments(component, i, j, cos) if attach else component)


def weakest_links(groups: np.ndarray, i: np.ndarray, j: np.ndarray, cosine: np.ndarray) -> dict[int, float]:
    """Per group, the cosine of the weakest link that must hold it together: the smallest edge of its
    maximum spanning tree over the pairs (i, j) inside it (nan for a group those pairs do not connect;
    1.0 for a single image). A group stitched across a gap has a weak one."""
    inside = (groups[i] == groups[j]) & (i != j)
    a, b, cos = np.minimum(i, j)[inside], np.maximum(i, j)[inside], cosine[inside]
    _, first = np.unique(a * len(groups) + b, return_index=True)  # each pair once (a sparse matrix sums repeats)
    a, b, cos = a[first], b[first], cos[first]
    tree = minimum_spanning_tree(coo_matrix((2.0 - cos, (a, b)), shape=(len(groups), len(groups))).tocsr()).tocoo()
    links: dict[int, float] = {int(g): 1.0 for g in np.unique(groups)}
    edges = np.zeros(len(groups), dtype=np.int64)
    for row, weight in zip(tree.row, tree.data):
        g = int(groups[row])
        links[g] = min(links[g], float(2.0 - weight))
        edges[g] += 1
    sizes = np.bincount(groups, minlength=len(edges))
    return {g: (v if edges[g] == sizes[g] - 1 else math.nan) for g, v in links.items()}


def label_free_groups(images: ImageSet) -> np.ndarray:
    """Subject ids per image for self-supervision: the known ones, else ``infer_groups`` with labels hidden.

    Hiding the labels lets groups span classes; on the Kaggle set they still come out as 200 groups
    of 32 slices, each within one class.
    """
    if images.subjects is not None:
        return np.unique(np.asarray(images.subjects, dtype=str), return_inverse=True)[1].astype(np.int64)
    return infer_groups(replace(images, labels=np.zeros(len(images), dtype=np.int64), classes=["all"]))


WEAK_LINK = 0.8  # a group held together by a link below this cosine joins slices that are not near-duplicates


def weakest_link_summary(names: Sequence[str], rule: NearDuplicates) -> dict:
    """How strong the weakest link inside each group is (``weakest_links`` over the rule's within-class
    candidate pairs), for ``names``, a group name per image ("" for none): quantiles, the groups below
    WEAK_LINK, and every group's value."""
    ids, codes = np.unique(np.asarray(names, dtype=str), return_inverse=True)
    links = weakest_links(codes, *rule.candidate_pairs())
    values = np.array([links[k] for k in range(len(ids)) if ids[k]], dtype=float)
    held = values[np.isfinite(values)]
    quantile = (lambda q: round(float(np.quantile(held, q)), 4)) if len(held) else (lambda q: None)
    return {"n_groups": int(len(values)), "unconnected": int(np.sum(~np.isfinite(values))),
            "min": quantile(0.0), "p10": quantile(0.1), "median": quantile(0.5),
            f"below_{WEAK_LINK}": int(np.sum(held < WEAK_LINK)),
            "per_group": {str(ids[k]): (round(links[k], 4) if math.isfinite(links[k]) else None)
                          for k in range(len(ids)) if ids[k]}}
