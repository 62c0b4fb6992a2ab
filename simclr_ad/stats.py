"""Statistics over seeds, and how the tables show them: mean, std (ddof=1) and the 95% CI half-width."""
from __future__ import annotations

import math
from typing import Any, Sequence

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
