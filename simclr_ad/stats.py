"""Statistics over seeds, and how the tables show them: mean, std (ddof=1) and the 95% CI half-width;
and the cluster bootstrap over test subjects (plain and paired between arms)."""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np
from scipy import stats


def mean_std_ci95(values: Sequence[float]) -> tuple[float, float, float | None]:
    """Mean, std (ddof=1; 0 for one value) and the 95% CI half-width t_{.975,n-1}*std/sqrt(n) (None for n=1)."""
    x = np.asarray(values, dtype=np.float64)
    if len(x) == 0:
        raise ValueError("no values")
    if len(x) == 1:
        return float(x[0]), 0.0, None
    std = float(x.std(ddof=1))
    return float(x.mean()), std, float(stats.t.ppf(0.975, len(x) - 1) * std / math.sqrt(len(x)))


def percent(mean: Any, ci: Any, n: int, n_full: int) -> str:
    if mean == "" or mean is None:
        return "–"
    text = f"{100 * mean:.1f}" + (f" ± {100 * ci:.1f}" if ci not in ("", None) else " (1 seed)")
    return text + (f" (n={n})" if n != n_full and n > 1 else "")


def fixed_percent(value: Any) -> str:
    return "–" if value in ("", None) or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


# --------------------------------------------------------------------------- bootstrap over test subjects

BOOTSTRAP_DRAWS = 1000


def subject_draws(clusters: Sequence[str], draws: int = BOOTSTRAP_DRAWS, seed: int = 0,
                  strata: Sequence[int] | None = None) -> list[np.ndarray]:
    """Row indices of ``draws`` cluster-bootstrap resamples: test subjects drawn with replacement, each
    with all its rows (slices of one subject are near-duplicates: resampling slices would understate
    the spread). The same draws serve every arm, which makes a difference between arms paired.

    ``strata`` (non-negative ints per row, e.g. the true class; a subject's stratum is its rows'
    majority, ties to the lower): subjects are drawn within each stratum, as many as it has, so every
    draw keeps every stratum and its count of subjects (a macro metric then averages the same classes
    in every draw). A stratum of one subject is in every draw: it adds no spread to the interval.
    """
    clusters = np.asarray([str(c) for c in clusters])
    names, inverse = np.unique(clusters, return_inverse=True)
    members = [np.flatnonzero(inverse == k) for k in range(len(names))]
    of_cluster = (np.zeros(len(names), dtype=np.int64) if strata is None else
                  np.array([np.bincount(np.asarray(strata)[m]).argmax() for m in members], dtype=np.int64))
    groups = [np.flatnonzero(of_cluster == s) for s in np.unique(of_cluster)]
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(draws):
        picked = np.concatenate([group[rng.integers(0, len(group), len(group))] for group in groups])
        out.append(np.concatenate([members[k] for k in np.sort(picked)]))
    return out


def percentile_ci(values: Sequence[float]) -> tuple[float, float]:
    """The 2.5 and 97.5 percentiles of bootstrap values (nan ones left out; nan when none is left)."""
    x = np.asarray(values, dtype=np.float64)
    x = x[~np.isnan(x)]
    if not len(x):
        return float("nan"), float("nan")
    return float(np.percentile(x, 2.5)), float(np.percentile(x, 97.5))


def bootstrap(statistic: Callable[[np.ndarray], float], n_rows: int, draws: Sequence[np.ndarray]) -> dict:
    """``statistic(rows)`` on all rows and on each draw: point, 95 % percentile CI."""
    point = statistic(np.arange(n_rows))
    lo, hi = percentile_ci([statistic(rows) for rows in draws])
    return {"point": point, "ci95": [lo, hi]}


def paired_bootstrap(statistic_a: Callable[[np.ndarray], float], statistic_b: Callable[[np.ndarray], float],
                     n_rows: int, draws: Sequence[np.ndarray]) -> dict:
    """The difference a - b on all rows and on each (shared) draw: point, 95 % CI, share of draws > 0.

    Identical arms give a zero-width interval at 0: every draw's difference is 0.
    """
    every = np.arange(n_rows)
    differences = np.array([statistic_a(rows) - statistic_b(rows) for rows in draws], dtype=np.float64)
    kept = differences[~np.isnan(differences)]
    lo, hi = percentile_ci(differences)
    return {"point": statistic_a(every) - statistic_b(every), "ci95": [lo, hi],
            "share_positive": float((kept > 0).mean()) if len(kept) else float("nan"), "draws": len(draws)}
