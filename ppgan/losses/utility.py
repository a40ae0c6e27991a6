"""Utility terms: keep the disease evidence and the region of interest (paper, Sec. III)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ppgan.errors import PpganError
from ppgan.losses.privacy import soft_cross_entropy


def disease_preservation(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """CE between the disease network's prediction on the original (soft target) and on the fake."""
    return soft_cross_entropy(torch.softmax(logits_real.detach().float(), 1), logits_fake)


def disease_terms(
    judge: nn.Module, real: Tensor, fake: Tensor, decision: bool = True, features: bool = False
) -> dict[str, Tensor]:
    """The release's disease evidence judged by the frozen disease network, unweighted:

    * `disease` (`decision`): its prediction on the original kept (`disease_preservation`);
    * `disease_feat` (`features`): its penultimate features (`features()`) of the release
      matched to the original's, as a mean squared error in units of the originals' feature
      variance over the batch (so the weight does not depend on the network's scale).

    Keeping only the decision lets the generator keep whatever that one network reads rather
    than the evidence: once it is confident nothing asks for more (on the 128 px data an
    independent disease network agreed with 0.55-0.87 of the releases while the judge agreed
    with all). Matching the features the decision is made from asks for the evidence as the
    network grades it -- feature matching, as Salimans et al. (2016) use it for realism. With
    both, the network's backbone runs once per image set and the decision is read from its head.
    """
    if not features:
        with torch.no_grad():
            logits_real = judge(real)
        return {"disease": disease_preservation(logits_real, judge(fake))} if decision else {}
    if not (hasattr(judge, "features") and hasattr(judge, "head")):
        raise PpganError(
            f"objective.loss.disease_feat: the disease network ({type(judge).__name__}) has no "
            "features()/head; use a classifier or resnet judge"
        )
    with torch.no_grad():
        f_real = judge.features(real)
    f_fake = judge.features(fake)
    terms = {"disease_feat": feature_matching(f_real, f_fake)}
    if decision:
        with torch.no_grad():
            logits_real = judge.head(f_real)
        terms["disease"] = disease_preservation(logits_real, judge.head(f_fake))
    return terms


def feature_matching(f_real: Tensor, f_fake: Tensor) -> Tensor:
    """Mean squared difference of features [N, D], over the originals' mean per-feature variance
    in the batch -- floored at 1e-3 of their mean square, so a batch of one image (or of near
    copies) cannot blow it up."""
    f_real, f_fake = f_real.detach().float(), f_fake.float()
    var = f_real.var(0, unbiased=False).mean() if len(f_real) > 1 else f_real.new_zeros(())
    scale = torch.maximum(var, 1e-3 * f_real.pow(2).mean()).clamp_min(1e-8)
    return (f_fake - f_real).pow(2).mean() / scale


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
