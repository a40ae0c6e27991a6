"""The single place where config nodes become objects (`hydra.utils.instantiate`)."""

from __future__ import annotations

from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from ppgan.errors import PpganError


def build(node: DictConfig | dict, **kwargs: Any) -> Any:
    """Instantiate a `_target_` node, supplying shape-dependent arguments at build time.

    Args:
        node: a config node (or plain dict) with a `_target_`.
        **kwargs: arguments that depend on the data (`in_shape`, `n_classes`, `params`...).
    """
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as exc:
        # Hydra wraps the real cause; a bad value in a model/optimizer node is a user error.
        cause = exc.__cause__ or exc
        target = node.get("_target_", "?") if hasattr(node, "get") else "?"
        raise PpganError(f"cannot build {target}: {cause}".splitlines()[0]) from exc


def model_spec(node: DictConfig | dict, **kwargs: Any) -> dict:
    """The plain-container description of a network: its config node plus build-time arguments.

    Stored in every checkpoint so that the checkpoint alone can rebuild its network.
    """
    spec = (
        OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    )
    spec.update({k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()})
    return spec


def build_model(node: DictConfig | dict, **kwargs: Any) -> tuple[nn.Module, dict]:
    """Build a network and return it with its self-describing spec (see `model_spec`)."""
    spec = model_spec(node, **kwargs)
    return rebuild(spec), spec


def rebuild(spec: dict) -> nn.Module:
    """Rebuild a network from the spec stored in a checkpoint."""
    return build(spec)
