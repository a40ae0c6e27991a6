"""The main job, `task=pipeline`: synthesize -> disease, identity, siamese -> PP-MIR, PP-SIR ->
export -> counterfactuals -> evaluate -> explain, every stage in a sub-directory of one run dir.

It sits above the task registry (`ppgan.tasks`), which it calls, so no task imports another.
Each stage is composed like a command line of its own: the stage's overrides, then the user's
(every `key=value` given to `python -m ppgan` reaches every stage where the key exists), then
`task.overrides.<stage>`. A stage whose `metrics.json` exists is skipped, so re-running with
`hydra.run.dir=<run dir>` after a kill continues where it stopped (a half-trained stage resumes
from its own `last.pt`); it is refused instead (one-line error, nothing touched) when it is not
the stage asked for now: trained with another config (its checkpoint's), run with other `task`
settings (its saved config; a null release temperature read as its checkpoint's), or older than
an input stage this call had to make again.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from ppgan.baselines import release_temperature
from ppgan.config import compose_config
from ppgan.engine import RunContext, load_checkpoint
from ppgan.engine.context import (
    LOCATION_KEYS,
    OUTPUT_KEYS,
    config_changes,
    flatten_groups,
    training_config,
)
from ppgan.engine.distributed import current
from ppgan.errors import PpganError
from ppgan.tasks import run_task

log = logging.getLogger(__name__)
PLACEHOLDER = re.compile(r"\{(\w+)\}")
# A stage override that is one pipeline setting, `key=${task.temperature}`.
SETTING = re.compile(r"^(\+?[\w.@/]+)=\$\{([\w.]+)\}$")
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


def stage_overrides(cfg: DictConfig, name: str) -> list[str]:
    """The overrides of stage `name`, interpolations resolved (`{stage}` placeholders left in).
    A pipeline setting left null (`task.temperature: null`) is passed as Hydra's `null`: string
    interpolation would write it as the string 'None'."""
    items = cfg.task.stages[name]
    raw = OmegaConf.to_container(items, resolve=False)
    return [
        f"{m.group(1)}=null"
        if (m := SETTING.match(text)) and OmegaConf.select(cfg, m.group(2)) is None
        else item
        for text, item in zip(raw, items)
    ]


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


def effective_task(cfg: DictConfig, recorded: dict[str, float]) -> dict[str, Any]:
    """A stage's `task` settings and seed, flattened, with each null release temperature read as
    the one its checkpoint records (`ppgan.baselines.release_temperature`): what it released at.
    `recorded` caches those by checkpoint path (each checkpoint is read once)."""
    flat = flatten_groups(cfg, ("task",))
    for key, value in list(flat.items()):
        if not key.endswith(".temperature"):
            continue
        sibling = key.removesuffix("temperature") + "checkpoint"
        ckpt = flat.get(sibling)
        if sibling in flat and not ckpt:
            flat[key] = None  # a method without a checkpoint is skipped: it releases nothing
        elif value is None and ckpt and Path(ckpt).is_file():
            if ckpt not in recorded:
                recorded[ckpt] = release_temperature(None, load_checkpoint(ckpt), key)
            flat[key] = recorded[ckpt]
    return flat


def same_task_settings(name: str, stage_dir: Path, saved: DictConfig, now: DictConfig) -> None:
    """A finished stage that trains nothing (export, evaluate, explain) is reused only if it ran
    with the `task` settings (and seed) asked for now, e.g. the release temperature or the
    methods evaluated. A key one side lacks (another ppgan version's) reads as null there."""
    recorded: dict[str, float] = {}
    before, after = effective_task(saved, recorded), effective_task(now, recorded)
    keys = before.keys() | after.keys()
    before, after = ({k: flat.get(k) for k in keys} for flat in (before, after))
    if changes := config_changes(before, after, ()):
        raise PpganError(
            f"hydra.run.dir: stage '{name}' finished with other settings ({changes}); "
            f"re-run with the original overrides, remove {stage_dir} to redo it, or use a new "
            "run dir"
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
    made: set[str] = set()  # the stages this call runs: a finished stage after them is stale
    for name in task.stages:
        if name == "roi_masks" and name not in skip:
            roi_masks = dirs[name] / "masks.h5"
        if name in skip:
            continue
        stage_dir = dirs[name]
        resolved, inputs = [], set()
        for item in stage_overrides(cfg, name):
            refs = PLACEHOLDER.findall(item)
            if any(ref in skip for ref in refs):
                continue  # an input of a skipped stage (e.g. PP-SIR's checkpoint): leave it out
            inputs.update(refs)
            resolved.append(PLACEHOLDER.sub(lambda m: str(dirs[m.group(1)]), item))
        sub = stage_config(cfg, name, resolved, user)
        if synthetic and name != "synthesize":
            sub.dataset.path = str(dirs["synthesize"] / "synthetic_iris.h5")
            inputs.add("synthesize")
        if roi_masks is not None and name != "roi_masks":
            sub.dataset.mask_path = str(roi_masks)
            inputs.add("roi_masks")
        saved = stage_dir / ".hydra" / "config.yaml"
        if (stage_dir / "metrics.json").exists():
            if remade := sorted(inputs & made):
                raise PpganError(
                    f"hydra.run.dir: stage '{name}' finished before its input {remade} was made "
                    f"again; remove {stage_dir} to redo it, or use a new run dir"
                )
            last = stage_dir / "checkpoints" / "last.pt"
            if stage_dir.is_relative_to(out_dir) and last.exists():  # a training stage of ours
                same_stage_config(name, load_checkpoint(last).get("train_config") or {}, sub)
            elif stage_dir.is_relative_to(out_dir) and saved.exists():  # export, evaluate, ...
                same_task_settings(name, stage_dir, OmegaConf.load(saved), sub)
            log.info("stage %s: done, skipped (%s)", name, stage_dir)
            continue
        log.info("stage %s: task=%s -> %s", name, sub.task.name, stage_dir)
        # What Hydra writes for a run of its own: the stage's composed config, for the record
        # (and for the check above when the pipeline is re-run in this run dir).
        saved.parent.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(sub, saved)
        run_task(sub, stage_dir)
        made.add(name)
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
