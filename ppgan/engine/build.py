"""The single place where config nodes become objects (`hydra.utils.instantiate`), and where a
checkpoint's network spec becomes a network again (`rebuild`, allowlisted: no code is run)."""

from __future__ import annotations

import importlib
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


# A checkpoint's spec may only name a network class defined in this package. Hydra's
# `instantiate` would call *any* importable callable (`shutil.copyfile`, `os.system`...), so a
# downloaded checkpoint could run code even under `torch.load(weights_only=True)`.
MODEL_PACKAGE = "ppgan.models"


def allowed_model_class(target: Any, where: str = "checkpoint") -> type[nn.Module]:
    """The `nn.Module` subclass of `ppgan.models` that `target` names, or a `PpganError`.

    Nothing outside `ppgan.models` is imported, and nothing is called.
    """
    if not isinstance(target, str) or not target.startswith(MODEL_PACKAGE + "."):
        raise PpganError(
            f"{where}: network class {target!r} is not allowed (only classes of "
            f"{MODEL_PACKAGE} can be rebuilt from a checkpoint)"
        )
    module_name, _, class_name = target.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise PpganError(f"{where}: unknown network class {target!r}") from exc
    if not (
        isinstance(obj, type)
        and issubclass(obj, nn.Module)
        and obj.__module__.startswith(MODEL_PACKAGE + ".")
    ):
        raise PpganError(f"{where}: {target!r} is not a network class of {MODEL_PACKAGE}")
    return obj


def rebuild(spec: dict, where: str = "checkpoint") -> nn.Module:
    """Rebuild a network from the spec stored in a checkpoint (or made by `model_spec`).

    The spec is plain data: `_target_` must be an allowlisted class (`allowed_model_class`) and
    every other key a constructor argument; Hydra's special keys (`_args_`, `_partial_`, nested
    `_target_`...) are refused, and the class is called directly, not through `instantiate`.
    """
    if not isinstance(spec, dict):
        raise PpganError(f"{where}: network spec must be a mapping, got {type(spec).__name__}")
    cls = allowed_model_class(spec.get("_target_"), where)
    kwargs = {}
    for key, value in spec.items():
        if key == "_target_":
            continue
        if not isinstance(key, str) or key.startswith("_") or _has_target(value):
            raise PpganError(f"{where}: network spec key {key!r} is not a plain argument")
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError, RuntimeError, AttributeError) as exc:  # arguments of no sense
        raise PpganError(
            f"{where}: cannot build {spec['_target_']}: {exc}".splitlines()[0]
        ) from exc


def _has_target(value: Any) -> bool:
    if isinstance(value, dict):
        return any(str(k).startswith("_") or _has_target(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_has_target(v) for v in value)
    return False
