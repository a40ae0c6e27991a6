"""task=roi_masks: ROI masks from the disease network's saliency, for data without masks."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from torch import nn

from ppgan.data import load_dataset
from ppgan.errors import PpganError
from ppgan.tasks.roi_masks import box_kernel, overlap, saliency_masks
from tests.conftest import make_cfg


class PatchReader(nn.Module):
    """A 'disease network' whose class-1 logit is the mean of one known patch, class 0 fixed."""

    def __init__(self, rows: slice, cols: slice):
        super().__init__()
        self.rows, self.cols = rows, cols

    def forward(self, x):
        patch = x[:, :, self.rows, self.cols].mean((1, 2, 3))
        return torch.stack([torch.zeros_like(patch), 4 * patch], 1)


def test_saliency_masks_are_the_pixels_the_decision_reads():
    net = PatchReader(slice(4, 12), slice(18, 26))  # 64 of 32 x 32 pixels
    images = torch.rand(3, 1, 32, 32) * 2 - 1
    truth = torch.zeros(3, 1, 32, 32)
    truth[:, :, 4:12, 18:26] = 1
    for label in (0, 1):  # the log-probability of either class depends on the patch alone
        mask, sal = saliency_masks(net, images, torch.full((3,), label), 64 / 1024, kernel=1)
        assert torch.equal(mask, truth)
        assert sal[truth == 0].abs().max() == 0
    # Smoothed, the region grows around the patch but stays centred on it, at the same area.
    mask, _ = saliency_masks(net, images, torch.ones(3, dtype=torch.long), 0.1, kernel=5)
    assert mask.sum((1, 2, 3)).tolist() == [round(0.1 * 1024)] * 3
    iou, inside = overlap(mask, truth)
    assert (inside == 1).all() or (iou > 0.6).all()
    assert box_kernel(128, 0.12) == 17 and box_kernel(32, 0.0) == 1


def test_roi_masks_task_writes_masks_the_later_stages_read(run, judges, data_dir):
    metrics, out = run("task=roi_masks", f"task.disease_ckpt={judges['disease']}", "task.area=0.25")
    with h5py.File(out / "masks.h5") as f:
        masks = f["masks"][:]
    cfg = make_cfg(f"paths.data_dir={data_dir}", f"dataset.mask_path={out / 'masks.h5'}")
    data = load_dataset(cfg.dataset, require_splits=())
    n, (_, h, w) = len(data), data.shape
    assert masks.shape == (n, h, w) and masks.dtype == np.uint8
    assert (masks.reshape(n, -1).sum(1) == round(0.25 * h * w)).all()  # exactly the area each
    # The file read through dataset.mask_path is the one written, not the data's own masks.
    assert data.has_masks and torch.equal(data.masks[:, 0].to(torch.uint8), torch.from_numpy(masks))
    # The tiny data have their own iris masks (0.2 of the image): the saliency finds the
    # disease sign inside them far more often than a mask of the same area put anywhere would
    # (expected share inside ~0.2).
    assert metrics["precision_in_file_masks"] > 0.4
    assert (out / "samples" / "roi_masks.png").is_file()


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("task.area=1.5", "task.area=1.5: the ROI's share of each image, in (0, 1)"),
        ("task.smooth=0.9", "task.smooth=0.9"),
        ("task.disease_ckpt=null", "task.disease_ckpt: required"),
    ],
)
def test_roi_masks_bad_options_stop_before_anything_is_written(
    run, judges, tmp_path, override, fragment
):
    with pytest.raises(PpganError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        run("task=roi_masks", f"task.disease_ckpt={judges['disease']}", override, name="bad")
    assert not (tmp_path / "bad" / "masks.h5").exists()
