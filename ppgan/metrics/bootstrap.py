"""Bootstrap confidence intervals: resample the evaluated images with replacement (fixed seed)."""

from __future__ import annotations

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


def clustered_auc_ci(
    score: np.ndarray,
    positive: np.ndarray,
    cluster: np.ndarray,
    n_clusters: int,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile interval of a ROC AUC whose items come in clusters (the pairs of one query
    image), resampling clusters.

    The Mann-Whitney count is bilinear in the clusters' multiplicities w: U = w' M w, with
    M[a, b] = #(positive of a scores above negative of b) (+ 1/2 per tie). M is computed once
    (one sort per cluster), so each resample costs a Q x Q product instead of re-sorting all pairs.

    Args:
        score: [P] higher = more likely positive; positive: [P] bool; cluster: [P] in 0..n-1.
    """
    m, n_pos, n_neg = auc_counts(score, positive, cluster, n_clusters)
    w = np.stack(
        [np.bincount(i, minlength=n_clusters) for i in resamples(n_clusters, n_boot, seed)]
    )
    w = w.astype(np.float64)  # [B, Q]
    denom = (w @ n_pos) * (w @ n_neg)
    with np.errstate(invalid="ignore", divide="ignore"):
        aucs = np.einsum("bi,ij,bj->b", w, m, w) / denom
    aucs = aucs[np.isfinite(aucs)]
    if len(aucs) == 0:
        return float("nan"), float("nan")
    return _percentiles(aucs, level)


def auc_counts(
    score: np.ndarray, positive: np.ndarray, cluster: np.ndarray, n_clusters: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """M [Q, Q] (see `clustered_auc_ci`) and the positives / negatives per cluster [Q]; the AUC
    of all pairs is 1' M 1 / (sum(pos) sum(neg))."""
    pos_score, pos_cluster = score[positive], cluster[positive]
    m = np.zeros((n_clusters, n_clusters))
    for b in range(n_clusters):
        neg = np.sort(score[~positive & (cluster == b)])
        lo = np.searchsorted(neg, pos_score, "left")
        hi = np.searchsorted(neg, pos_score, "right")
        m[:, b] = np.bincount(pos_cluster, weights=lo + 0.5 * (hi - lo), minlength=n_clusters)
    n_pos = np.bincount(pos_cluster, minlength=n_clusters).astype(np.float64)
    n_neg = np.bincount(cluster[~positive], minlength=n_clusters).astype(np.float64)
    return m, n_pos, n_neg


def _percentiles(values: np.ndarray, level: float) -> tuple[float, float]:
    alpha = (1 - level) / 2
    lo, hi = np.quantile(values, [alpha, 1 - alpha])
    return float(lo), float(hi)
