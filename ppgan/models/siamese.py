"""The siamese identity network's shared embedding CNN (paper, Sec. III-B, PP-SIR)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class EmbeddingNet(nn.Module):
    """Blocks of [Conv stride 2 'same', BatchNorm, LeakyReLU 0.2] -> global average pool -> Dense.

    Both branches of the siamese network are this one module (shared weights). The paper uses
    channels (32, 64, 128, 256), kernels (5, 5, 3, 3) and a 256-d embedding.

    Args:
        in_shape: image shape (C, H, W).
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        channels: Sequence[int] = (32, 64, 128, 256),
        kernels: Sequence[int] = (5, 5, 3, 3),
        embed_dim: int = 256,
    ):
        super().__init__()
        if len(channels) != len(kernels):
            raise ValueError("model.channels and model.kernels must have the same length")
        c = in_shape[0]
        layers: list[nn.Module] = []
        for out, k in zip(channels, kernels):
            layers += [nn.Conv2d(c, out, k, stride=2, padding=k // 2), nn.BatchNorm2d(out)]
            layers += [nn.LeakyReLU(0.2)]
            c = out
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(c, embed_dim)

    def forward(self, x: Tensor) -> Tensor:  # [N, C, H, W] -> [N, embed_dim]
        return self.head(self.body(x))

    def distance(self, a: Tensor, b: Tensor) -> Tensor:
        """One-to-one identity distance of two image batches [N, C, H, W] -> [N]."""
        return pair_distance(self(a), self(b))

    def distance_to(self, x: Tensor, gallery: Tensor) -> Tensor:
        """One-to-many distances of images [N, C, H, W] to gallery *embeddings* [M, D] -> [N, M]."""
        return torch.cdist(self(x).float(), gallery.float())


def pair_distance(emb_a: Tensor, emb_b: Tensor) -> Tensor:
    """Euclidean norm of the embedding difference, [N, D] x [N, D] -> [N].

    A small epsilon keeps the gradient finite at d = 0 (identical embeddings).
    """
    return ((emb_a.float() - emb_b.float()).pow(2).sum(1) + 1e-12).sqrt()
