"""Task `roi_masks`: ROI masks for a data set that has none, from where the disease network looks.

The method keeps the region of interest: PP-RID's `roi_rec` term ties the release to the original
inside the ROI, and the encoder reads the mask next to the image (paper, Sec. III; README,
"ROI masks from the disease network"). The paper's iris data come with a segmented iris disc;
a collection without masks falls back to the whole image, which then ties every pixel of the
release -- the skin, lids and background that also show who the person is -- as strongly as the
disease sign. This task finds, for every image, the pixels the frozen disease network's decision
on it depends on most, and writes them as a binary mask file for `dataset.mask_path`:

1. saliency: |d log p(y | x) / dx|, summed over channels, for the class y the network itself
   decides on the image (its most likely class): no label is read, so the masks of unlabelled
   or withheld images are made the same way, and a mask cannot carry a label the image does not
   show (one backward pass per batch);
2. smoothing: a box filter `task.smooth` of the image side wide, so that the mask is a region
   around the evidence, not its scattered edge pixels;
3. the `task.area` fraction of the pixels with the highest smoothed saliency is the ROI (exactly
   that many per image).

Not in the original code (it needs masks). The masks come from the original images, so they are as
personal as the originals: `task=export` copies no per-image mask (`task.masks=class_canonical`
ships one majority vote per class).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn

from ppgan.data import load_dataset
from ppgan.data.hdf5 import atomic_h5
from ppgan.engine import RunContext, run_file
from ppgan.engine.checkpoint import load_frozen
from ppgan.engine.images import rows_grid
from ppgan.errors import PpganError

log = logging.getLogger(__name__)


def box_kernel(size: int, smooth: float) -> int:
    """The odd box-filter side (px) for a `smooth` fraction of an image side of `size` px."""
    return 2 * int(round(smooth * size / 2)) + 1


def saliency_masks(
    net: nn.Module, images: Tensor, area: float, kernel: int
) -> tuple[Tensor, Tensor]:
    """Binary ROI masks [N, 1, H, W] (float 0/1) and the smoothed saliency maps they come from.

    Each mask holds exactly round(area * H * W) pixels: those where the box-filtered magnitude of
    the gradient of log p(y | image) is largest, y the network's most likely class (ties go to
    the earlier pixel in row-major order: a stable sort, the same on every device).
    """
    return _masks(net, images, area, kernel)[:2]


def _masks(
    net: nn.Module, images: Tensor, area: float, kernel: int
) -> tuple[Tensor, Tensor, Tensor]:
    """`saliency_masks`, and per image whether the log-probability's gradient vanished."""
    x = images.detach().float().requires_grad_(True)
    logits = net(x).float()
    decided = logits.argmax(1, keepdim=True).detach()
    logp = F.log_softmax(logits, 1).gather(1, decided).sum()
    (grad,) = torch.autograd.grad(logp, x, retain_graph=True)
    # A network certain of an image (p = 1 in float32) has no gradient of its log-probability
    # there: a mask of the first pixels would follow. Those images take the gradient of the
    # decided class's logit instead, which does not saturate (no host sync: both are computed).
    (grad_logit,) = torch.autograd.grad(logits.gather(1, decided).sum(), x)
    flat = grad.flatten(1).abs().amax(1) == 0
    grad = torch.where(flat[:, None, None, None], grad_logit, grad)
    sal = grad.abs().sum(1, keepdim=True)
    if kernel > 1:
        # count_include_pad=False: a border pixel is the mean of the pixels its box does cover.
        sal = F.avg_pool2d(sal, kernel, 1, kernel // 2, count_include_pad=False)
    n, _, h, w = sal.shape
    k = max(1, int(round(area * h * w)))
    top = sal.flatten(1).argsort(dim=1, descending=True, stable=True)[:, :k]
    mask = torch.zeros(n, h * w, device=sal.device).scatter_(1, top, 1.0)
    return mask.view(n, 1, h, w), sal, flat


def overlap(mask: Tensor, reference: Tensor) -> tuple[Tensor, Tensor]:
    """Per image: IoU of `mask` with `reference`, and the share of `mask` inside `reference`."""
    inter = (mask * reference).sum((1, 2, 3))
    union = (mask + reference).clamp(max=1).sum((1, 2, 3))
    return inter / union.clamp(min=1), inter / mask.sum((1, 2, 3)).clamp(min=1)


def check_options(task: DictConfig) -> None:
    """Refuse bad option values before any file is read."""
    if not task.disease_ckpt:
        raise PpganError(
            "task.disease_ckpt: required (the disease network whose saliency makes the masks); "
            "train one with `python -m ppgan task=disease`"
        )
    if not _number(task.area) or not 0 < task.area < 1:
        raise PpganError(f"task.area={task.area}: the ROI's share of each image, in (0, 1)")
    if not _number(task.smooth) or not 0 <= task.smooth <= 0.5:
        raise PpganError(f"task.smooth={task.smooth}: the box filter's share of the side, 0..0.5")
    if (
        not isinstance(task.batch_size, int)
        or isinstance(task.batch_size, bool)
        or task.batch_size < 1
    ):
        raise PpganError(f"task.batch_size={task.batch_size}: a positive integer")


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def run(cfg: DictConfig, out_dir: Path) -> dict[str, float]:
    task = cfg.task
    check_options(task)
    path = run_file(out_dir, task.filename)
    ctx = RunContext(cfg, out_dir)
    data = load_dataset(cfg.dataset, require_splits=()).to(ctx.device)
    net, _ = load_frozen(
        task.disease_ckpt,
        ctx.device,
        "task.disease_ckpt",
        {"in_shape": list(data.shape), "n_classes": data.n_classes},
    )
    kernel = box_kernel(data.shape[1], float(task.smooth))
    n, (_, h, w) = len(data), data.shape
    scores: list[Tensor] = []
    preview = None
    batch_size = int(task.batch_size)
    n_flat = torch.zeros((), device=ctx.device, dtype=torch.long)
    with atomic_h5(path) as f:
        # Written batch by batch in the data file's row order: a lazily read data set never sits
        # in memory whole, and a failure leaves no file (atomic_h5).
        out = f.create_dataset(
            "masks", (n, h, w), dtype="uint8", chunks=(min(n, batch_size), h, w), compression="gzip"
        )
        for start in ctx.progress(range(0, n, batch_size), desc="roi masks"):
            stop = min(start + batch_size, n)
            b = data.batch(torch.arange(start, stop))
            mask, sal, flat = _masks(net, b["images"], float(task.area), kernel)
            n_flat = n_flat + flat.sum()
            if data.has_masks:  # the file's own masks: how well the saliency finds them
                scores.append(
                    torch.stack([*overlap(mask, b["masks"]), b["masks"].mean((1, 2, 3))], 1)
                )
            if preview is None:
                m = min(8, stop - start)
                peak = sal[:m].amax((1, 2, 3), keepdim=True).clamp(min=1e-12)
                preview = [b["images"][:m], sal[:m] / peak * 2 - 1, mask[:m] * 2 - 1]
            out[start:stop] = mask[:, 0].to(torch.uint8).cpu().numpy()
    grid = rows_grid(preview, out_dir / "samples" / "roi_masks.png")
    ctx.writer.add_image("roi_masks/image_saliency_mask", grid, 0)
    metrics = {"area": round(float(task.area) * h * w) / (h * w), "kernel_px": float(kernel)}
    metrics["n_images"] = float(n)
    # Images whose log-probability had no gradient (the logit's was used): many of them say the
    # network is too sure of itself for its saliency to be trusted; look at the preview.
    metrics["n_logit_fallback"] = float(n_flat)
    if n_flat:
        log.warning(
            "%d of %d images: the disease network is certain (p = 1), no gradient of its "
            "log-probability; their masks use the gradient of the logit",
            int(n_flat),
            n,
        )
    if scores:
        iou, inside, file_area = torch.cat(scores).mean(0).tolist()
        metrics |= {
            "iou_with_file_masks": iou,
            "precision_in_file_masks": inside,
            "file_masks_area": file_area,
        }
        log.info(
            "against the file's own masks (area %.3f): mean IoU %.3f, share inside %.3f",
            file_area,
            iou,
            inside,
        )
    log.info("wrote %s: pass dataset.mask_path=%s to the later stages", path, path)
    return ctx.finish(metrics)
