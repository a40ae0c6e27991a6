"""Privacy terms: make identity recognition fail on the generated image (paper, Sec. III)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def jittered_uniform(n: int, k: int, jitter: bool, device: torch.device | str) -> Tensor:
    """Targets close to uniform over k identities, [n, k].

    As in the original, each entry is drawn in [1/(2k), 2/k] and the row renormalised, so the
    generator is not asked for one exact (and easily detected) distribution.
    """
    if not jitter:
        return torch.full((n, k), 1.0 / k, device=device)
    t = torch.empty(n, k, device=device).uniform_(0.5 / k, 2.0 / k)
    return t / t.sum(1, keepdim=True)


def soft_cross_entropy(target: Tensor, logits: Tensor) -> Tensor:
    """Cross-entropy of `logits` [N, K] against a probability target [N, K], batch mean."""
    return -(target * F.log_softmax(logits.float(), dim=1)).sum(1).mean()


def different_loss(d: Tensor, margin: float) -> Tensor:
    """The contrastive loss with target 'different': mean(max(margin − d, 0)^2) over all entries."""
    return (margin - d).clamp(min=0).pow(2).mean()
