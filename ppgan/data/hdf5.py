"""Reading and validating the paper's HDF5 format (`images`, `id`, `dis`, `set`, `masks`)."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import torch
from torch import Tensor

from ppgan.errors import PpganError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
# The original README's convention; `dataset.split_codes` maps others (the original *code* reads
# 1 as test and 2 as validation, see README "Deviations from the original code").
DEFAULT_SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
_CHUNK = 4096  # images per read when validating or loading, bounds peak memory


def _fail(path: Path, key: str, problem: str) -> PpganError:
    return PpganError(f"{path}: key '{key}': {problem}")


def _dataset(f: h5py.File, path: Path, key: str) -> h5py.Dataset:
    """`f[key]` if it is an array with a shape (not a group, a scalar or an empty dataspace)."""
    node = f[key]
    if not isinstance(node, h5py.Dataset):
        raise _fail(path, key, "is a group, expected an array")
    if node.shape is None or node.ndim == 0:
        raise _fail(path, key, "is a scalar or empty, expected an array")
    return node


def _read_labels(f: h5py.File, path: Path, key: str, n: int) -> np.ndarray:
    arr = _dataset(f, path, key)[()]
    if arr.ndim != 1:
        raise _fail(path, key, f"expected a 1-D array of length {n}, got shape {arr.shape}")
    if len(arr) != n:
        raise _fail(path, key, f"has {len(arr)} entries but 'images' has {n}")
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all() or (arr != np.round(arr)).any():
            raise _fail(path, key, "labels must be integers")
    elif arr.dtype.kind not in "iub":
        raise _fail(path, key, f"labels must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if n and arr.min() < 0:
        raise _fail(path, key, f"labels must be >= 0, found {arr.min()}")
    return arr


def _contiguous(labels: np.ndarray, path: Path, key: str, remap: bool) -> tuple[np.ndarray, int]:
    """Labels as 0..K-1. Gaps (e.g. ids {0, 3, 7}) are remapped with a warning, or refused."""
    values = np.unique(labels)
    if len(values) == 0 or values[-1] == len(values) - 1:
        return labels, int(values[-1]) + 1 if len(values) else 0
    if not remap:
        raise _fail(
            path,
            key,
            f"labels are not contiguous 0..K-1 (values {values[:10].tolist()}...)"
            " ; set dataset.remap_labels=true to renumber them",
        )
    log.warning(
        "%s: '%s' labels are not contiguous; renumbered %d values to 0..%d",
        path,
        key,
        len(values),
        len(values) - 1,
    )
    return np.searchsorted(values, labels), len(values)


FLOAT_RANGES = ("auto", "signed", "unit")


def _to_float(images: np.ndarray, float_range: str = "signed") -> Tensor:
    """uint8 [0,255], float [-1,1] (`signed`) or float [0,1] (`unit`), (n,H,W[,C]) -> float32
    [n,C,H,W] in [-1,1], the generator's tanh range (paper, Sec. III)."""
    x = torch.from_numpy(np.ascontiguousarray(images))
    if x.dtype == torch.uint8:
        x = (x.float() - 127.5) / 127.5
    elif float_range == "unit":
        x = x.float() * 2 - 1
    else:
        x = x.float()
    if x.ndim == 3:
        x = x.unsqueeze(-1)
    return x.permute(0, 3, 1, 2).contiguous()


def _float_range(ds: h5py.Dataset, path: Path, wanted: str) -> str:
    """Check a float image array chunk by chunk and decide how to read it: `signed` [-1, 1] or
    `unit` [0, 1]. `auto` reads an array with no negative pixel as [0, 1] (with a warning: a
    [0, 1] file read as [-1, 1] would train on washed-out images without any error)."""
    if wanted not in FLOAT_RANGES:
        raise PpganError(f"dataset.float_range={wanted}: choose from {list(FLOAT_RANGES)}")
    lo, hi = np.inf, -np.inf
    for start in range(0, len(ds), _CHUNK):
        x = ds[start : start + _CHUNK]
        if not np.isfinite(x).all():
            raise _fail(path, "images", f"non-finite pixels (first chunk at image {start})")
        lo, hi = min(lo, float(x.min())), max(hi, float(x.max()))
    if wanted == "auto":
        wanted = "unit" if lo >= 0 else "signed"
        if wanted == "unit":
            log.warning(
                "%s: float images have no negative pixel: read as [0, 1] and rescaled to [-1, 1] "
                "(set dataset.float_range=signed if they are [-1, 1] images)",
                path,
            )
    bounds = (0.0, 1.0) if wanted == "unit" else (-1.0, 1.0)
    if lo < bounds[0] - 1e-6 or hi > bounds[1] + 1e-6:
        raise _fail(
            path,
            "images",
            f"float pixels in [{lo:.3g}, {hi:.3g}], outside [{bounds[0]:g}, {bounds[1]:g}] "
            f"(dataset.float_range={wanted}; uint8 [0, 255] or float [-1, 1] / [0, 1] expected)",
        )
    return wanted


@dataclass
class ImageData:
    """A validated data set. Labels and splits live in memory; images too when they fit.

    Attributes:
        shape: image shape (C, H, W).
        n_ids: number of identities (0 when the file has no `id`, e.g. an anonymized export).
        n_classes: number of disease classes.
    """

    path: Path
    shape: tuple[int, int, int]
    dis: Tensor
    split: Tensor
    ids: Tensor | None
    n_ids: int
    n_classes: int
    images: Tensor | None = None  # [N, C, H, W] float in [-1, 1]; None when read lazily
    masks: Tensor | None = None  # [N, 1, H, W] float {0, 1}; None = whole image is the ROI
    has_masks: bool = False
    source_dtype: str = "uint8"
    source_rank: int = 4  # 3 for (N,H,W) files: exports keep the layout
    float_range: str = "signed"  # float files: `signed` [-1, 1] or `unit` [0, 1]; exports keep it
    _h5: h5py.File | None = field(default=None, repr=False)
    _mask_h5: h5py.File | None = field(default=None, repr=False)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    split_codes: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_SPLIT_CODES))

    def __len__(self) -> int:
        return len(self.dis)

    @property
    def lazy(self) -> bool:
        return self.images is None

    def to(self, device: torch.device | str) -> ImageData:
        """Move the in-memory arrays to `device` once, so training never copies from the host."""
        self.device = torch.device(device)
        for name in ("images", "masks", "dis", "split", "ids"):
            if (t := getattr(self, name)) is not None:
                setattr(self, name, t.to(self.device))
        return self

    def indices(self, split: str) -> Tensor:
        if split not in SPLITS:
            raise PpganError(f"unknown split '{split}' (choose from {list(SPLITS)})")
        return torch.nonzero(self.split == SPLITS.index(split)).flatten()

    def split_code(self, split: Tensor) -> Tensor:
        """Canonical split indices (0 train, 1 val, 2 test) -> this file's `set` values."""
        return torch.tensor([self.split_codes[s] for s in SPLITS], device=split.device)[split]

    def require_ids(self, task: str) -> Tensor:
        if self.ids is None:
            raise PpganError(
                f"{self.path}: key 'id': {task} needs identity labels, the file has none"
            )
        return self.ids

    def batch(self, idx: Tensor) -> dict[str, Tensor]:
        """Images, masks and labels of `idx` (in that order), on `self.device`."""
        if self.lazy:
            # h5py reads need unique increasing indices; `inverse` restores the requested order.
            order, inverse = np.unique(idx.cpu().numpy(), return_inverse=True)
            inverse = torch.from_numpy(inverse)
            images = _to_float(self._h5["images"][order], self.float_range)[inverse]
            images = images.to(self.device)
            if self._mask_h5 is not None:
                masks = torch.from_numpy(self._mask_h5["masks"][order] != 0)[inverse]
                masks = masks.float().unsqueeze(1).to(self.device)
            else:
                masks = None
            idx = idx.to(self.device)
        else:
            idx = idx.to(self.device)
            images, masks = self.images[idx], None if self.masks is None else self.masks[idx]
        if masks is None:
            masks = images.new_ones(images.shape[0], 1, *images.shape[2:])
        out = {"images": images, "masks": masks, "dis": self.dis[idx], "index": idx}
        if self.ids is not None:
            out["id"] = self.ids[idx]
        return out

    def index_batches(
        self,
        split: str | Tensor,
        batch_size: int,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
    ) -> Iterator[Tensor]:
        """The indices of each batch of a split (or of explicit indices), in batch order."""
        idx = self.indices(split) if isinstance(split, str) else split
        if shuffle:
            perm = torch.randperm(len(idx), generator=generator, device=generator.device)
            idx = idx[perm.to(idx.device)]
        stop = len(idx) - batch_size + 1 if drop_last else len(idx)
        for start in range(0, max(stop, 0), batch_size):
            yield idx[start : start + batch_size]

    def batches(
        self,
        split: str | Tensor,
        batch_size: int,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
        part: Callable[[Tensor], Tensor] | None = None,
    ) -> Iterator[dict[str, Tensor]]:
        """Iterate over a split (or explicit indices) in batches.

        Args:
            part: maps a batch's indices to those this process loads, e.g. one rank's part of
                the global batch in data-parallel training (`ppgan.engine.distributed`).
        """
        for idx in self.index_batches(split, batch_size, shuffle, generator, drop_last):
            yield self.batch(idx if part is None else part(idx))

    def split_tensors(self, split: str) -> dict[str, Tensor]:
        """A whole split at once (only for splits that fit in memory, e.g. evaluation sets)."""
        return self.batch(self.indices(split))


def load_images(
    path: str | Path,
    mask_path: str | Path | None = None,
    split_codes: Mapping[str, int] | None = None,
    remap_labels: bool = True,
    require_splits: tuple[str, ...] = ("train", "val"),
    in_memory_max_gb: float = 4.0,
    float_range: str = "auto",
    min_classes: int = 2,
) -> ImageData:
    """Open, validate and (when it fits) load an HDF5 data set.

    Every problem is a `PpganError` naming the file, the key and what is wrong.

    Args:
        path: HDF5 with `images` (N,H,W[,C]) uint8 or float in [-1,1], `dis`, `set`, optional `id`
            and `masks` (N,H,W).
        mask_path: separate HDF5 with `masks`, overriding masks in `path`.
        split_codes: the values of `set` meaning train / val / test.
        remap_labels: renumber non-contiguous `id`/`dis` labels (with a warning), not refuse.
        require_splits: splits that must not be empty.
        in_memory_max_gb: larger image arrays (as float32) are read lazily, batch by batch.
        float_range: float images are `signed` [-1, 1], `unit` [0, 1], or `auto` (no negative
            pixel: [0, 1], with a warning).
        min_classes: fewer disease classes is an error (a one-class "classifier" learns nothing).
    """
    try:
        return _load_images(
            Path(path),
            mask_path,
            split_codes,
            remap_labels,
            require_splits,
            in_memory_max_gb,
            float_range,
            min_classes,
        )
    except (OSError, KeyError, ValueError, TypeError) as exc:
        # A truncated or foreign file can pass the header checks and fail on a read; h5py then
        # raises one of these. Every problem with the file is a one-line user error.
        raise PpganError(
            f"{path}: cannot read ({type(exc).__name__}: {exc})".splitlines()[0]
        ) from exc


def _load_images(
    path: Path,
    mask_path: str | Path | None,
    split_codes: Mapping[str, int] | None,
    remap_labels: bool,
    require_splits: tuple[str, ...],
    in_memory_max_gb: float,
    float_range: str,
    min_classes: int,
) -> ImageData:
    codes = dict(split_codes or DEFAULT_SPLIT_CODES)
    if path.is_dir():
        raise PpganError(f"{path}: is a directory, expected an HDF5 file")
    if not path.is_file():
        raise PpganError(f"{path}: file does not exist")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise PpganError(f"{path}: cannot read as HDF5 ({exc})") from exc
    for key in ("images", "dis", "set"):
        if key not in f:
            raise _fail(path, key, f"missing (the file has {sorted(f.keys())})")
        _dataset(f, path, key)

    ds = f["images"]
    if ds.ndim not in (3, 4):
        raise _fail(path, "images", f"expected (N,H,W) or (N,H,W,C), got shape {ds.shape}")
    n, h, w = ds.shape[:3]
    c = ds.shape[3] if ds.ndim == 4 else 1
    if c not in (1, 3):
        raise _fail(path, "images", f"expected 1 or 3 channels, got {c} (shape {ds.shape})")
    if h != w or h % 16 or not 32 <= h <= 256:
        raise _fail(
            path, "images", f"images must be square, 32..256 px, a multiple of 16; got {h}x{w}"
        )
    if ds.dtype != np.uint8 and ds.dtype.kind != "f":
        raise _fail(path, "images", f"expected uint8 or float in [-1,1], got dtype {ds.dtype}")
    if n == 0:
        raise _fail(path, "images", "is empty")

    dis, n_classes = _contiguous(_read_labels(f, path, "dis", n), path, "dis", remap_labels)
    if n_classes < min_classes:
        raise _fail(
            path, "dis", f"has {n_classes} disease class(es); at least {min_classes} are needed"
        )
    ids, n_ids = None, 0
    if "id" in f:
        ids, n_ids = _contiguous(_read_labels(f, path, "id", n), path, "id", remap_labels)
    sets = _read_labels(f, path, "set", n)
    if unknown := set(np.unique(sets).tolist()) - set(codes.values()):
        raise _fail(path, "set", f"values {sorted(unknown)} are not in dataset.split_codes {codes}")
    split = np.full(n, -1, dtype=np.int64)
    for i, name in enumerate(SPLITS):
        split[sets == codes[name]] = i
    for name in require_splits:
        if not (split == SPLITS.index(name)).any():
            raise _fail(path, "set", f"the {name} split (set == {codes[name]}) is empty")

    mask_file, mask_src = None, None
    if mask_path is not None:
        mask_src = Path(mask_path)
        if not mask_src.is_file():
            raise PpganError(f"{mask_src}: mask file does not exist (dataset.mask_path)")
        try:
            mask_file = h5py.File(mask_src, "r")
        except OSError as exc:
            raise PpganError(f"{mask_src}: cannot read as HDF5 ({exc})") from exc
        if "masks" not in mask_file:
            raise _fail(mask_src, "masks", "missing")
    elif "masks" in f:
        mask_file, mask_src = f, path
    if mask_file is not None and _dataset(mask_file, mask_src, "masks").dtype.kind not in "biuf":
        raise _fail(mask_src, "masks", f"expected numbers, got dtype {mask_file['masks'].dtype}")
    if mask_file is not None and mask_file["masks"].shape != (n, h, w):
        raise _fail(
            mask_src, "masks", f"expected shape {(n, h, w)}, got {mask_file['masks'].shape}"
        )

    data = ImageData(
        path=path,
        shape=(c, h, w),
        dis=torch.from_numpy(dis),
        split=torch.from_numpy(split),
        ids=None if ids is None else torch.from_numpy(ids),
        n_ids=n_ids,
        n_classes=n_classes,
        has_masks=mask_file is not None,
        source_dtype=str(ds.dtype),
        source_rank=ds.ndim,
        split_codes=codes,
    )
    if ds.dtype.kind == "f":
        data.float_range = _float_range(ds, path, float_range)
    lazy = n * c * h * w * 4 > in_memory_max_gb * 2**30
    chunks = []
    if not lazy:
        for start in range(0, n, _CHUNK):
            chunks.append(_to_float(ds[start : start + _CHUNK], data.float_range))
    if lazy:
        log.info("%s: %d images do not fit in %.1f GB, reading lazily", path, n, in_memory_max_gb)
        data._h5, data._mask_h5 = f, mask_file
    else:
        data.images = torch.cat(chunks)
        if mask_file is not None:
            data.masks = torch.from_numpy(mask_file["masks"][()] != 0).float().unsqueeze(1)
            if mask_file is not f:
                mask_file.close()
        f.close()
    return data


@contextlib.contextmanager
def atomic_h5(path: Path) -> Iterator[h5py.File]:
    """An HDF5 file written under a temp name and renamed into place only when complete.

    A crash or error leaves no half-written file at `path` (and an existing one untouched).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with h5py.File(tmp, "w", track_order=False) as f:
            yield f
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
