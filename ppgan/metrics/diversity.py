"""Collapse detection: within-class diversity of a set of images and near-duplicate retrievals."""

from __future__ import annotations

import torch
from torch import Tensor


def within_class_spread(features: Tensor, labels: Tensor) -> float:
    """Mean pairwise Euclidean distance between items of the same class, averaged over classes
    with at least two items. A method that outputs one image per class scores 0.

    Args:
        features: [N, D] (e.g. a network's penultimate features of the images); labels: [N].
    """
    spreads = []
    for c in torch.unique(labels):
        f = features[labels == c].float()
        if len(f) < 2:
            continue
        d = torch.cdist(f, f)
        spreads.append(d.sum() / (len(f) * (len(f) - 1)))  # the diagonal is 0
    return float(torch.stack(spreads).mean()) if spreads else float("nan")


def diversity_ratio(
    anon_features: Tensor, orig_features: Tensor, labels: Tensor, eps: float = 1e-12
) -> float:
    """Within-class spread of anonymized images relative to that of the originals: 1 = as varied
    as real cases of the class, 0 = one image per class (collapse)."""
    return within_class_spread(anon_features, labels) / max(
        within_class_spread(orig_features, labels), eps
    )


def near_duplicate_fraction(images: Tensor, tol: float = 0.05) -> float:
    """Share of images that have a near-duplicate among the others: root-mean-square pixel
    difference below `tol` (images in [-1, 1]; 0.05 ~ 6 grey levels, see conf/task/explain.yaml).
    For the k cases of an explanation, 1.0 means the panel shows one picture k times.

    Args:
        images: [K, C, H, W].
    """
    if len(images) < 2:
        return 0.0
    flat = images.flatten(1).float()
    rms = torch.cdist(flat, flat) / flat.shape[1] ** 0.5
    rms.fill_diagonal_(float("inf"))
    return float((rms.min(1).values < tol).float().mean())
