"""Task `export`: rewrite chosen splits with a trained generator into a new HDF5 release.

What is shipped is the anonymized images, `dis`, `set` and an opaque `case_id` per row, nothing
that links a row back to its source: the identity labels are left out (the original code exported
them; README, "Deviations from the original code"), the rows are in a fresh random order that is
never stored, the original ROI masks are not copied (they are as personal as the eye: every
original mask matches exactly one image), and no attributes, file names or indices are written.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import Tensor

from ppgan.baselines import check_temperature, release_temperature
from ppgan.data import SPLITS, load_dataset
from ppgan.data.release import export_release
from ppgan.engine import RunContext, load_frozen_parts, run_file
from ppgan.engine.images import rows_grid
from ppgan.errors import PpganError

log = logging.getLogger(__name__)


def run(cfg: DictConfig, out_dir: Path) -> dict[str, float]:
    task = cfg.task
    if task.temperature is not None:  # null: the checkpoint's own, read below
        check_temperature(task.temperature, "task.temperature")
    out_path = run_file(out_dir, task.filename)
    ctx = RunContext(cfg, out_dir)
    data = load_dataset(cfg.dataset, require_splits=()).to(ctx.device)
    (enc, dec), ckpt = load_frozen_parts(
        task.checkpoint, ("encoder", "decoder"), data.shape, ctx.device, "task.checkpoint"
    )
    temperature = release_temperature(task.temperature, ckpt, "task.temperature")
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

    # z = mu unless the temperature is > 0: then drawn in the release's (fresh, random) row
    # order, so every export is a new draw, as PP-RID's identity code is
    def anonymize(b: dict) -> Tensor:
        return dec(enc.release(b["images"], b["masks"], temperature))

    real, fake = export_release(
        out_path,
        data,
        idx,
        anonymize,
        cfg.trainer.eval_batch_size,
        masks=task.masks,
        keep_identity=task.keep_identity,
        progress=ctx.progress,
    )
    k = min(8, len(fake))
    grid = rows_grid([real[:k], fake[:k]], out_dir / "samples" / "anonymized.png")
    ctx.writer.add_image("samples/original|anonymized", grid, 0)
    log.info(
        "wrote %s (%d images of splits %s, release temperature %g)",
        out_path,
        len(idx),
        list(task.splits),
        temperature,
    )
    counts = {f"n_{s}": float((data.split[idx] == i).sum()) for i, s in enumerate(SPLITS)}
    return ctx.finish({"n_images": len(idx), **counts})
