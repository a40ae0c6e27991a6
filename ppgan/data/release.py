"""Writing a release file: the anonymized rows of a data set, in a fresh random order, with an
opaque case id per row and nothing that links a row back to its source (`task=export`, and the
twin exports `task=evaluate` attacks for a stochastic method). See `ppgan.tasks.export`.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ppgan.data.hdf5 import ImageData, atomic_h5
from ppgan.errors import PpganError

MASK_MODES = ("none", "class_canonical")


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


def release_order(n: int) -> np.ndarray:
    """A permutation of the rows drawn from OS entropy, deliberately *not* from `cfg.seed`:
    anyone who knows the seed (it is in every run's config) could otherwise undo it. It is never
    written anywhere, so two exports of the same data differ in order."""
    return np.random.default_rng(secrets.randbits(128)).permutation(n)


def case_ids(n: int) -> np.ndarray:
    """n distinct random 64-bit hex ids: the names of the release's cases in panels and sidecars.
    They exist only in the release (not derived from any index), so they link to nothing."""
    ids: list[str] = []
    seen: set[str] = set()
    while len(ids) < n:
        if (token := secrets.token_hex(8)) not in seen:
            seen.add(token)
            ids.append(token)
    return np.array(ids, dtype="S16")


# A class's own vote needs this many training masks and, where identities are known, this many
# people: the vote of one or two people's masks would be their masks.
CANONICAL_MIN_MASKS = 10
CANONICAL_MIN_PEOPLE = 3


def class_canonical_masks(data: ImageData) -> Tensor:
    """One mask per disease class [K, H, W]: the pixel-wise majority vote of the class's training
    masks. A mask per class carries the class (which the release shows anyway) and nothing about
    the person; classes with fewer than CANONICAL_MIN_MASKS training masks or fewer than
    CANONICAL_MIN_PEOPLE people among them get the vote over all training masks."""
    train = data.indices("train")
    masks = data.batch(train)["masks"][:, 0]  # [N, H, W] in {0, 1}
    dis = data.dis[train]
    ids = None if data.ids is None else data.ids[train]
    overall = masks.mean(0) >= 0.5
    out = []
    for c in range(data.n_classes):
        sel = dis == c
        people = CANONICAL_MIN_PEOPLE if ids is None else len(ids[sel].unique())
        enough = int(sel.sum()) >= CANONICAL_MIN_MASKS and people >= CANONICAL_MIN_PEOPLE
        out.append(masks[sel].mean(0) >= 0.5 if enough else overall)
    return torch.stack(out).to(torch.uint8)


def export_release(
    path: Path,
    data: ImageData,
    idx: Tensor,
    anonymize: Callable[[dict], Tensor],
    batch_size: int,
    masks: str = "none",
    keep_identity: bool = False,
    progress=lambda it, **_: it,
) -> tuple[Tensor, Tensor]:
    """Write the anonymized rows `idx` of `data` to `path` as a release (see the module doc).

    Args:
        anonymize: batch -> images [B, C, H, W] in [-1, 1].
        masks: `none` (default) or `class_canonical` (`class_canonical_masks`).
        keep_identity: also write `id` (in the release's order): for evaluation only.

    Returns:
        The first batch's originals and anonymized images (for a sample grid).
    """
    if masks not in MASK_MODES:
        raise PpganError(f"task.masks={masks}: choose from {list(MASK_MODES)}")
    if masks != "none" and not data.has_masks:
        raise PpganError(f"task.masks={masks}: {data.path} has no masks to derive them from")
    idx = idx[torch.from_numpy(release_order(len(idx))).to(idx.device)]
    n, (c, h, w) = len(idx), data.shape
    shape = (n, h, w) if data.source_rank == 3 else (n, h, w, c)
    canonical = class_canonical_masks(data).cpu().numpy() if masks == "class_canonical" else None
    first = None
    with atomic_h5(path) as f:
        images = f.create_dataset("images", shape=shape, dtype=np.dtype(data.source_dtype))
        dis = data.dis[idx].cpu().numpy()
        f.create_dataset("dis", data=dis)
        f.create_dataset("set", data=data.split_code(data.split[idx]).cpu().numpy())
        f.create_dataset("case_id", data=case_ids(n))
        if canonical is not None:
            f.create_dataset("masks", data=canonical[dis])
        if keep_identity:
            f.create_dataset("id", data=data.require_ids("task.keep_identity")[idx].cpu().numpy())
        for start in progress(range(0, n, batch_size), desc="anonymize"):
            b = data.batch(idx[start : start + batch_size])
            with torch.no_grad():
                fake = anonymize(b)
            images[start : start + len(fake)] = to_source_format(fake, data)
            if first is None:
                first = (b["images"], fake)
    return first
