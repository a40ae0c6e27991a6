"""Case-based explanation quality: do the nearest retrieved cases have the right class?"""

from __future__ import annotations

import torch
from torch import Tensor


def precision_at_k(query: Tensor, query_labels: Tensor, base: Tensor, base_labels: Tensor, k: int):
    """Mean share of the k nearest cases (Euclidean, feature space) sharing the query's label."""
    return float(precision_per_query(query, query_labels, base, base_labels, k).mean())


def precision_per_query(
    query: Tensor, query_labels: Tensor, base: Tensor, base_labels: Tensor, k: int
) -> Tensor:
    """Per query [Q]: share of its k nearest cases sharing its label."""
    k = min(k, len(base))
    nearest = torch.cdist(query.float(), base.float()).topk(k, dim=1, largest=False).indices
    return (base_labels[nearest] == query_labels[:, None]).float().mean(1)
