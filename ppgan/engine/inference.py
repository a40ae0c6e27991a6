"""Running networks over data without gradients."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn


@torch.no_grad()
def collect(
    model: nn.Module, batches: Iterable[dict[str, Tensor]], fn: Callable | None = None
) -> Tensor:
    """Apply `fn(model, batch)` (default: `model(batch["images"])`) in eval mode, concatenated.

    The model's train/eval mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    try:
        outs = [fn(model, b) if fn else model(b["images"]) for b in batches]
    finally:
        model.train(was_training)
    return torch.cat(outs)


def batched(x: Tensor, batch_size: int) -> Iterable[dict[str, Tensor]]:
    """Wrap an image tensor [N, C, H, W] as batches for `collect`."""
    for start in range(0, len(x), batch_size):
        yield {"images": x[start : start + batch_size]}
