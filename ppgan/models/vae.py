"""The privacy-preserving generator: a two-branch VAE encoder and a decoder (paper, Sec. III).

The paper's layer plan (units 256, z 128, kernel 8 on 64x64) is generalised to any channel count and
any square size that is a multiple of 16: four stride-2 stages down, four up.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

N_STAGES = 4  # 4 stride-2 stages: H -> H/16 -> H


def _padding(kernel: int) -> int:
    # Keras 'same' for stride 2 and an even kernel: total padding k - 2, split evenly.
    if kernel % 2 or kernel < 2:
        raise ValueError(
            f"model kernel must be even and >= 2 for exact 'same' striding, got {kernel}"
        )
    return (kernel - 2) // 2


def init_normal(module: nn.Module, std: float = 0.02) -> None:
    """The original's initialisation: conv/dense weights N(0, 0.02), zero biases."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d | nn.Linear):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _branch(
    c_in: int, units: int, kernel: int, dropout: float, bn_momentum: float
) -> nn.Sequential:
    layers: list[nn.Module] = []
    for c_out in (units // 8, units // 4, units // 2, units):
        layers += [
            nn.Conv2d(c_in, c_out, kernel, stride=2, padding=_padding(kernel)),
            nn.BatchNorm2d(c_out, momentum=bn_momentum),
            nn.Dropout(dropout),
            nn.LeakyReLU(0.2),
        ]
        c_in = c_out
    return nn.Sequential(*layers, nn.Flatten())


class Encoder(nn.Module):
    """Image branch and ROI-mask branch, concatenated -> (mu, logvar) of the latent Gaussian.

    With `identity_dim > 0` (PP-RID, README "PP-RID"), the last `identity_dim` latent dimensions
    are the *identity code*: `posterior` returns the image's own (what training reconstructs
    from), while `forward` -- what export, evaluation, counterfactuals and explanations call --
    replaces it by a fresh draw from the prior N(0, I) for every image, so that two images of
    one person are rendered as two unrelated people. With `identity_dim = 0` (PP-MIR, PP-SIR)
    `forward` is the posterior.

    Args:
        in_shape: image shape (C, H, W); the mask is 1 x H x W.
        z_dim: the whole latent, identity code included.
        identity_dim: size of the identity code (0: none).
        bn_momentum: PyTorch convention (Keras' momentum 0.8 is PyTorch's 0.2).
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        z_dim: int = 128,
        units: int = 256,
        kernel: int = 8,
        dropout: float = 0.2,
        bn_momentum: float = 0.2,
        identity_dim: int = 0,
    ):
        super().__init__()
        if not 0 <= identity_dim < z_dim:
            raise ValueError(f"model.encoder.identity_dim={identity_dim}: must be in [0, z_dim)")
        self.identity_dim = identity_dim
        c, h, w = in_shape
        self.image_branch = _branch(c, units, kernel, dropout, bn_momentum)
        self.mask_branch = _branch(1, units, kernel, dropout, bn_momentum)
        flat = 2 * units * (h >> N_STAGES) * (w >> N_STAGES)
        self.mu = nn.Linear(flat, z_dim)
        self.logvar = nn.Linear(flat, z_dim)
        init_normal(self)

    def posterior(self, image: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """q(z | image, mask): [N, C, H, W], [N, 1, H, W] -> (mu, logvar), each [N, z_dim]."""
        h = torch.cat([self.image_branch(image), self.mask_branch(mask)], 1)
        return self.mu(h), self.logvar(h)

    def forward(self, image: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """The release latent: the posterior, its identity code (if any) redrawn from N(0, I)."""
        mu, logvar = self.posterior(image, mask)
        if not self.identity_dim:
            return mu, logvar
        k = mu.shape[1] - self.identity_dim
        noise = torch.randn_like(mu[:, k:])
        return torch.cat([mu[:, :k], noise], 1), torch.cat([logvar[:, :k], noise * 0], 1)

    def release(self, image: Tensor, mask: Tensor, temperature: float = 0.0) -> Tensor:
        """The latent that is decoded for release: the posterior mean of the content, plus, with
        `temperature > 0`, the posterior's own noise scaled by it (1: a draw from q(z | x); on the
        128 px data the content's sigma is about as large as the means' spread across images,
        experiments/posterior_spread.py, so a fraction of it already redraws part of what the
        mean carries of the person). The identity code (PP-RID) is a fresh N(0, I) draw either
        way: `forward` draws it, and its noise is left as is.
        """
        if temperature < 0:
            raise ValueError(f"temperature={temperature}: must be >= 0")
        z, logvar = self(image, mask)
        if not temperature:
            return z
        content, code = self.split(z)
        noise = temperature * torch.exp(0.5 * self.split(logvar)[0]) * torch.randn_like(content)
        return torch.cat([content + noise, code], 1)

    def split(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """(content, identity code) parts of a latent [N, z_dim]."""
        k = z.shape[1] - self.identity_dim
        return z[:, :k], z[:, k:]


class Decoder(nn.Module):
    """Dense -> (H/16)^2 x start_channels -> 4 x ConvTranspose stride 2 -> tanh image in [-1, 1]."""

    def __init__(
        self,
        in_shape: Sequence[int],
        z_dim: int = 128,
        units: int = 256,
        kernel: int = 8,
        start_channels: int = 128,
    ):
        super().__init__()
        c, h, w = in_shape
        self.start = (start_channels, h >> N_STAGES, w >> N_STAGES)
        self.dense = nn.Sequential(
            nn.Linear(z_dim, start_channels * self.start[1] * self.start[2]), nn.ReLU()
        )
        layers: list[nn.Module] = []
        c_in = start_channels
        for c_out in (units, units // 2, units // 2):
            layers += [
                nn.ConvTranspose2d(c_in, c_out, kernel, stride=2, padding=_padding(kernel)),
                nn.ReLU(),
                nn.BatchNorm2d(c_out),
            ]
            c_in = c_out
        layers += [
            nn.ConvTranspose2d(c_in, c, kernel, stride=2, padding=_padding(kernel)),
            nn.Tanh(),
        ]
        self.body = nn.Sequential(*layers)
        init_normal(self)

    def forward(self, z: Tensor) -> Tensor:  # [N, z_dim] -> [N, C, H, W]
        return self.body(self.dense(z).view(-1, *self.start))


def reparameterize(mu: Tensor, logvar: Tensor) -> Tensor:
    """z = mu + sigma * eps with sigma = exp(logvar / 2) (Kingma & Welling 2014).

    Deviation: the original applies a sigmoid to the log-variance head first, which bounds the
    variance to [1, e^0.5] and is not a standard VAE (README, "Deviations from the original code").
    """
    return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
