"""Task `pipeline`, the main job: synthesize -> disease, identity, siamese -> PP-MIR, PP-SIR ->
anonymize -> evaluate -> report, every stage in a sub-directory of one run dir.

A stage whose `metrics.json` exists is skipped, so re-running with `hydra.run.dir=<run dir>` after a
kill continues where it stopped (a half-trained stage resumes from its own `last.pt`).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ppgan.config import compose_config
from ppgan.engine import RunContext
from ppgan.errors import PpganError

log = logging.getLogger(__name__)
PLACEHOLDER = re.compile(r"\{(\w+)\}")


def stage_config(cfg: DictConfig, name: str, overrides: list[str]) -> DictConfig:
    """A stage's config: its task's defaults + overrides, with the pipeline's data and devices."""
    task = cfg.task
    extra = list(task.overrides.get(name) or [])
    profile = [f"debug={cfg.debug_profile}"] if cfg.get("debug_profile") else []
    sub = compose_config([*profile, *overrides, *extra])
    for key in ("dataset", "trainer", "paths", "seed", "full_error"):
        OmegaConf.update(sub, key, cfg[key], merge=False, force_add=True)
    if name in task.gan_stages and task.gan:  # sweeps tune the generators through task.gan
        sub.model = OmegaConf.merge(sub.model, task.gan)
    return sub


def run(cfg: DictConfig, out_dir: Path) -> dict[str, float]:
    from ppgan.tasks import run_task  # the registry imports this module

    ctx = RunContext(cfg, out_dir)
    task = cfg.task
    skip = set(task.skip)
    if unknown := skip - set(task.stages):
        raise PpganError(f"task.skip: unknown stages {sorted(unknown)} (have {list(task.stages)})")
    dirs = {name: out_dir / name for name in task.stages}
    if task.judges_from:  # reuse another pipeline run's data and trained judges
        for name in ("synthesize", "disease", "identity", "siamese"):
            dirs[name] = Path(task.judges_from) / name
            if not (dirs[name] / "metrics.json").exists():
                raise PpganError(f"task.judges_from: {dirs[name]} has no finished '{name}' stage")
    synthetic = cfg.dataset.get("generator") is not None and not cfg.dataset.get("path")
    if not synthetic:
        skip.add("synthesize")
    for name, overrides in task.stages.items():
        if name in skip:
            continue
        stage_dir = dirs[name]
        if (stage_dir / "metrics.json").exists():
            log.info("stage %s: done, skipped (%s)", name, stage_dir)
            continue
        resolved = []
        for item in overrides:
            refs = PLACEHOLDER.findall(item)
            if any(ref in skip for ref in refs):
                continue  # an input of a skipped stage (e.g. PP-SIR's checkpoint): leave it out
            resolved.append(PLACEHOLDER.sub(lambda m: str(dirs[m.group(1)]), item))
        sub = stage_config(cfg, name, resolved)
        if synthetic and name != "synthesize":
            sub.dataset.path = str(dirs["synthesize"] / "synthetic_iris.h5")
        log.info("stage %s: task=%s -> %s", name, sub.task.name, stage_dir)
        run_task(sub, stage_dir)
    # The pipeline's metrics (for metrics.json and sweeps) are those of one stage, the evaluation.
    final = dirs.get(task.metrics_from)
    if final is None or not (final / "metrics.json").exists():
        raise PpganError(f"task.metrics_from={task.metrics_from}: that stage did not run")
    metrics = json.loads((final / "metrics.json").read_text())
    report = dirs["evaluate"] / "report.md"
    if report.exists():
        log.info("report: %s", report)
        print(f"ppgan: report written to {report}")
    return ctx.finish(metrics)
