"""Utility terms: keep the disease evidence and the region of interest (paper, Sec. III)."""

from __future__ import annotations

import torch
from torch import Tensor

from ppgan.losses.privacy import soft_cross_entropy


def disease_preservation(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """CE between the disease network's prediction on the original (soft target) and on the fake."""
    return soft_cross_entropy(torch.softmax(logits_real.detach().float(), 1), logits_fake)


def roi_reconstruction(real: Tensor, fake: Tensor, mask: Tensor, reduction: str = "mean") -> Tensor:
    """Squared error inside the ROI, Σ((real − fake)·mask)².

    `mean` divides by every element (N·C·H·W) so the weight does not depend on batch or image
    size; `sum` is the original's reduction. sum = mean · N·C·H·W.
    """
    err = ((real - fake) * mask).pow(2)
    if reduction == "sum":
        return err.sum()
    if reduction == "mean":
        return err.mean()
    raise ValueError(f"objective.roi_rec_reduction must be 'mean' or 'sum', got {reduction!r}")


def roi_complement(factual: Tensor, counterfactual: Tensor, mask: Tensor) -> Tensor:
    """Mean squared difference outside the ROI (the counterfactual keeps everything else)."""
    return ((factual - counterfactual) * (1 - mask)).pow(2).mean()
