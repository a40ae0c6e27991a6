"""Where the configs live, and composing them from inside a task (the pipeline's stages)."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

# Absolute, so both `python -m ppgan` and the installed `ppgan` console script find it.
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def compose_config(overrides: list[str]) -> DictConfig:
    """Compose the root config with `overrides`, inside a Hydra app or outside one (tests)."""
    if GlobalHydra.instance().is_initialized():
        return compose(config_name="config", overrides=overrides)
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR), job_name="stage"):
        return compose(config_name="config", overrides=overrides)
