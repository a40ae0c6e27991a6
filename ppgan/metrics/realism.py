"""Realism and intelligibility: FID/KID in an in-domain feature space, SSIM and PSNR by region."""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn
from torchmetrics.functional.image import structural_similarity_index_measure
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

DATA_RANGE = 2.0  # images live in [-1, 1]


def _region_mean(values: Tensor, region: Tensor) -> Tensor:
    """Per-image mean of `values` [N, C, H, W] over `region` [N, 1, H, W]; NaN for empty regions."""
    region = region.expand_as(values)
    return (values * region).flatten(1).sum(1) / region.flatten(1).sum(1)


def region_psnr(a: Tensor, b: Tensor, region: Tensor) -> Tensor:
    """PSNR [N] computed from the mean squared error inside `region` only."""
    mse = _region_mean((a - b).pow(2), region).clamp(min=1e-10)
    return 10 * torch.log10(DATA_RANGE**2 / mse)


def region_ssim(a: Tensor, b: Tensor, region: Tensor) -> Tensor:
    """SSIM [N]: torchmetrics' SSIM map (Gaussian window 11, σ 1.5) averaged inside `region`."""
    _, ssim_map = structural_similarity_index_measure(
        a.float(), b.float(), data_range=DATA_RANGE, return_full_image=True, reduction="none"
    )
    return _region_mean(ssim_map, region)


@torch.no_grad()
def fid_kid(
    real: Tensor, fake: Tensor, extractor: nn.Module, batch_size: int = 256, seed: int = 0
) -> tuple[float, float, float]:
    """Fréchet distance and KID (mean, std) of two image sets in `extractor`'s feature space.

    `extractor` maps [N, C, H, W] in [-1, 1] to [N, D] and has `num_features`. With a custom
    feature module torchmetrics (1.3-1.9, pinned in pyproject.toml) hands the images to it as
    they are; `normalize=False` says so (that flag only rescales [0, 1] floats for its own
    Inception network). KID uses subsets of min(50, N) images, so it stays meaningful on small
    test splits where FID is biased upward; its subsets are drawn from torch's global RNG, which
    is forked and seeded here so the same inputs give the same KID.
    """
    n = min(len(real), len(fake))
    fid = FrechetInceptionDistance(feature=extractor, normalize=False).to(real.device)
    with warnings.catch_warnings():  # "saves all features in a buffer": fine at test-split size
        warnings.simplefilter("ignore", UserWarning)
        kid = KernelInceptionDistance(
            feature=extractor, normalize=False, subset_size=min(50, n), subsets=50
        ).to(real.device)
    for metric in (fid, kid):
        for start in range(0, len(real), batch_size):
            metric.update(real[start : start + batch_size], real=True)
        for start in range(0, len(fake), batch_size):
            metric.update(fake[start : start + batch_size], real=False)
    with torch.random.fork_rng(devices=[]):  # KID's randperm runs on the CPU generator
        torch.manual_seed(seed)
        kid_mean, kid_std = kid.compute()
    return float(fid.compute()), float(kid_mean), float(kid_std)
