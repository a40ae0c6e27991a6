"""The WGAN critic: no normalisation, no sigmoid (WGAN-GP needs per-sample gradients)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from ppgan.models.vae import _padding, init_normal


class Critic(nn.Module):
    """Conv stride 2 (paper: 32, 64, 128, 256; kernel 8) + LeakyReLU -> Dense 256 -> Dense 1."""

    def __init__(
        self,
        in_shape: Sequence[int],
        channels: Sequence[int] = (32, 64, 128, 256),
        kernel: int = 8,
        hidden: int = 256,
        dropout: float = 0.5,
    ):
        super().__init__()
        c, h, w = in_shape
        layers: list[nn.Module] = []
        for c_out in channels:
            layers += [
                nn.Conv2d(c, c_out, kernel, stride=2, padding=_padding(kernel)),
                nn.LeakyReLU(0.2),
            ]
            c, h, w = c_out, h // 2, w // 2
        self.body = nn.Sequential(
            *layers,
            nn.Flatten(),
            nn.Linear(c * h * w, hidden),
            nn.LeakyReLU(0.2),
            nn.Dropout(dropout),
            nn.Linear(hidden, 1),
        )
        init_normal(self)

    def forward(self, x: Tensor) -> Tensor:  # [N, C, H, W] -> [N]
        return self.body(x).squeeze(1)
