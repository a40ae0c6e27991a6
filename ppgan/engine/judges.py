"""The frozen, pre-trained recognition networks that judge generated images."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from omegaconf import DictConfig
from torch import nn

from ppgan.data import ImageData
from ppgan.engine.checkpoint import load_frozen
from ppgan.errors import PpganError

HINT = {
    "disease": "python -m ppgan task=disease",
    "identity": "python -m ppgan task=identity",
    "siamese": "python -m ppgan task=siamese",
}


@dataclass
class Judges:
    """Disease classifier (always), identity classifier and siamese network (when configured)."""

    disease: nn.Module
    identity: nn.Module | None = None
    siamese: nn.Module | None = None


def load_judges(
    task: DictConfig, data: ImageData, device: torch.device, required: tuple[str, ...]
) -> Judges:
    """Load the checkpoints named by `task.<name>_ckpt`, checked against the data's shape/classes.

    Args:
        required: networks that must be configured; the others are loaded when a path is given.
    """
    expect = {
        "disease": {"in_shape": list(data.shape), "n_classes": data.n_classes},
        "identity": {"in_shape": list(data.shape), "n_classes": data.n_ids},
        "siamese": {"in_shape": list(data.shape)},
    }
    nets = {}
    for name in ("disease", "identity", "siamese"):
        key = f"task.{name}_ckpt"
        path = task.get(f"{name}_ckpt")
        if not path:
            if name in required:
                raise PpganError(
                    f"{key}: required; train one with `{HINT[name]}` and pass "
                    f"{key}=<run dir>/checkpoints/best.pt"
                )
            continue
        nets[name], _ = load_frozen(path, device, key=key, expect=expect[name])
    return Judges(**nets)
