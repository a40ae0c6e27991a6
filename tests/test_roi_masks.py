"""task=roi_masks: ROI masks from the disease network's saliency, for data without masks."""

from __future__ import annotations

import h5py
import pytest
import torch
from torch import nn

from ppgan.data import load_dataset
from ppgan.errors import PpganError
from ppgan.tasks.roi_masks import box_kernel, overlap, saliency_masks
from tests.conftest import make_cfg


class PatchReader(nn.Module):
    """A 'disease network' whose class k > 0 logit is the mean of the k-th known patch."""

    def __init__(self, *patches: tuple[slice, slice]):
        super().__init__()
        self.patches = patches

    def forward(self, x):
        means = [x[:, :, rows, cols].mean((1, 2, 3)) for rows, cols in self.patches]
        return 4 * torch.stack([torch.zeros_like(means[0]), *means], 1)


def region(rows: slice, cols: slice, size: int = 32) -> torch.Tensor:
    out = torch.zeros(1, 1, size, size)
    out[:, :, rows, cols] = 1
    return out


A, B = (slice(4, 12), slice(18, 26)), (slice(20, 28), slice(4, 12))  # 64 pixels each


def test_saliency_masks_are_the_pixels_of_the_decided_class():
    net = PatchReader(A, B)
    images = torch.full((4, 1, 32, 32), -1.0)
    images[:2, :, A[0], A[1]] = 1  # patch A bright: the network decides class 1
    images[2:, :, B[0], B[1]] = 1  # patch B bright: class 2
    mask, sal = saliency_masks(net, images, 64 / 1024, kernel=1)
    assert torch.equal(mask[:2], region(*A).expand(2, -1, -1, -1))
    assert torch.equal(mask[2:], region(*B).expand(2, -1, -1, -1))


def test_a_certain_network_falls_back_to_the_logit_gradient():
    """p = 1 in float32: no gradient of the log-probability; the logit's still finds the patch."""
    net = PatchReader(A)
    images = torch.full((2, 1, 32, 32), -1.0)
    images[:, :, A[0], A[1]] = 1e4  # logit 4e4: softmax is exactly one-hot
    mask, sal = saliency_masks(net, images, 64 / 1024, kernel=1)
    assert torch.equal(mask, region(*A).expand(2, -1, -1, -1)) and sal.amax() > 0


def test_smoothing_grows_the_region_around_the_evidence_at_the_same_area():
    net = PatchReader(A)
    images = torch.rand(3, 1, 32, 32) * 2 - 1
    images[:, :, A[0], A[1]] += 2  # class 1 decided
    mask, _ = saliency_masks(net, images, 0.1, kernel=5)
    assert mask.sum((1, 2, 3)).tolist() == [round(0.1 * 1024)] * 3
    # Every pixel of the mask is within the box filter's reach of the patch (not scattered
    # zero-saliency pixels elsewhere), and the patch is inside it.
    near = region(slice(2, 14), slice(16, 28))
    assert (mask <= near).all() and (mask >= region(*A)).all()
    iou, inside = overlap(mask, region(*A))
    assert torch.allclose(iou, torch.full((3,), 64 / 102)) and (inside == 64 / 102).all()
    # A patch in the corner: the border pixels' boxes average only the pixels they cover, so
    # the corner itself is as salient as the patch's middle.
    corner = PatchReader((slice(0, 8), slice(0, 8)))
    images = torch.full((1, 1, 32, 32), -1.0)
    images[:, :, :8, :8] = 1
    mask, _ = saliency_masks(corner, images, 36 / 1024, kernel=5)
    assert torch.equal(mask, region(slice(0, 6), slice(0, 6)))
    assert box_kernel(128, 0.12) == 17 and box_kernel(32, 0.0) == 1


def test_roi_masks_task_writes_masks_the_later_stages_read(run, judges, data_dir):
    metrics, out = run("task=roi_masks", f"task.disease_ckpt={judges['disease']}", "task.area=0.25")
    with h5py.File(out / "masks.h5") as f:
        masks = torch.from_numpy(f["masks"][:])
    cfg = make_cfg(f"paths.data_dir={data_dir}")
    own = load_dataset(cfg.dataset, require_splits=())  # the tiny data's own iris masks
    n, (_, h, w) = len(own), own.shape
    assert masks.shape == (n, h, w) and masks.dtype == torch.uint8
    assert (masks.flatten(1).sum(1) == round(0.25 * h * w)).all()  # exactly the area each
    # Row i of the file is image i's mask: scored row by row against the data's own masks, the
    # file gives the task's metric (rows written in another order would not).
    iou, inside = overlap(masks[:, None].float(), own.masks)
    assert iou.mean().item() == pytest.approx(metrics["iou_with_file_masks"], abs=1e-6)
    # The saliency finds the disease sign inside the iris far more often than a mask of the
    # same area put anywhere would (its expected share inside: the iris's area).
    assert metrics["precision_in_file_masks"] > 2 * metrics["file_masks_area"]
    # Through dataset.mask_path the later stages read this file, not the data's own masks.
    cfg = make_cfg(f"paths.data_dir={data_dir}", f"dataset.mask_path={out / 'masks.h5'}")
    data = load_dataset(cfg.dataset, require_splits=())
    assert data.has_masks and torch.equal(data.masks[:, 0].to(torch.uint8), masks)
    assert (out / "samples" / "roi_masks.png").is_file()
    assert metrics["n_logit_fallback"] == 0  # the tiny network is not certain of every image
    # Read lazily (batch by batch from the file), the same masks.
    _, lazy = run(
        "task=roi_masks",
        f"task.disease_ckpt={judges['disease']}",
        "task.area=0.25",
        "dataset.in_memory_max_gb=0",
        name="lazy",
    )
    with h5py.File(lazy / "masks.h5") as f:
        assert torch.equal(torch.from_numpy(f["masks"][:]), masks)


def test_roi_masks_refuses_a_network_of_other_classes(run, judges, tmp_path):
    with pytest.raises(PpganError, match="task.disease_ckpt.*n_classes"):
        run("task=roi_masks", f"task.disease_ckpt={judges['identity']}", name="bad")
    assert not (tmp_path / "bad" / "masks.h5").exists()


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("task.area=1.5", "task.area=1.5: the ROI's share of each image, in (0, 1)"),
        ("task.smooth=0.9", "task.smooth=0.9"),
        ("task.smooth=-0.1", "task.smooth=-0.1"),
        ("task.batch_size=0", "task.batch_size=0: a positive integer"),
        ("task.filename=../x.h5", "task.filename=../x.h5: a plain file name"),
        ("task.disease_ckpt=null", "task.disease_ckpt: required"),
    ],
)
def test_roi_masks_bad_options_stop_before_anything_is_written(
    run, judges, tmp_path, override, fragment
):
    with pytest.raises(PpganError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        run("task=roi_masks", f"task.disease_ckpt={judges['disease']}", override, name="bad")
    assert not (tmp_path / "bad" / "masks.h5").exists()
