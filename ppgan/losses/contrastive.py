"""Contrastive loss of the siamese network (Hadsell et al. 2006), as in the paper's code."""

from __future__ import annotations

from torch import Tensor


def contrastive(d: Tensor, same: Tensor, margin: float) -> Tensor:
    """`mean(y·d² + (1−y)·max(margin − d, 0)²)`; y = 1 for a same-identity pair.

    Args:
        d: pair distances [N].
        same: 1 for same identity, 0 for different [N].
        margin: different-identity pairs closer than this are pushed apart.
    """
    same = same.to(d.dtype)
    return (same * d.pow(2) + (1 - same) * (margin - d).clamp(min=0).pow(2)).mean()
