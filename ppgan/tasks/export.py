"""Task `export`: rewrite chosen splits with a trained generator into a new HDF5 (same format).

The identity labels are left out by default: the original exported them, which links every
anonymized image back to its patient (README, "Deviations from the original code").
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from torch import Tensor

from ppgan.data import SPLITS, ImageData, load_dataset
from ppgan.data.hdf5 import atomic_h5
from ppgan.engine import RunContext, load_frozen_parts
from ppgan.engine.images import rows_grid
from ppgan.errors import PpganError
from ppgan.models.vae import reparameterize

log = logging.getLogger(__name__)


def to_source_format(x: Tensor, data: ImageData) -> np.ndarray:
    """[N, C, H, W] in [-1, 1] -> the input file's dtype and layout."""
    x = x.float().permute(0, 2, 3, 1)
    if data.source_rank == 3:
        x = x[..., 0]
    if data.source_dtype == "uint8":
        return ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).cpu().numpy()
    if data.float_range == "unit":  # a [0, 1] file gets a [0, 1] export
        x = (x + 1) / 2
    return x.cpu().numpy().astype(data.source_dtype)


def anonymize_splits(enc, dec, data: ImageData, idx: Tensor, bs: int, sample: bool, progress):
    """Yield (positions, anonymized batch) over `idx`; z = mu unless `sample`."""
    for start in progress(range(0, len(idx), bs), desc="anonymize"):
        b = data.batch(idx[start : start + bs])
        with torch.no_grad():
            mu, logvar = enc(b["images"], b["masks"])
            yield start, b, dec(reparameterize(mu, logvar) if sample else mu)


def run(cfg: DictConfig, out_dir: Path) -> dict[str, float]:
    ctx = RunContext(cfg, out_dir)
    task = cfg.task
    data = load_dataset(cfg.dataset, require_splits=()).to(ctx.device)
    (enc, dec), _ = load_frozen_parts(
        task.checkpoint, ("encoder", "decoder"), data.shape, ctx.device, "task.checkpoint"
    )
    if bad := sorted(set(task.splits) - set(SPLITS)):
        raise PpganError(f"task.splits: unknown splits {bad} (choose from {list(SPLITS)})")
    idx = torch.cat([data.indices(s) for s in task.splits]).sort().values
    if len(idx) == 0:
        raise PpganError(f"task.splits={list(task.splits)}: no images in these splits")
    if task.keep_identity:
        log.warning(
            "task.keep_identity=true: the output keeps identity labels, which link every "
            "anonymized image to its patient; use it for evaluation only"
        )
    n, (c, h, w) = len(idx), data.shape
    out_path = out_dir / task.filename
    shape = (n, h, w) if data.source_rank == 3 else (n, h, w, c)
    with atomic_h5(out_path) as f:
        images = f.create_dataset("images", shape=shape, dtype=np.dtype(data.source_dtype))
        f.create_dataset("dis", data=data.dis[idx].cpu().numpy())
        f.create_dataset("set", data=data.split_code(data.split[idx]).cpu().numpy())
        if task.keep_identity:
            f.create_dataset("id", data=data.require_ids("task.keep_identity").cpu()[idx.cpu()])
        masks = (
            f.create_dataset("masks", shape=(n, h, w), dtype=np.uint8) if data.has_masks else None
        )
        for start, b, fake in anonymize_splits(
            enc, dec, data, idx, cfg.trainer.eval_batch_size, task.sample_latent, ctx.progress
        ):
            images[start : start + len(fake)] = to_source_format(fake, data)
            if masks is not None:
                masks[start : start + len(fake)] = b["masks"][:, 0].to(torch.uint8).cpu().numpy()
            if start == 0:
                k = min(8, len(fake))
                grid = rows_grid(
                    [b["images"][:k], fake[:k]], out_dir / "samples" / "anonymized.png"
                )
                ctx.writer.add_image("samples/original|anonymized", grid, 0)
    log.info("wrote %s (%d images of splits %s)", out_path, n, list(task.splits))
    counts = {f"n_{s}": float((data.split[idx] == i).sum()) for i, s in enumerate(SPLITS)}
    return ctx.finish({"n_images": n, **counts})
