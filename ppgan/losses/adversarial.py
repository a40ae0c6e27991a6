"""WGAN-GP losses (Gulrajani et al. 2017), the adversarial part of the paper's VAE-GAN."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def gradient_penalty(critic: nn.Module, real: Tensor, fake: Tensor) -> Tensor:
    """E[(||grad D(x_hat)||_2 - 1)^2] on random interpolates x_hat of real and fake images."""
    eps = torch.rand(real.shape[0], 1, 1, 1, device=real.device, dtype=real.dtype)
    x_hat = (eps * real + (1 - eps) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)
    return (grad.flatten(1).norm(dim=1) - 1).pow(2).mean()


def critic_terms(critic: nn.Module, real: Tensor, fake: Tensor) -> dict[str, Tensor]:
    """The critic's combined objective in one step (the original takes three separate steps).

    `wasserstein` = E[D(fake)] − E[D(real)] is minimised, so `-wasserstein` estimates the
    Wasserstein distance; `gp` is weighted by the configured λ.
    """
    return {
        "wasserstein": critic(fake).mean() - critic(real).mean(),
        "gp": gradient_penalty(critic, real, fake),
    }


def generator_adversarial(critic: nn.Module, fake: Tensor) -> Tensor:
    """The generator's Wasserstein term: −E[D(fake)]."""
    return -critic(fake).mean()
