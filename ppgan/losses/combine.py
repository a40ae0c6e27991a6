"""Combining named loss terms with configured weights."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor


def weighted_sum(terms: Mapping[str, Tensor], weights: Mapping[str, float]) -> Tensor:
    """Σ weight·term; a term without a configured weight is an error (weight names = TB tags)."""
    if missing := terms.keys() - weights.keys():
        raise KeyError(f"no weight configured for loss terms {sorted(missing)}")
    return sum(weights[k] * v for k, v in terms.items())
