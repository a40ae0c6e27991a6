"""Self-describing checkpoints: written atomically, read with `weights_only=True`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ppgan.engine.build import allowed_model_class, rebuild
from ppgan.errors import PpganError


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write `payload` (plain containers and tensors only) to `path` via temp file + rename.

    A run killed mid-write leaves the previous checkpoint intact.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, key: str = "checkpoint") -> dict[str, Any]:
    """Read a checkpoint safely; a missing or unreadable file is a user error naming `key`."""
    path = Path(path)
    if not path.is_file():
        raise PpganError(
            f"{key}: checkpoint {path} does not exist (train it first or fix the path)"
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt / foreign files
        raise PpganError(f"{key}: cannot read checkpoint {path}: {exc}".splitlines()[0]) from exc
    if not isinstance(ckpt, dict):
        raise PpganError(f"{key}: {path} is not a ppgan checkpoint (a {type(ckpt).__name__})")
    return ckpt


def load_frozen(
    path: str | Path,
    device: torch.device | str = "cpu",
    key: str = "checkpoint",
    expect: dict[str, Any] | None = None,
    which: str = "model",
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a trained network from its checkpoint, frozen (eval mode, no gradients).

    Args:
        path: checkpoint written by a ppgan training task.
        device: where to put the network.
        key: config key the path came from, named in error messages.
        expect: spec entries the network must match (e.g. `in_shape`, `n_classes`), so that a
            network trained on other data fails with a clear message instead of a shape error.
        which: which network of the checkpoint (`model`, `encoder`, ...).

    Returns:
        The frozen network and the full checkpoint dict.
    """
    ckpt = load_checkpoint(path, key)
    return frozen_from(ckpt, which, device, f"{key}: {path}", expect), ckpt


def frozen_from(
    ckpt: dict[str, Any],
    which: str,
    device: torch.device | str = "cpu",
    where: str = "checkpoint",
    expect: dict[str, Any] | None = None,
) -> nn.Module:
    """Rebuild network `which` of a loaded checkpoint, frozen; see `load_frozen`."""
    net = network_from(ckpt, which, where, expect)
    net.to(device).eval().requires_grad_(False)
    return net


def network_from(
    ckpt: dict[str, Any],
    which: str,
    where: str = "checkpoint",
    expect: dict[str, Any] | None = None,
) -> nn.Module:
    """Rebuild network `which` of a loaded checkpoint with its weights (on the CPU, trainable):
    its class allowlisted, its spec checked against `expect`, every mismatch a `PpganError`."""
    if f"{which}_spec" not in ckpt or which not in ckpt:
        raise PpganError(f"{where} holds no network '{which}' (keys: {sorted(map(str, ckpt))})")
    spec = ckpt[f"{which}_spec"]
    if not isinstance(spec, dict):
        raise PpganError(f"{where}: network '{which}' has no valid spec")
    allowed_model_class(spec.get("_target_"), where)  # a foreign class: refused before all else
    for name, want in (expect or {}).items():
        have = spec.get(name)
        if isinstance(want, tuple):
            want = list(want)
        if have != want:
            raise PpganError(
                f"{where} was trained with {name}={have}, but this data needs {name}={want}"
            )
    net = rebuild(spec, where)
    try:
        net.load_state_dict(ckpt[which])
    except (RuntimeError, KeyError, TypeError, AttributeError) as exc:  # weights not of the spec
        raise PpganError(
            f"{where}: weights of '{which}' do not fit its spec: {exc}".splitlines()[0]
        ) from exc
    return net


def load_frozen_parts(
    path: str | Path | None,
    parts: tuple[str, ...],
    in_shape: list[int],
    device: torch.device | str = "cpu",
    key: str = "checkpoint",
) -> tuple[list[nn.Module], dict[str, Any]]:
    """Several frozen networks of one checkpoint (e.g. a generator's encoder and decoder), each
    checked against the data's image shape; an empty `path` is a user error naming `key`.

    Returns:
        The networks in the order of `parts`, and the full checkpoint dict.
    """
    if not path:
        raise PpganError(f"{key}: required (a checkpoint path, e.g. <run dir>/checkpoints/best.pt)")
    ckpt = load_checkpoint(path, key)
    expect = {"in_shape": list(in_shape)}
    nets = [frozen_from(ckpt, name, device, f"{key}: {path}", expect) for name in parts]
    return nets, ckpt
