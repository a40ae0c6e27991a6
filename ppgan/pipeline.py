"""The main job, `task=pipeline`: synthesize -> disease, identity, siamese -> PP-MIR, PP-SIR ->
export -> counterfactuals -> evaluate -> explain, every stage in a sub-directory of one run dir.

It sits above the task registry (`ppgan.tasks`), which it calls, so no task imports another.
Each stage is composed like a command line of its own: the stage's overrides, then the user's
(every `key=value` given to `python -m ppgan` reaches every stage where the key exists), then
`task.overrides.<stage>`. A stage whose `metrics.json` exists is skipped, so re-running with
`hydra.run.dir=<run dir>` after a kill continues where it stopped (a half-trained stage resumes
from its own `last.pt`).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from ppgan.config import compose_config
from ppgan.engine import RunContext, load_checkpoint
from ppgan.engine.context import LOCATION_KEYS, OUTPUT_KEYS, config_changes, training_config
from ppgan.engine.distributed import current
from ppgan.errors import PpganError
from ppgan.tasks import run_task

log = logging.getLogger(__name__)
PLACEHOLDER = re.compile(r"\{(\w+)\}")
# Config groups whose choice is the pipeline's own (each stage picks its task, model, objective)
# or an overlay of the pipeline itself; the user's choice of these does not reach the stages.
PIPELINE_GROUPS = ("task", "model", "objective", "experiment", "hparams_search")


def run(cfg: DictConfig, out_dir: Path, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """Run `cfg`: the pipeline, or one task. `overrides` are the user's command-line overrides
    (what the pipeline passes on to its stages)."""
    if cfg.task.name == "pipeline":
        if current().joined:
            raise PpganError(
                "task=pipeline: runs as one process, not under torchrun; launch its training "
                "stages (task=disease|identity|siamese|anonymizer|counterfactual) with torchrun"
            )
        return run_pipeline(cfg, Path(out_dir), list(overrides))
    return run_task(cfg, Path(out_dir))


_ABSENT = object()


def user_overrides_for(stage: DictConfig, user: list[str]) -> list[str]:
    """The user's overrides that apply to a stage: group choices (other than the pipeline's own,
    `PIPELINE_GROUPS`) and `key=value` / `~key` whose key exists in the stage's config."""
    keep = []
    for text, parsed in zip(user, OverridesParser.create().parse_overrides(user)):
        key = parsed.key_or_group
        root = key.split(".")[0].split("@")[0]
        if (
            root.startswith("hydra")
            or root == "task"
            or (root in PIPELINE_GROUPS and "." not in key)
        ):
            continue  # Hydra's own settings, the pipeline's task node and group choices
        # Group choices (dataset=hdf5, debug=tiny) always; values (seed=1, optimizer.lr=1e-3)
        # where the stage has the key.
        if "." not in key or OmegaConf.select(stage, key, default=_ABSENT) is not _ABSENT:
            keep.append(text.lstrip("+"))
    return keep


def stage_config(cfg: DictConfig, name: str, overrides: list[str], user: list[str]) -> DictConfig:
    """A stage's config: its task's defaults + the stage's overrides + the user's that apply +
    `task.overrides.<name>`."""
    extra = list(cfg.task.overrides.get(name) or [])
    base = compose_config(overrides)
    applied = user_overrides_for(base, user)
    return compose_config([*overrides, *applied, *extra])


def same_stage_config(name: str, trained: dict, now: DictConfig) -> None:
    """A finished training stage is reused only if it was trained with the config asked for now,
    budget included (`trained`: the config its checkpoint records; keys older checkpoints do not
    record are read as `LATER_KEYS` says)."""
    if changes := config_changes(trained, training_config(now), LOCATION_KEYS + OUTPUT_KEYS):
        raise PpganError(
            f"hydra.run.dir: stage '{name}' finished with another config ({changes}); "
            "re-run with the original overrides or use a new run dir"
        )


def run_pipeline(cfg: DictConfig, out_dir: Path, user: list[str]) -> dict[str, float]:
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
    if task.get("roi_masks"):
        skip.discard("roi_masks")
    else:
        skip.add("roi_masks")
    roi_masks = None  # once its stage is passed: the derived masks every later stage reads
    synthetic = cfg.dataset.get("generator") is not None and not cfg.dataset.get("path")
    if not synthetic:
        skip.add("synthesize")
    for name, overrides in task.stages.items():
        if name == "roi_masks" and name not in skip:
            roi_masks = dirs[name] / "masks.h5"
        if name in skip:
            continue
        stage_dir = dirs[name]
        resolved = []
        for item in overrides:
            refs = PLACEHOLDER.findall(item)
            if any(ref in skip for ref in refs):
                continue  # an input of a skipped stage (e.g. PP-SIR's checkpoint): leave it out
            resolved.append(PLACEHOLDER.sub(lambda m: str(dirs[m.group(1)]), item))
        sub = stage_config(cfg, name, resolved, user)
        if synthetic and name != "synthesize":
            sub.dataset.path = str(dirs["synthesize"] / "synthetic_iris.h5")
        if roi_masks is not None and name != "roi_masks":
            sub.dataset.mask_path = str(roi_masks)
        saved = stage_dir / ".hydra" / "config.yaml"
        if (stage_dir / "metrics.json").exists():
            last = stage_dir / "checkpoints" / "last.pt"
            if stage_dir.is_relative_to(out_dir) and last.exists():  # a training stage of ours
                same_stage_config(name, load_checkpoint(last).get("train_config") or {}, sub)
            log.info("stage %s: done, skipped (%s)", name, stage_dir)
            continue
        log.info("stage %s: task=%s -> %s", name, sub.task.name, stage_dir)
        # What Hydra writes for a run of its own: the stage's composed config, for the record
        # (and for the check above when the pipeline is re-run in this run dir).
        saved.parent.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(sub, saved)
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
