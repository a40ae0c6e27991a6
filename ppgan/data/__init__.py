"""Data: the HDF5 format, the built-in synthetic iris data set, pair sampling."""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf

from ppgan.data.hdf5 import SPLITS, ImageData, load_images
from ppgan.data.synthetic import SyntheticIrisSpec, synthesize
from ppgan.errors import PpganError

log = logging.getLogger(__name__)

__all__ = ["SPLITS", "ImageData", "dataset_path", "load_dataset", "synthetic_spec"]


def synthetic_spec(ds_cfg: DictConfig) -> SyntheticIrisSpec:
    gen = OmegaConf.to_container(ds_cfg.generator, resolve=True)
    try:
        return SyntheticIrisSpec(
            **{k: tuple(v) if isinstance(v, list) else v for k, v in gen.items()}
        )
    except TypeError as exc:
        raise PpganError(f"dataset.generator: {exc}") from exc


def dataset_path(ds_cfg: DictConfig) -> Path:
    """The HDF5 file of a dataset config: `path`, or the cached built-in synthetic file."""
    if ds_cfg.get("path"):
        return Path(to_absolute_path(str(ds_cfg.path)))
    if ds_cfg.get("generator") is None:
        raise PpganError("dataset.path: no file given (set dataset.path=/path/to/data.h5)")
    spec = synthetic_spec(ds_cfg)
    return Path(to_absolute_path(str(ds_cfg.data_dir))) / f"synthetic_iris-{spec.fingerprint()}.h5"


def load_dataset(
    ds_cfg: DictConfig, require_splits: tuple[str, ...] = ("train", "val")
) -> ImageData:
    """Open the configured dataset; the built-in synthetic one is generated on first use."""
    path = dataset_path(ds_cfg)
    if not ds_cfg.get("path") and not path.exists():
        log.info("generating the built-in synthetic iris data set into %s", path)
        synthesize(synthetic_spec(ds_cfg), path)
    mask_path = ds_cfg.get("mask_path")
    data = load_images(
        path,
        mask_path=to_absolute_path(str(mask_path)) if mask_path else None,
        split_codes=ds_cfg.split_codes,
        remap_labels=ds_cfg.remap_labels,
        require_splits=require_splits,
        in_memory_max_gb=ds_cfg.in_memory_max_gb,
        float_range=ds_cfg.get("float_range", "auto"),
    )
    if not data.has_masks:
        log.warning(
            "%s: no ROI masks (key 'masks' or dataset.mask_path): the ROI terms and ROI metrics "
            "use the whole image, and counterfactuals are kept close to the factual image "
            "everywhere",
            path,
        )
    return data
