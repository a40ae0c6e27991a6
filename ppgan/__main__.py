"""The command line: `python -m ppgan task=<task> dataset=<name> model=<name> key=value...`."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from ppgan.config import CONF_DIR
from ppgan.engine.distributed import (
    launched_rank,
    process_group,
    shared_run_dir,
    worker_overrides,
)
from ppgan.errors import PpganError
from ppgan.pipeline import run

log = logging.getLogger("ppgan")


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def hydra_main(cfg: DictConfig) -> float | list[float] | None:
    """Run one task in its Hydra run dir; return the optimized metric(s) to sweepers."""
    try:
        hydra_cfg = HydraConfig.get()
        multirun = hydra_cfg.mode == RunMode.MULTIRUN
        with process_group(cfg.trainer, multirun) as where:
            out_dir = shared_run_dir(Path(hydra_cfg.runtime.output_dir), where)
            metrics = run(cfg, out_dir, list(hydra_cfg.overrides.task))
    except PpganError as exc:
        if cfg.get("full_error"):
            raise
        log.error("%s", exc)
        if launched_rank() == 0:  # one line, not one per torchrun rank (the others log it)
            print(f"ppgan: error: {exc}", file=sys.stderr)
        sys.exit(1)
    wanted = cfg.get("optimized_metric")
    if not wanted:
        return None
    if isinstance(wanted, str):
        return metrics.get(wanted)
    return [metrics.get(name) for name in wanted]


def main() -> None:
    """The `ppgan` console script and `python -m ppgan`. Under torchrun, ranks other than 0 get
    Hydra overrides that keep them from writing (`engine.distributed.worker_overrides`)."""
    sys.argv += worker_overrides(sys.argv[1:])
    hydra_main()


if __name__ == "__main__":
    main()
