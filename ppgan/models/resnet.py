"""torchvision's ResNet adapted to small images: the *unseen* attacker and independent disease net.

A different architecture from the paper's CNN, trained from scratch (no weights can be downloaded),
so a generator that only learned to fool the paper's networks is caught.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, ResNet


class SmallResNet(nn.Module):
    """ResNet with BasicBlocks; `layers=(2, 2, 2, 2)` is ResNet-18.

    For 32..256 px inputs the stem is a 3x3 conv (stride `stem_stride`), optionally followed by
    ImageNet's 3x3/2 max-pool (`stem_pool`), instead of the 7x7/2 conv + pool meant for 224 px.
    `standardize` adds per-pixel input statistics (buffers `input_mean`, `input_scale`, set from
    the training images before training): the adaptive attacker then sees each pixel's deviation
    from the release's average image, which it learns several times faster from.
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        n_classes: int,
        layers: Sequence[int] = (2, 2, 2, 2),
        stem_stride: int = 2,
        stem_pool: bool = False,
        standardize: bool = False,
    ):
        super().__init__()
        if standardize:  # per-pixel statistics of a training set, set by whoever trains it
            self.register_buffer("input_mean", torch.zeros(*in_shape))
            self.register_buffer("input_scale", torch.ones(*in_shape))
        self.standardize = standardize
        net = ResNet(BasicBlock, list(layers), num_classes=n_classes)
        net.conv1 = nn.Conv2d(in_shape[0], 64, 3, stride=stem_stride, padding=1, bias=False)
        if not stem_pool:
            net.maxpool = nn.Identity()
        self.num_features = net.fc.in_features  # read by torchmetrics' FID/KID
        self.head = net.fc
        net.fc = nn.Identity()
        self.body = net

    def features(self, x: Tensor) -> Tensor:
        """Penultimate (global-pooled) features [N, 512]."""
        if self.standardize:  # clipped: a pixel that hardly varied in training cannot explode
            x = ((x - self.input_mean) / self.input_scale).clamp(-5, 5)
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:  # [N, C, H, W] -> [N, n_classes]
        return self.head(self.features(x))


class FeatureExtractor(nn.Module):
    """Wraps a network's `features()` as a module (the form torchmetrics' FID/KID take)."""

    def __init__(self, net: nn.Module, in_shape: tuple[int, ...] | None = None):
        super().__init__()
        self.net = net
        num = getattr(net, "num_features", None)
        if num is None:  # e.g. the paper's classifier: probe the feature width once
            if in_shape is None:
                raise ValueError("FeatureExtractor: the network has no num_features; pass in_shape")
            p = next(net.parameters())
            with torch.no_grad():
                num = int(net.features(p.new_zeros(1, *in_shape)).shape[1])
        self.num_features = num

    def train(self, mode: bool = True) -> FeatureExtractor:
        # torchmetrics may toggle modes; the wrapped network must stay in eval (frozen BatchNorm).
        return super().train(False)

    def forward(self, x: Tensor) -> Tensor:
        return self.net.features(x).float()
