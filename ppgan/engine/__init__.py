"""Run plumbing shared by every task: building, devices, seeding, checkpoints, logging."""

from ppgan.engine.build import build, build_model, rebuild
from ppgan.engine.checkpoint import (
    frozen_from,
    load_checkpoint,
    load_frozen,
    load_frozen_parts,
    save_checkpoint,
)
from ppgan.engine.context import (
    RunContext,
    Selection,
    epoch_generator,
    fit_batch_size,
    resolve_device,
    restore,
    run_file,
    seed_everything,
    snapshot,
)

__all__ = [
    "RunContext",
    "Selection",
    "epoch_generator",
    "fit_batch_size",
    "frozen_from",
    "restore",
    "run_file",
    "snapshot",
    "build",
    "build_model",
    "load_checkpoint",
    "load_frozen",
    "load_frozen_parts",
    "rebuild",
    "resolve_device",
    "save_checkpoint",
    "seed_everything",
]
