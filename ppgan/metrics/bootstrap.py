"""Bootstrap confidence intervals: resample the evaluated images with replacement (fixed seed)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

# Metric-name suffixes of an interval's bounds (`privacy/unseen_acc_ci_lo`), read by the report.
CI_LO, CI_HI = "_ci_lo", "_ci_hi"


def resamples(n: int, n_boot: int, seed: int) -> np.ndarray:
    """[n_boot, n] indices of bootstrap resamples; the same seed gives the same draws, so every
    metric of every method is resampled over the same image sets (paired comparisons)."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def mean_ci(values: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95):
    """Percentile interval of the mean of per-image values (e.g. 0/1 hits of an attack)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return float("nan"), float("nan")
    means = values[resamples(len(values), n_boot, seed)].mean(1)
    return _percentiles(means, level)


def stat_ci(
    stat: Callable[[np.ndarray], float],
    n: int,
    n_boot: int = 200,
    seed: int = 0,
    level: float = 0.95,
):
    """Percentile interval of any statistic of n items, `stat(indices) -> float` (e.g. an AUC
    over the pairs of the resampled queries). Resamples where it is undefined (NaN) are dropped."""
    values = np.array([stat(idx) for idx in resamples(n, n_boot, seed)], dtype=np.float64)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return float("nan"), float("nan")
    return _percentiles(values, level)


def _percentiles(values: np.ndarray, level: float) -> tuple[float, float]:
    alpha = (1 - level) / 2
    lo, hi = np.quantile(values, [alpha, 1 - alpha])
    return float(lo), float(hi)
