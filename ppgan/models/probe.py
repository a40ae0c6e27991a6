"""Pixel-space attackers as networks: a linear classifier and k nearest neighbours on whitened
principal components of standardized pixels. Fitted in closed form or by scikit-learn
(`ppgan.attackers`), stored as buffers, so a checkpoint rebuilds them like any other network."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class PcaFeatures(nn.Module):
    """x -> ((x - mean) / scale) @ components.T: per-pixel standardization, then projection on
    `n_components` principal directions (rows of `components`, whitening folded in)."""

    def __init__(self, in_shape: Sequence[int], n_components: int):
        super().__init__()
        dim = math.prod(in_shape)
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))
        self.register_buffer("components", torch.zeros(n_components, dim))

    @torch.no_grad()
    def fit(self, x: Tensor) -> Tensor:
        """Set the buffers from training images [N, C, H, W]; returns their features [N, k]."""
        flat = x.flatten(1).double()
        mean, std = flat.mean(0), flat.std(0)
        scale = torch.where(std > 1e-6, std, torch.ones_like(std))  # constant pixels: no scaling
        z = (flat - mean) / scale
        # Principal directions from the N x N Gram matrix (N images << D pixels: one N x N x D
        # product instead of an SVD of the N x D data). Dividing each direction by its standard
        # deviation whitens it, so a linear model's regularisation treats components alike;
        # directions without variance (beyond the data's rank) stay zero.
        evals, evecs = torch.linalg.eigh(z @ z.T)  # ascending
        k = min(self.components.shape[0], len(x))
        evals, evecs = evals.flip(0)[:k].clamp_min(0), evecs.flip(1)[:, :k]
        sing = evals.sqrt()  # singular values of z
        keep = sing > 1e-6 * sing[:1].clamp_min(1e-12)
        directions = (evecs.T @ z) / sing.where(keep, torch.ones_like(sing))[:, None]  # [k, D]
        spread = sing / math.sqrt(max(len(x) - 1, 1))  # each component's standard deviation
        components = torch.where(keep[:, None], directions / spread.clamp_min(1e-12)[:, None], 0)
        if len(components) < self.components.shape[0]:  # fewer images than components
            components = F.pad(components, (0, 0, 0, self.components.shape[0] - len(components)))
        self.mean.copy_(mean), self.scale.copy_(scale), self.components.copy_(components)
        return self(x)

    def forward(self, x: Tensor) -> Tensor:  # [N, C, H, W] -> [N, k]
        return ((x.flatten(1) - self.mean) / self.scale) @ self.components.T


class PcaLinear(nn.Module):
    """Multinomial logistic regression on `PcaFeatures`."""

    def __init__(self, in_shape: Sequence[int], n_classes: int, n_components: int):
        super().__init__()
        self.pca = PcaFeatures(in_shape, n_components)
        self.head = nn.Linear(n_components, n_classes)

    def features(self, x: Tensor) -> Tensor:
        return self.pca(x)

    def forward(self, x: Tensor) -> Tensor:  # [N, C, H, W] -> [N, n_classes] logits
        return self.head(self.pca(x))


class PcaNearestNeighbours(nn.Module):
    """k nearest training images by cosine similarity of their `PcaFeatures`; the output is
    each class's summed similarity among the k (argmax = similarity-weighted majority vote)."""

    def __init__(
        self, in_shape: Sequence[int], n_classes: int, n_components: int, n_gallery: int, k: int
    ):
        super().__init__()
        self.n_classes, self.k = n_classes, k
        self.pca = PcaFeatures(in_shape, n_components)
        self.register_buffer("gallery", torch.zeros(n_gallery, n_components))
        self.register_buffer("gallery_labels", torch.zeros(n_gallery, dtype=torch.long))

    def features(self, x: Tensor) -> Tensor:
        return F.normalize(self.pca(x), dim=1)

    def forward(self, x: Tensor) -> Tensor:  # [N, C, H, W] -> [N, n_classes] vote scores
        sim = self.features(x) @ self.gallery.T  # [N, G]; the gallery is stored normalized
        top, idx = sim.topk(min(self.k, sim.shape[1]), dim=1)
        votes = torch.zeros(len(x), self.n_classes, device=x.device, dtype=sim.dtype)
        return votes.scatter_add_(1, self.gallery_labels[idx], top)
