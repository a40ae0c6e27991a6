"""Identity verification and identification metrics from distances (lower = more alike)."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import roc_auc_score, roc_curve
from torch import Tensor


def pair_masks(ids: Tensor) -> tuple[Tensor, Tensor]:
    """Upper-triangle masks of same- and different-identity pairs of a set [N] -> 2 x [N, N]."""
    same = ids[:, None] == ids[None, :]
    upper = torch.triu(torch.ones_like(same), diagonal=1)
    return same & upper, ~same & upper


def verification_metrics(d_same: Tensor, d_diff: Tensor) -> dict[str, float]:
    """ROC AUC and equal error rate of 'same identity' scored by −distance.

    Returns NaN for both when either pair set is empty.
    """
    if len(d_same) == 0 or len(d_diff) == 0:
        return {"auc": float("nan"), "eer": float("nan")}
    y = np.r_[np.ones(len(d_same)), np.zeros(len(d_diff))]
    score = -torch.cat([d_same, d_diff]).double().cpu().numpy()
    fpr, tpr, _ = roc_curve(y, score)
    i = np.argmin(np.abs((1 - tpr) - fpr))
    return {"auc": float(roc_auc_score(y, score)), "eer": float((fpr[i] + 1 - tpr[i]) / 2)}


def best_threshold(d_same: Tensor, d_diff: Tensor) -> float:
    """The distance threshold maximising balanced accuracy (Youden's J) on these pairs."""
    y = np.r_[np.ones(len(d_same)), np.zeros(len(d_diff))]
    score = -torch.cat([d_same, d_diff]).double().cpu().numpy()
    fpr, tpr, thresholds = roc_curve(y, score)
    return float(-thresholds[np.argmax(tpr - fpr)])


def balanced_accuracy_at(d_same: Tensor, d_diff: Tensor, threshold: float) -> float:
    """Mean of the true-accept and true-reject rates when 'same' means d <= threshold."""
    return 0.5 * (
        float((d_same <= threshold).float().mean()) + float((d_diff > threshold).float().mean())
    )


def rank_k(dist: Tensor, query_ids: Tensor, gallery_ids: Tensor, k: int) -> float:
    """Closed-set identification: share of queries whose identity is among the k nearest identities
    (the mean of `rank_k_hits`)."""
    return float(rank_k_hits(dist, query_ids, gallery_ids, k).float().mean())


def rank_k_hits(dist: Tensor, query_ids: Tensor, gallery_ids: Tensor, k: int) -> Tensor:
    """Per query [Q] bool: is its identity among the k nearest identities?

    An identity's distance is that of its nearest gallery image.

    Args:
        dist: query-to-gallery distances [Q, G].
        query_ids: [Q]; gallery_ids: [G].
    """
    n_ids = int(max(gallery_ids.max(), query_ids.max())) + 1
    per_id = dist.new_full((dist.shape[0], n_ids), float("inf"))
    per_id = per_id.scatter_reduce(1, gallery_ids.expand_as(dist), dist, reduce="amin")
    k = min(k, int(torch.unique(gallery_ids).numel()))
    nearest = per_id.topk(k, dim=1, largest=False).indices  # [Q, k] identities
    return (nearest == query_ids[:, None]).any(1)
