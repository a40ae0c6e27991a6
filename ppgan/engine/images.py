"""Image helpers for grids and PNG output."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor
from torchvision.utils import make_grid, save_image


def to_unit(x: Tensor) -> Tensor:
    """[-1, 1] -> [0, 1] for display."""
    return ((x.detach().float().cpu() + 1) / 2).clamp(0, 1)


def rows_grid(rows: list[Tensor], path: Path | None = None) -> Tensor:
    """A grid whose columns are cases and whose rows are `rows` (e.g. original | mask | anonymized).

    Every row is [N, C, H, W] in [-1, 1]; 1-channel rows (masks, grey images) are shown as grey.
    """
    rows = [to_unit(r).expand(-1, 3, -1, -1) for r in rows]
    grid = make_grid(torch.cat(rows), nrow=len(rows[0]), padding=1, pad_value=1.0)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")  # a reader never sees half a PNG
        save_image(grid, tmp, format="png")
        os.replace(tmp, path)
    return grid
