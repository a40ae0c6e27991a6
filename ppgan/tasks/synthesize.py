"""Task `synthesize`: write the synthetic iris data set and a preview grid to the run dir."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from torchvision.utils import save_image

from ppgan.data import load_images, synthetic_spec
from ppgan.data.synthetic import synthesize
from ppgan.engine import RunContext, run_file
from ppgan.engine.images import to_unit

log = logging.getLogger(__name__)


def run(cfg: DictConfig, out_dir: Path) -> dict[str, float]:
    out_path = run_file(out_dir, cfg.task.filename)
    ctx = RunContext(cfg, out_dir)
    spec = synthetic_spec(cfg.dataset)
    path = synthesize(spec, out_path)
    data = load_images(path, require_splits=("train", "val", "test"))  # validate what we wrote
    # One image per identity for the first `grid_rows` x 10 identities, sorted by disease class.
    ids = data.ids.numpy()
    first = np.array([np.flatnonzero(ids == i)[0] for i in range(data.n_ids)])
    first = first[np.argsort(data.dis[first].numpy(), kind="stable")][: cfg.task.grid_images]
    grid = to_unit(data.images[torch.from_numpy(first)])
    (out_dir / "samples").mkdir(exist_ok=True)
    save_image(grid, out_dir / "samples" / "synthetic_iris.png", nrow=10, padding=1)
    ctx.writer.add_images("data/synthetic_iris", grid, 0)
    log.info(
        "wrote %s (%d images, %d identities, %d disease classes)",
        path,
        len(data),
        data.n_ids,
        data.n_classes,
    )
    return ctx.finish(
        {
            "n_images": len(data),
            "n_identities": data.n_ids,
            "n_disease_classes": data.n_classes,
            **{f"n_{s}": len(data.indices(s)) for s in ("train", "val", "test")},
        }
    )
