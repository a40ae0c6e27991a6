"""The paper's multiclass recognition CNN, for identity or disease (its experimental set-up)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn


class Classifier(nn.Module):
    """Blocks of [Conv 'same', ReLU, BatchNorm, MaxPool 3x3/2 'same'] -> Dense -> Dropout -> Dense.

    The paper uses 4 blocks of 32 filters with kernels (5, 5, 3, 3), a 32-unit hidden layer and
    dropout 0.25. The softmax lives in the loss (logits out).

    Args:
        in_shape: image shape (C, H, W).
        n_classes: number of outputs.
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        n_classes: int,
        channels: Sequence[int] = (32, 32, 32, 32),
        kernels: Sequence[int] = (5, 5, 3, 3),
        hidden: int = 32,
        dropout: float = 0.25,
    ):
        super().__init__()
        if len(channels) != len(kernels):
            raise ValueError("model.channels and model.kernels must have the same length")
        c, h, w = in_shape
        layers: list[nn.Module] = []
        for out, k in zip(channels, kernels):
            # Keras 'same' for odd kernels and a stride-2 pool: padding k//2 and 1.
            layers += [nn.Conv2d(c, out, k, padding=k // 2), nn.ReLU(), nn.BatchNorm2d(out)]
            layers += [nn.MaxPool2d(3, stride=2, padding=1)]
            c, h, w = out, (h + 1) // 2, (w + 1) // 2
        self.features_net = nn.Sequential(*layers, nn.Flatten())
        self.embed = nn.Sequential(nn.Linear(c * h * w, hidden), nn.ReLU())
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden, n_classes))

    def features(self, x: Tensor) -> Tensor:
        """Penultimate activations [N, hidden]: the space used for case retrieval."""
        return self.embed(self.features_net(x))

    def forward(self, x: Tensor) -> Tensor:  # [N, C, H, W] -> [N, n_classes]
        return self.head(self.features(x))
