"""One module per loop; `RUNNERS` maps `task.name` to `run(cfg, out_dir) -> metrics`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig

from ppgan.engine.distributed import current
from ppgan.errors import PpganError
from ppgan.tasks import (
    anonymizer,
    classify,
    counterfactual,
    evaluate,
    explain,
    export,
    prepare,
    roi_masks,
    siamese,
    synthesize,
)

Runner = Callable[[DictConfig, Path], dict[str, float]]

RUNNERS: dict[str, Runner] = {
    "synthesize": synthesize.run,
    "prepare": prepare.run,
    "disease": classify.run,
    "identity": classify.run,
    "siamese": siamese.run,
    "anonymizer": anonymizer.run,
    "export": export.run,
    "counterfactual": counterfactual.run,
    "evaluate": evaluate.run,
    "explain": explain.run,
    "roi_masks": roi_masks.run,
}


# The loops that train data-parallel under torchrun (ppgan.engine.distributed); the other tasks
# run as one process.
DISTRIBUTED = ("disease", "identity", "siamese", "anonymizer", "counterfactual")


def run_task(cfg: DictConfig, out_dir: Path) -> dict[str, float]:
    """Dispatch to the loop that `cfg.task.name` selects."""
    name = cfg.task.name
    if name not in RUNNERS:
        known = sorted([*RUNNERS, "pipeline"])
        raise PpganError(f"task.name={name}: unknown task (choose from {known})")
    if current().joined and name not in DISTRIBUTED:
        raise PpganError(
            f"task={name}: runs as one process, not under torchrun (data-parallel tasks: "
            f"{', '.join(DISTRIBUTED)}); under the pipeline, launch each training stage with "
            "torchrun on its own"
        )
    return RUNNERS[name](cfg, Path(out_dir))
