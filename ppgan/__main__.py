"""The command line: `python -m ppgan task=<task> dataset=<name> model=<name> key=value...`."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from ppgan.config import CONF_DIR
from ppgan.errors import PpganError
from ppgan.pipeline import run

log = logging.getLogger("ppgan")


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> float | list[float] | None:
    """Run one task in its Hydra run dir; return the optimized metric(s) to sweepers."""
    try:
        hydra_cfg = HydraConfig.get()
        metrics = run(cfg, Path(hydra_cfg.runtime.output_dir), list(hydra_cfg.overrides.task))
    except PpganError as exc:
        if cfg.get("full_error"):
            raise
        log.error("%s", exc)
        print(f"ppgan: error: {exc}", file=sys.stderr)
        sys.exit(1)
    wanted = cfg.get("optimized_metric")
    if not wanted:
        return None
    if isinstance(wanted, str):
        return metrics.get(wanted)
    return [metrics.get(name) for name in wanted]


if __name__ == "__main__":
    main()
