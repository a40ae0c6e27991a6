"""Counterfactual terms: show the same case with another diagnosis (paper, Sec. III-C)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def target_classes(logits_real: Tensor, target_class: int | None = None) -> Tensor:
    """The class each counterfactual should show, [N].

    For K = 2 this is the other class (the original's `1 − round(p)`). For K > 2: `target_class`
    where the original is not already predicted as it, else the most likely *other* class.
    """
    pred = logits_real.argmax(1)
    other = logits_real.float().scatter(1, pred[:, None], float("-inf")).argmax(1)
    if target_class is None:
        return other
    if not 0 <= target_class < logits_real.shape[1]:
        raise ValueError(f"task.target_class={target_class}: not in 0..{logits_real.shape[1] - 1}")
    target = torch.full_like(pred, target_class)
    return torch.where(pred == target, other, target)


def disease_flip(logits_cf: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy of the disease network's prediction on the counterfactual toward `target`."""
    return F.cross_entropy(logits_cf.float(), target)


def robust_disease_flip(
    disease: nn.Module, cf: Tensor, target: Tensor, noise_std: float, lowpass: int, views: int
) -> Tensor:
    """`disease_flip` averaged over random views of the counterfactual (expectation over
    transformations): each view is low-passed (mean over `lowpass` x `lowpass` cells, upsampled)
    and noised. A pixel-level adversarial perturbation does not survive this; a change of the
    image's content (e.g. the pupil's clouding) does, so the decision flips for a reason that an
    independently trained network also sees. `views=0` is the plain `disease_flip`.
    """
    if views == 0:
        return disease_flip(disease(cf), target)
    x = cf.repeat(views, 1, 1, 1)
    if lowpass > 1:
        x = F.interpolate(F.avg_pool2d(x, lowpass), size=cf.shape[-2:], mode="bilinear")
    x = x + noise_std * torch.randn_like(x)
    return disease_flip(disease(x), target.repeat(views))
