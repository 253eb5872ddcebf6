"""Mean ± sample std over runs (seeds) and its table cell, one copy for every results script."""

from __future__ import annotations

import math
import statistics
from typing import Iterable


def mean_std(values: Iterable[float | None]) -> tuple[float, float]:
    """Mean and sample std of the finite values (None, NaN and inf left out); the std is NaN for one
    value, both are NaN for none."""
    v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    if not v:
        return float("nan"), float("nan")
    return statistics.fmean(v), (statistics.stdev(v) if len(v) > 1 else float("nan"))


def pm(mean: float, std: float, digits: int = 3, percent: bool = False) -> str:
    """``mean ± std`` with ``digits`` decimals (``percent``: ×100, one decimal, a % sign); the mean
    alone when the std is NaN (one value), "–" when the mean is (no value)."""
    scale, unit = (100.0, "%") if percent else (1.0, "")
    d = 1 if percent else digits
    if not math.isfinite(mean):
        return "–"
    if not math.isfinite(std):
        return f"{scale * mean:.{d}f}{unit}"
    return f"{scale * mean:.{d}f} ± {scale * std:.{d}f}{unit}"


def pm_of(values: Iterable[float | None], scale: float = 1.0, digits: int = 2) -> str:
    """``pm`` over ``scale × values`` (e.g. accuracies as percentage points with two decimals)."""
    return pm(*mean_std(scale * float(v) for v in values if v is not None), digits)
