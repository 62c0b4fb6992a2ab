"""Synthetic axial T1 brain-MRI slices ("phantoms") with graded atrophy.

The phantoms let every stage run, learn and be tested with no download. They
mimic the structure of the Kaggle Alzheimer's MRI set that the real experiments
use: four grades with the same class shares, and subjects made of consecutive
axial slices that are near-duplicates of each other. That last property is what
makes an image-level split leak, so the phantoms must reproduce it.

Each subject draws its anatomy (head size, shape, pose, sulcal pattern), its
acquisition (gain, bias field, noise, blur) and a continuous atrophy score
``grade + N(0, 0.1)`` plus a normal-ageing term. As in Alzheimer's disease, the
score acts on the ventricles and the medial temporal lobes only: the lateral
ventricles widen by a constant factor per grade, the third ventricle widens, the
hippocampi shrink and their temporal horns dilate. The cortex does not change
with the score (v4; v3 thinned it a little, v2 a lot): cortical changes spread the
mask along the whole brain outline, where a coarse Grad-CAM cannot follow. A
subject's slices lie in the ventricular levels, as the Kaggle set's do, or are
centred on them when there are too many to fit. Each slice is
rendered from a tissue label map, so the ground-truth atrophy mask is exact: the
pixels that are CSF in this subject but tissue in the same subject rendered at
score 0.

Grade-0 masks are small but usually not empty: ageing and the within-grade
spread give healthy subjects a little atrophy too, as in real data.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Optional

import numpy as np

CLASSES = ("Non_Demented", "Very_Mild_Demented", "Mild_Demented", "Moderate_Demented")  # grade 0..3
CLASS_SHARES = (0.50, 0.35, 0.14, 0.01)  # like the real Kaggle set: 3200/2240/896/64 of 6400

# Labels of the tissue map each slice is rendered from.
BACKGROUND, SCALP, SKULL, CSF, GREY, WHITE, DEEP_GREY = range(7)

PHANTOM_VERSION = 4  # bump when the same arguments give other images: it keys the on-disk cache
_SCORE_SD = 0.10  # spread of the atrophy score around the grade (v1: 0.35, which a CNN could not learn)
# How much one unit of atrophy score changes each structure (v4; v3, v2 in brackets). The grade lives
# in the medial temporal lobes and the ventricles, the hallmarks of Alzheimer's disease. v2's cortical
# rim made the atrophy mask cover the whole brain outline, where no coarse Grad-CAM can concentrate;
# v3's faint cortical changes still drew the CAM there: with them, Grad-CAM (layer2) reached 1.6x (random
# init) and 2.7x (SimCLR init) chance on validation slices, without them 3.0x and 3.1x (one run each,
# results/demo/probe_v4.txt), so v4 drops them.
_ATROPHY = {
    "brain_pull": 0.0,  # the brain surface pulls away from the skull (0.005, 0.04)
    "sulcal_widening": 0.0,  # sulci widen by this factor per unit (0.1, 1.5)
    "sulcal_deepening": 0.0,  # sulci deepen by this factor per unit (0.02, 0.1)
    "cortical_thinning": 0.0,  # the grey ribbon thins by this share per unit (0.03, 0.1)
    # Lateral ventricles widen by this factor per unit: x1.8, x3.2, x5.8 at grades 1-3. v3-v2 widened
    # them linearly, by 1 + 1.5 x score: x2.5, x4, x5.5, so grades 2 and 3 differed least, and the
    # network confused them most (90 % balanced accuracy at 100 % labels; 97-99 % with v4, one run each).
    "ventricle_growth": 1.8,
    "hippocampal_shrink": 0.2,  # the hippocampus shrinks inside its fossa (0.2)
    "temporal_horn": 0.4,  # the temporal horn around the hippocampus dilates by this share per unit (0)
}
_VENTRICLE_LEVELS = 0.35  # width (in slice level) of the band where the lateral ventricles show (v2: 0.25)
_VENTRICLE_SPREAD = 0.1  # subjects' natural ventricle size: 1 +- this (v1: 0.2)
_AGEING = (0.1, 0.05)  # mean and sd of the grade-independent ageing term (v1: (0.15, 0.1))
_LEVELS = (0.25, 0.65)  # axial levels a subject's slices span, 0 skull base .. 1 vertex (v2: 0.1-0.85)
_CHUNK = 8  # slices rendered together
_LEVEL_STEP = 0.02  # slice-level change between adjacent slices: adjacent slices are near-duplicates


@dataclass(frozen=True)
class Phantoms:
    """A generated dataset, in generation order (subject by subject, slice by slice)."""

    images: np.ndarray  # uint8 [N, H, W] grayscale, black background
    masks: np.ndarray  # bool [N, H, W] atrophy region vs the same subject at score 0 (grade 0: small)
    labels: np.ndarray  # int64 [N], index into CLASSES
    subjects: list[str]  # subject id per image, e.g. "sub-0007"
    slice_index: np.ndarray  # int64 [N], slice position within its subject


@dataclass(frozen=True)
class _Subject:
    """Everything random about one subject, drawn once, before rendering."""

    grade: int
    score: float  # continuous atrophy: grade + spread + ageing, >= 0
    levels: np.ndarray  # float [S], axial level of each slice: 0 skull base .. 1 vertex
    # pose and head shape
    centre: tuple[float, float]
    angle: float
    half_length: float  # anterior-posterior half axis, in units of the half image
    aspect: float  # width / length
    egg: float  # the back of the head is wider than the front
    shape_harmonics: np.ndarray  # [3, 2]: amplitude and phase of boundary modes 2..4
    # layers, as fractions of the head radius
    scalp: float
    skull: float
    csf_rim: float
    cortex: float
    # sulcal pattern
    n_sulci: int  # even, so that both ends of the midline fall on a sulcus
    sulcus_wobble: np.ndarray  # [3, 2]: amplitude and phase of the even angular modes 2, 4, 6
    sulcus_bend: np.ndarray  # [3, 2]: amplitude and phase of two tilt modes and one curvature mode
    sulcus_width: float
    sulcus_depths: np.ndarray  # [n_sulci]
    sulcus_depth_phase: np.ndarray  # [n_sulci]: depths drift slowly with the level
    # deep structures, as natural-size factors
    ventricle_size: float
    hippocampus_size: float
    # acquisition
    intensities: np.ndarray  # [7] grey value per tissue label
    gain: float
    bias: np.ndarray  # [5] coefficients of the log bias field
    noise: float
    blur: float  # Gaussian sigma at 128 px


class _Site(NamedTuple):
    """A deep structure's bounding box and the offsets from its centre inside it."""

    rows: slice
    cols: slice
    du: np.ndarray  # [h, w] along the structure's own left-right axis
    dv: np.ndarray  # [h, w] along its anterior-posterior axis


class _Plane(NamedTuple):
    """Per-subject coordinate fields that do not depend on the slice level, inside the head's box."""

    box: tuple[slice, slice]  # rows and columns of the image that the head can cover
    radius: np.ndarray  # [h, w] radius over the head boundary at the widest level (1: skin)
    lateral: np.ndarray  # [h, w] distance to the axis of the nearest sulcus, same units
    which: np.ndarray  # [h, w] index of that sulcus
    sylvian: tuple[int, ...]  # indices of the sulci that the Sylvian fissures deepen
    sites: dict[str, Optional[_Site]]  # None: the structure lies outside the box


class _Slab(NamedTuple):
    """Fields of a few consecutive slices."""

    levels: np.ndarray  # [s]
    rho: np.ndarray  # [s, h, w] radius over the head boundary at this level
    lateral_sq: np.ndarray  # [s, h, w] squared distance to the nearest sulcal axis, same units
    depth: np.ndarray  # [s, h, w] depth of that sulcus below the brain surface
    width: np.ndarray  # [s, h, w] relative half width of that sulcus: deep ones are wider


# Deep structures: centre (u, v), turn, and reach (u, v) in head-normalised units.
# Each reach bounds the structure at any level and any plausible atrophy score.
_SITE_SPECS = {
    "ventricles": (0.0, -0.02, 0.0, 0.62, 0.52),
    "third_ventricle": (0.0, 0.05, 0.0, 0.05, 0.13),
    "midbrain": (0.0, 0.12, 0.0, 0.24, 0.22),
    **{f"caudate{side:+d}": (side * 0.15, -0.16, 0.0, 0.1, 0.1) for side in (-1, 1)},
    **{f"thalamus{side:+d}": (side * 0.12, 0.08, 0.0, 0.1, 0.14) for side in (-1, 1)},
    **{f"hippocampus{side:+d}": (side * 0.34, 0.06, side * 0.45, 0.17, 0.24) for side in (-1, 1)},
}


def _subject_counts(n_subjects: int, min_per_class: int = 2) -> list[int]:
    """Subjects per class: largest-remainder shares, with a floor so rare classes exist
    (``min_per_class`` from 40 subjects on, 1 from 4)."""
    shares = np.asarray(CLASS_SHARES) * n_subjects
    counts = np.floor(shares).astype(int)
    for idx in np.argsort(-(shares - counts), kind="stable")[: n_subjects - counts.sum()]:
        counts[idx] += 1
    floor = min_per_class if n_subjects >= 40 else 1 if n_subjects >= 4 else 0
    for idx in range(len(CLASSES)):
        while counts[idx] < floor:
            counts[idx] += 1
            counts[int(np.argmax(counts))] -= 1
    return counts.tolist()


def _draw_subject(rng: np.random.Generator, grade: int, n_slices: int) -> _Subject:
    """Draw one subject's anatomy, atrophy score, slice levels and acquisition."""
    step = min(_LEVEL_STEP, 0.6 / max(n_slices - 1, 1))
    span = step * (n_slices - 1)
    if span <= _LEVELS[1] - _LEVELS[0]:
        start = rng.uniform(_LEVELS[0], _LEVELS[1] - span)
    else:  # a subject longer than the band is centred on it, jittered so that subjects' levels differ
        start = (_LEVELS[0] + _LEVELS[1] - span) / 2 + rng.uniform(-0.075, 0.075)
    # Ageing atrophy is independent of the grade, so a grade alone never fixes the score.
    ageing = float(np.clip(rng.normal(*_AGEING), 0.0, 0.4))
    score = max(0.0, grade + rng.normal(0.0, _SCORE_SD)) + ageing
    n_sulci = 2 * int(rng.integers(14, 19))
    intensities = np.array([
        0.0,
        rng.uniform(0.60, 0.85),  # scalp fat is bright on T1
        rng.uniform(0.04, 0.10),  # cortical bone has almost no signal
        rng.uniform(0.05, 0.12),  # CSF is dark on T1
        rng.uniform(0.40, 0.50),  # grey matter
        rng.uniform(0.70, 0.80),  # white matter is brighter than grey on T1
        rng.uniform(0.55, 0.62),  # deep grey nuclei sit in between
    ])
    return _Subject(
        grade=grade, score=float(score), levels=start + step * np.arange(n_slices),
        centre=(float(rng.normal(0, 0.03)), float(rng.normal(0, 0.03))), angle=float(rng.normal(0, 0.12)),
        half_length=rng.uniform(0.78, 0.90), aspect=rng.uniform(0.76, 0.88), egg=rng.uniform(0.03, 0.10),
        shape_harmonics=np.stack([rng.uniform(0, 0.02, 3), rng.uniform(0, 2 * np.pi, 3)], axis=1),
        scalp=rng.uniform(0.05, 0.08), skull=rng.uniform(0.04, 0.06), csf_rim=rng.uniform(0.008, 0.018),
        cortex=rng.uniform(0.055, 0.07),
        n_sulci=n_sulci,
        sulcus_wobble=np.stack([rng.uniform(0.8, 2.0, 3), rng.uniform(0, 2 * np.pi, 3)], axis=1),
        sulcus_bend=np.stack([rng.uniform(10, 25, 3), rng.uniform(0, 2 * np.pi, 3)], axis=1),
        sulcus_width=rng.uniform(0.008, 0.012), sulcus_depths=rng.uniform(0.07, 0.2, n_sulci),
        sulcus_depth_phase=rng.uniform(0, 2 * np.pi, n_sulci),
        ventricle_size=rng.uniform(1 - _VENTRICLE_SPREAD, 1 + _VENTRICLE_SPREAD), hippocampus_size=rng.uniform(0.9, 1.1),
        intensities=intensities, gain=rng.uniform(0.85, 1.1), bias=rng.normal(0, 0.12, 5),
        noise=rng.uniform(0.012, 0.035), blur=rng.uniform(0.5, 0.9),
    )


def _head_scale(levels: np.ndarray) -> np.ndarray:
    """Cross-section size at each level: widest a little below the middle, small at the vertex."""
    return np.sqrt(np.clip(1.0 - ((levels - 0.4) / 0.7) ** 2, 0.2, 1.0))


def _bump(levels: np.ndarray, centre: float, width: float) -> np.ndarray:
    """How present a structure is at each level (1 at ``centre``, fading over ``width``)."""
    return np.exp(-(((levels - centre) / width) ** 2))


def _sulcal_phase(p: _Subject, theta: np.ndarray, radius: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Phase whose multiples of 2 pi are the sulcal axes, and its gradient (d/dtheta, d/dradius).

    Only even angular modes wobble the sulci and the bend vanishes on the midline,
    so with an even sulcus count the front and back of the midline are both axes:
    those become the interhemispheric fissure.
    """
    phase = p.n_sulci * (theta + np.pi / 2)
    dtheta = np.full_like(theta, p.n_sulci)
    for k, (amplitude, offset) in zip((2, 4, 6), p.sulcus_wobble.tolist()):  # floats keep float32
        phase = phase + amplitude * (np.sin(k * theta + offset) - np.sin(-k * np.pi / 2 + offset))
        dtheta = dtheta + k * amplitude * np.cos(k * theta + offset)
    # Sulci tilt and curve as they deepen, neighbours differently (odd modes); the bend
    # vanishes on the midline so the fissure stays straight.
    depth = np.clip(0.8 - radius, 0.0, 0.4)  # constant deeper down, where no sulcus reaches
    (tilt_a, tilt_ph), (tilt_b, tilt_ph_b), (curve, curve_ph) = p.sulcus_bend.tolist()
    tilt = tilt_a * np.sin(5 * theta + tilt_ph) + tilt_b * np.sin(9 * theta + tilt_ph_b)
    curvature = 5 * curve * np.sin(7 * theta + curve_ph)
    midline = np.cos(theta) ** 2
    phase = phase + midline * (tilt * depth + curvature * depth**2)
    return phase, dtheta, -midline * (tilt + 2 * curvature * depth) * (depth < 0.4)


def _plane(p: _Subject, size: int) -> _Plane:
    """Head-normalised coordinates and the sulcal pattern, cropped to the head's box."""
    axis = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
    x, y = axis[None, :] - p.centre[0], axis[:, None] - p.centre[1]
    cos, sin = math.cos(p.angle), math.sin(p.angle)
    x, y = cos * x + sin * y, -sin * x + cos * y
    v = (y / p.half_length).astype(np.float32)
    u = (x / (p.half_length * p.aspect * (1 + p.egg * v))).astype(np.float32)
    theta = np.arctan2(v, u)
    boundary = 1 + sum(float(a) * np.cos(k * theta + float(ph)) for k, (a, ph) in zip((2, 3, 4), p.shape_harmonics))
    radius = np.hypot(u, v) / boundary
    # Everything else is computed inside the head's box only (no slice is wider than the
    # widest level), with a margin for the blur: the corners are background anyway.
    margin = (2 * p.blur * size / 128 + 3) / (p.half_length * size / 2)
    inside = radius < 1 + margin
    rows, cols = np.flatnonzero(inside.any(axis=1)), np.flatnonzero(inside.any(axis=0))
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    u, v, theta, radius = u[box], v[box], theta[box], radius[box]

    phase, dtheta, dradius = _sulcal_phase(p, theta, radius)
    turns = np.rint(phase / (2 * np.pi))
    # Distance to the axis = phase offset over the phase gradient (polar coordinates).
    lateral = np.abs(phase - 2 * np.pi * turns) / np.sqrt(dradius**2 + (dtheta / np.maximum(radius, 1e-3)) ** 2)
    # The Sylvian fissures deepen the sulci that reach the surface laterally, slightly anterior.
    sylvian = tuple(int(np.rint(_sulcal_phase(p, np.array(angle), np.array(0.8))[0] / (2 * np.pi))) % p.n_sulci
                    for angle in (-0.3, 0.3 - np.pi))

    sites: dict[str, Optional[_Site]] = {}
    for name, (cu, cv, turn, reach_u, reach_v) in _SITE_SPECS.items():
        du, dv = u - cu, v - cv
        du, dv = math.cos(turn) * du + math.sin(turn) * dv, -math.sin(turn) * du + math.cos(turn) * dv
        near = (np.abs(du) < reach_u) & (np.abs(dv) < reach_v)
        site_rows, site_cols = np.flatnonzero(near.any(axis=1)), np.flatnonzero(near.any(axis=0))
        if site_rows.size == 0:
            sites[name] = None
            continue
        site_box = (slice(site_rows[0], site_rows[-1] + 1), slice(site_cols[0], site_cols[-1] + 1))
        sites[name] = _Site(site_box[0], site_box[1], du[site_box], dv[site_box])
    return _Plane(box, radius.astype(np.float32), lateral.astype(np.float32),
                  turns.astype(np.intp) % p.n_sulci, sylvian, sites)


def _slab(p: _Subject, plane: _Plane, levels: np.ndarray) -> _Slab:
    """Fields of the slices at ``levels``: the cross-section shrinks, sulcal depths drift."""
    depths = p.sulcus_depths * (1 + 0.25 * np.sin(4 * np.pi * levels[:, None] + p.sulcus_depth_phase))
    depths[:, 0], depths[:, p.n_sulci // 2] = 0.40, 0.34  # interhemispheric fissure, front and back
    for side in plane.sylvian:
        depths[:, side] = np.maximum(depths[:, side], 0.32 * _bump(levels, 0.35, 0.2))
    scale = _head_scale(levels).astype(np.float32)[:, None, None]
    depth = depths.astype(np.float32)[:, plane.which]
    lateral = plane.lateral[None] / scale
    return _Slab(levels, plane.radius[None] / scale, lateral * lateral, depth, 0.6 + 2.5 * depth)


def _paint(labels: np.ndarray, value: int, site: Optional[_Site], half_u: np.ndarray, half_v: np.ndarray,
           du: Optional[np.ndarray] = None) -> None:
    """Set ``labels`` [s, h, w] to ``value`` inside an ellipse at ``site`` with per-slice half axes [s].

    ``du`` replaces the site's own left-right offsets (for bent structures).
    Work is cropped to the site's box and to the slices where the structure exists.
    """
    half_u = np.broadcast_to(half_u, labels.shape[:1])
    half_v = np.broadcast_to(half_v, labels.shape[:1])
    active = np.flatnonzero((half_u > 1e-3) & (half_v > 1e-3))
    if site is None or active.size == 0:
        return
    du = site.du if du is None else du
    inv_u = (1 / half_u[active] ** 2).astype(np.float32)[:, None, None]
    inv_v = (1 / half_v[active] ** 2).astype(np.float32)[:, None, None]
    inside = du * du * inv_u + site.dv * site.dv * inv_v < 1
    view = labels[:, site.rows, site.cols]
    view[active] = np.where(inside, np.int8(value), view[active])


def _label_map(p: _Subject, plane: _Plane, slab: _Slab, score: float, detail: bool = True) -> np.ndarray:
    """Tissue labels [s, h, w] of the slab's slices as if the atrophy score were ``score``.

    ``detail=False`` only gets CSF versus tissue right inside the skull (everything
    outside is CSF), which is all the healthy reference of the mask needs, and is faster.
    """
    rho, levels, sites = slab.rho, slab.levels, plane.sites
    skull_inner = 1 - p.scalp - p.skull
    brain_surface = skull_inner - p.csf_rim - _ATROPHY['brain_pull'] * score  # the brain pulls away from the skull
    along = np.float32(brain_surface) - rho  # depth below the brain surface
    # Sulci: CSF within a half width of the axis, down to the sulcus' depth (rounded bottom);
    # deep sulci (the fissures) are wider, and all widen with atrophy. In-place steps: this
    # is the hot loop of the generator.
    dist = slab.depth * np.float32(-(1 + _ATROPHY['sulcal_deepening'] * score))
    dist += along
    np.maximum(dist, 0, out=dist)
    dist *= dist
    dist += slab.lateral_sq
    np.sqrt(dist, out=dist)
    dist -= np.float32(p.sulcus_width * (1 + _ATROPHY['sulcal_widening'] * score)) * slab.width
    np.minimum(dist, along, out=dist)
    # WHITE - 1 is GREY and GREY - 1 is CSF, so labels are arithmetic on the distance to CSF.
    # Without detail there is no grey ribbon (depth 0), so CSF is still WHITE - 2.
    labels = np.full(rho.shape, WHITE, dtype=np.int8)
    labels -= dist < (p.cortex * (1 - _ATROPHY['cortical_thinning'] * score) if detail else 0.0)
    labels -= dist < 0
    if detail:
        outer = np.full(rho.shape, SKULL, dtype=np.int8)
        outer -= rho > 1 - p.scalp
        outer -= rho > 1
        np.copyto(labels, outer, where=rho > skull_inner)
        # Deep grey: caudate heads and thalami at the basal-ganglia levels.
        nuclei = _bump(levels, 0.45, 0.12)
        for side in ("-1", "+1"):
            _paint(labels, DEEP_GREY, sites["caudate" + side], 0.055 * nuclei, 0.08 * nuclei)
            _paint(labels, DEEP_GREY, sites["thalamus" + side], 0.08 * nuclei, 0.12 * nuclei)
    low = _bump(levels, 0.12, 0.12)
    cistern = low * (1 + 0.05 * score)  # the cisterns around the midbrain widen too
    _paint(labels, CSF, sites["midbrain"], 0.17 * cistern, 0.15 * cistern)
    _paint(labels, DEEP_GREY, sites["midbrain"], 0.14 * low, 0.12 * low)

    # Lateral ventricles: two crescents ")(", closest at the septum, the horns diverging and bulbous.
    presence = _bump(levels, 0.55, _VENTRICLE_LEVELS)
    presence = np.where(presence < 0.2, 0.0, presence) * p.ventricle_size  # none near the vertex
    site = sites["ventricles"]
    if site is not None:
        flare = 1 + 0.8 * (site.dv / 0.3) ** 2
        for side in (-1, 1):
            bent = (site.du - side * (0.05 * (1 + 0.15 * score) + 0.9 * site.dv**2)) / flare
            _paint(labels, CSF, site, 0.04 * presence * _ATROPHY['ventricle_growth'] ** score,
                   0.30 * np.sqrt(presence) * (1 + 0.10 * score), du=bent)
    third = _bump(levels, 0.4, 0.1)
    _paint(labels, CSF, sites["third_ventricle"], 0.012 * third * (1 + 0.6 * score), 0.10 * third)

    # Hippocampi in their fossae: the fossa stays, the hippocampus shrinks inside it,
    # and the gap fills with CSF (the enlarged temporal horn of Alzheimer's disease).
    temporal = np.clip((0.45 - levels) / 0.15, 0, 1) * p.hippocampus_size
    long_axis, short_axis = 0.14 * np.sqrt(temporal), 0.055 * temporal
    shrink = max(0.3, 1 - _ATROPHY['hippocampal_shrink'] * score)
    horn = _ATROPHY['temporal_horn'] * score
    for side in ("-1", "+1"):
        _paint(labels, CSF, sites["hippocampus" + side], (1.12 + horn) * short_axis, (1.06 + horn / 3) * long_axis)
        _paint(labels, GREY, sites["hippocampus" + side], shrink * short_axis, shrink * long_axis)
    return labels


def _blur(images: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of [S, H, W] with a zero (black) border."""
    radius = max(1, int(np.ceil(2 * sigma)))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps = (taps / taps.sum()).astype(np.float32)
    for axis in (1, 2):
        pad = [(0, 0)] * 3
        pad[axis] = (radius, radius)
        padded = np.pad(images, pad)
        length = images.shape[axis]
        out = np.zeros_like(images)
        for shift, weight in enumerate(taps):
            window = [slice(None)] * 3
            window[axis] = slice(shift, shift + length)
            out += weight * padded[tuple(window)]
        images = out
    return images


def _render(p: _Subject, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [S, H, W] and atrophy masks bool [S, H, W] of one subject."""
    n_slices = len(p.levels)
    images = np.zeros((n_slices, size, size), dtype=np.uint8)
    masks = np.zeros((n_slices, size, size), dtype=bool)
    plane = _plane(p, size)
    rows, cols = plane.box
    axis = np.linspace(-1, 1, size, dtype=np.float32)
    x, y = axis[None, cols], axis[rows, None]
    b = p.bias.tolist()
    gain = p.gain * np.exp(b[0] * x + b[1] * y + b[2] * x * y + b[3] * (x * x - y * y) + b[4] * (x * x + y * y))
    intensities = p.intensities.astype(np.float32)
    sigma = p.blur * size / 128
    edge_width = 2 * sigma / (p.half_length * size / 2)
    # Noise windows cut at random offsets from one bank per subject: drawing 2 x S x H x W
    # normals would dominate the run time, and shifted windows look just as independent.
    area = gain.size
    bank = rng.standard_normal(3 * area, dtype=np.float32) * np.float32(p.noise)
    offsets = rng.integers(0, 2 * area, size=(n_slices, 2))
    windows = np.lib.stride_tricks.sliding_window_view(bank, area)
    # A few slices at a time keep the temporaries in cache, which is most of the speed.
    for start in range(0, n_slices, _CHUNK):
        stop = min(start + _CHUNK, n_slices)
        slab = _slab(p, plane, p.levels[start:stop])
        labels = _label_map(p, plane, slab, p.score)
        # Tissue labels are the ones above CSF.
        masks[start:stop, rows, cols] = (labels == CSF) & (_label_map(p, plane, slab, 0.0, detail=False) > CSF)
        signal = _blur(intensities[labels], sigma)
        signal *= gain
        # Magnitude images have Rician noise: |signal + complex Gaussian|.
        signal += windows[offsets[start:stop, 0]].reshape(signal.shape)
        signal *= signal
        imag = windows[offsets[start:stop, 1]].reshape(signal.shape)
        signal += imag * imag
        np.sqrt(signal, out=signal)
        # The head edge, blurred like the image, confines the noise: the background stays black.
        head = np.float32(1 + edge_width / 2) - slab.rho
        head *= np.float32(255 / edge_width)
        np.clip(head, 0, 255, out=head)
        signal *= head
        signal += 0.5
        images[start:stop, rows, cols] = np.minimum(signal, 255)
    return images, masks


def generate(n: int, seed: int = 0, size: int = 128, slices_per_subject: int = 32,
             min_subjects_per_class: int = 2) -> Phantoms:
    """Generate ``n`` phantom slices, deterministic in all five arguments.

    Subjects hold ``slices_per_subject`` consecutive slices (fewer when ``n`` is small,
    so that there are at least about 8 subjects; the last subject may be shorter).
    Classes are balanced at the subject level following CLASS_SHARES, with at least
    ``min_subjects_per_class`` subjects per class once there are 40 subjects (the Kaggle set's
    Moderate class has 2: a network cannot learn a class from the one that lands in train).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if size < 16:
        raise ValueError(f"size must be >= 16 pixels, got {size}")
    if slices_per_subject < 1:
        raise ValueError(f"slices_per_subject must be >= 1, got {slices_per_subject}")
    per_subject = max(1, min(slices_per_subject, n // 8))
    n_subjects = -(-n // per_subject)
    rng = np.random.default_rng(seed)
    grades = rng.permutation(np.repeat(np.arange(len(CLASSES)), _subject_counts(n_subjects, min_subjects_per_class)))
    subject_seeds = rng.integers(0, 2**63, size=n_subjects)

    images = np.empty((n, size, size), dtype=np.uint8)
    masks = np.empty((n, size, size), dtype=bool)
    labels = np.empty(n, dtype=np.int64)
    slice_index = np.empty(n, dtype=np.int64)
    subjects: list[str] = []
    for idx in range(n_subjects):
        start, stop = idx * per_subject, min(n, (idx + 1) * per_subject)
        subject_rng = np.random.default_rng(subject_seeds[idx])
        params = _draw_subject(subject_rng, int(grades[idx]), stop - start)
        images[start:stop], masks[start:stop] = _render(params, size, subject_rng)
        labels[start:stop] = grades[idx]
        slice_index[start:stop] = np.arange(stop - start)
        subjects += [f"sub-{idx:04d}"] * (stop - start)
    return Phantoms(images=images, masks=masks, labels=labels, subjects=subjects, slice_index=slice_index)
