"""Where the configs live, and composing them from inside a task (the pipeline's stages)."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig


def _find_conf_dir() -> Path:
    """`ppgan/conf` in an installed wheel, `conf/` beside the package in a checkout.

    Absolute, so both `python -m ppgan` and the installed `ppgan` console script find it.
    """
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise RuntimeError(f"ppgan's configs are missing: no conf/config.yaml in or beside {here}")


CONF_DIR = _find_conf_dir()


def compose_config(overrides: list[str]) -> DictConfig:
    """Compose the root config with `overrides`, inside a Hydra app or outside one (tests)."""
    if GlobalHydra.instance().is_initialized():
        return compose(config_name="config", overrides=overrides)
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR), job_name="stage"):
        return compose(config_name="config", overrides=overrides)
