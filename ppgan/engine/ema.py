"""An exponential moving average of a network's weights, the network a GAN releases.

A GAN's generator is the iterate of a game, not the minimum of a loss: from one step to the
next it moves along directions the other players (here the critic and the in-loop identity
adversary) have not yet pushed back on, and an attacker trained afterwards finds what the last
iterate left. Averaging the iterates cancels much of that back-and-forth (Yazıcı et al. 2019,
"The unusual effectiveness of averaging in GAN training"); StyleGAN, BigGAN and StyleGAN2-ADA
release their generator's moving average (`G_ema`) for that reason. On the 128 px data the
uniform mean of seven kept PP-RID checkpoints had the lowest adaptive attack of every PP-RID
point tried there (`experiments/results/per_image/roi_masks/`, fifth rule); this is the same
idea inside the loop, at every step.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class WeightAverage:
    """`avg`, a copy of `net` whose weights follow `net`'s as an exponential moving average.

    After the t-th `update` each averaged tensor is `beta_t · avg + (1 - beta_t) · net` with
    `beta_t = 0.5 ** (1 / h_t)`: weights `h_t` steps old count half as much as the newest.
    `h_t = min(half_life, rampup · t)`, StyleGAN2-ADA's ramp-up, so that the first steps'
    (random, then poor) weights do not dominate the average early in training.

    Floating-point buffers (BatchNorm's running statistics) are averaged the same way, as the
    plain mean of checkpoints averages them (`experiments/average_checkpoints.py`); integer
    buffers (batch counters) are copied. StyleGAN2-ADA copies its buffers instead, but its
    generator has no BatchNorm; ours runs in eval mode when released, so its BatchNorm layers
    normalise with the running statistics, and those of the last iterate describe the last
    iterate's activations, not the average's. Averaging them follows the weights: both are slow
    averages of the same trajectory. Exact statistics would take a pass over the training set
    with the averaged weights after each update (SWA's `update_bn`); that is not done.

    The copy takes no gradients and is changed by nothing but `update`; whoever runs it sets its
    mode (validation, samples and export run it in eval mode).

    Args:
        net: the trained network (its weights at this moment start the average).
        half_life: in update steps; > 0.
        rampup: the half-life is at most this fraction of the steps taken; > 0.
    """

    def __init__(self, net: nn.Module, half_life: float, rampup: float) -> None:
        if not half_life > 0 or not rampup > 0:
            raise ValueError(f"half_life={half_life} and rampup={rampup} must be > 0")
        self.avg = copy.deepcopy(net).eval().requires_grad_(False)
        self.half_life, self.rampup = float(half_life), float(rampup)
        self.steps = 0

    def beta(self, step: int) -> float:
        """The weight of the old average at update `step` (1-based)."""
        return 0.5 ** (1.0 / min(self.half_life, self.rampup * step))

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        """Move the average toward `net`'s current weights (on the device: no host sync)."""
        self.steps += 1
        weight = 1.0 - self.beta(self.steps)
        for avg, new in zip(self.avg.parameters(), net.parameters(), strict=True):
            avg.lerp_(new.detach(), weight)
        for avg, new in zip(self.avg.buffers(), net.buffers(), strict=True):
            if avg.is_floating_point():
                avg.lerp_(new, weight)
            else:
                avg.copy_(new)
