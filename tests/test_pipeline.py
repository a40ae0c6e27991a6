"""The main job (task=pipeline) and the Optuna privacy-utility sweep."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from ppgan.errors import PpganError


def test_pipeline_runs_every_stage_and_resumes(run):
    # A pipeline-level override reaches every stage whose config has the key.
    metrics, out = run("task=pipeline", "optimizer.lr=0.00123", name="pipe")
    stages = [
        "synthesize",
        "disease",
        "identity",
        "siamese",
        "pp_mir",
        "pp_rid",
        "export_pp_mir",
        "export_pp_rid",
        "cf_pp_rid",
        "evaluate",
        "explain",
    ]
    for stage in stages:
        assert (out / stage / "metrics.json").exists(), stage
    for stage in ("pp_sir", "export_pp_sir", "cf_pp_sir", "cf_pp_mir"):  # skipped by default
        assert not (out / stage).exists(), stage
    for stage in ("disease", "identity", "siamese", "pp_mir", "pp_rid", "cf_pp_rid"):
        cfg = OmegaConf.load(out / stage / ".hydra" / "config.yaml")
        assert cfg.optimizer.lr == 0.00123, stage
        if stage.startswith(("pp_", "cf_")):
            assert cfg.critic_optimizer.lr == 0.00123, stage
        ckpt = torch.load(out / stage / "checkpoints" / "last.pt", weights_only=True)
        assert ckpt["train_config"]["optimizer.lr"] == 0.00123, stage  # what training used
    report = (out / "evaluate" / "report.md").read_text()
    for row in ("original", "blur", "pixelate", "ksame", "pp_mir", "pp_rid", "pp_rid_cf"):
        assert f"| {row} |" in report
    assert "pp_rid/privacy_score" in metrics and (out / "metrics.json").exists()
    assert len(list((out / "explain" / "panels").glob("*.png"))) == 4
    # Every stage is done: a re-run changes nothing and gives the same metrics.
    stamps = {s: (out / s / "metrics.json").stat().st_mtime for s in stages}
    again, _ = run("task=pipeline", "optimizer.lr=0.00123", name="pipe")
    assert again == metrics
    assert stamps == {s: (out / s / "metrics.json").stat().st_mtime for s in stages}
    # ... and a re-run with another training config refuses to mix it with the finished stages.
    with pytest.raises(PpganError, match="stage 'disease' finished with another config"):
        run("task=pipeline", "optimizer.lr=0.002", name="pipe")
    # A stage that trains nothing is checked too: another release temperature is another export
    # (the finished one's null read as its checkpoint's 0.5).
    changed = r"stage 'export_pp_rid' finished with other settings \(task.temperature: 0.5 -> 0.25"
    with pytest.raises(PpganError, match=changed):
        run("task=pipeline", "optimizer.lr=0.00123", "task.rid_temperature=0.25", name="pipe")
    assert stamps == {s: (out / s / "metrics.json").stat().st_mtime for s in stages}
    # So does another budget (not part of a checkpoint's config: a run dir alone may extend).
    with pytest.raises(PpganError, match=r"stage 'pp_mir' .*task\.patience: 0 -> 1"):
        run(
            "task=pipeline",
            "optimizer.lr=0.00123",
            '+task.overrides.pp_mir=["task.patience=1"]',
            name="pipe",
        )
    # A stage made again (its dir removed) leaves the finished stages that read it stale: refused.
    shutil.rmtree(out / "export_pp_rid")
    stale = r"stage 'evaluate' finished before its input \['export_pp_rid'\] was made again"
    with pytest.raises(PpganError, match=stale):
        run("task=pipeline", "optimizer.lr=0.00123", name="pipe")
    assert (out / "export_pp_rid" / "metrics.json").exists()


def test_pipeline_skips_stages_and_their_inputs(run):
    skip = "[pp_sir,export_pp_sir,cf_pp_sir,pp_rid,export_pp_rid,cf_pp_rid,cf_pp_mir,explain]"
    metrics, out = run("task=pipeline", f"task.skip={skip}", name="partial")
    assert not (out / "pp_rid").exists()
    assert "pp_mir/privacy_score" in metrics and "pp_rid/privacy_score" not in metrics


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is None,
    reason="needs the optuna extra: pip install -e '.[optuna]'",
)
def test_optuna_privacy_utility_sweep(tmp_path, data_dir):
    sweep = tmp_path / "sweep"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "ppgan",
            "hparams_search=privacy_utility",
            "debug=tiny",
            f"paths.data_dir={data_dir}",
            "hydra.sweeper.n_trials=2",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    jobs = sorted(p for p in sweep.iterdir() if p.name.isdigit())
    assert len(jobs) == 2
    for job in jobs:
        m = json.loads((job / "metrics.json").read_text())
        assert 0 <= m["pp_mir/privacy_score"] <= 1 and 0 <= m["pp_mir/utility_score"] <= 1
        assert "**val split.**" in (job / "evaluate" / "report.md").read_text()
    assert (sweep / "optimization_results.yaml").exists()
    out = subprocess.run(
        [sys.executable, "experiments/pareto.py", str(sweep)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=str(__import__("pathlib").Path(__file__).parents[1]),
    )
    assert out.returncode == 0, out.stderr
    assert (sweep / "pareto.md").exists() and (sweep / "pareto.png").exists()


def composed_stage(cfg, name: str, user: list[str] | None = None):
    """Stage `name` of a pipeline config as the pipeline composes it (stage dirs under /runs)."""
    from ppgan.pipeline import PLACEHOLDER, stage_config, stage_overrides

    overrides = [PLACEHOLDER.sub(r"/runs/\1", o) for o in stage_overrides(cfg, name)]
    return stage_config(cfg, name, overrides, user or ["debug=tiny"])


def test_sweep_objectives_come_from_the_validation_split():
    """The privacy-utility sweep tunes on val; the pipeline's own final table is on test."""
    from tests.conftest import make_cfg

    sweep = make_cfg("hparams_search=privacy_utility")
    assert composed_stage(sweep, "evaluate").task.split == "val"
    assert composed_stage(make_cfg("task=pipeline"), "evaluate").task.split == "test"
    assert sweep.optimized_metric == ["pp_mir/privacy_score", "pp_mir/utility_score"]


def test_the_long_schedule_reaches_only_pp_rids_stage():
    """README's command for larger images: PP-RID's stage alone trains objective=pp_rid_long."""
    from tests.conftest import make_cfg

    extra = '+task.overrides.pp_rid=["objective=pp_rid_long","trainer.amp=true"]'
    cfg = make_cfg("task=pipeline", "dataset=synthetic_per_image", extra)
    user = ["debug=tiny", "dataset=synthetic_per_image", extra]

    def stage(name):
        return composed_stage(cfg, name, user)

    rid = stage("pp_rid")
    assert (rid.task.select, rid.task.patience, rid.objective.variant) == ("last", 0, "rid")
    assert rid.objective.schedule.epochs == 100 and rid.trainer.amp
    assert rid.dataset.generator.n_disease_classes == 3  # the user's dataset reaches it too
    mir = stage("pp_mir")
    assert mir.task.select == "best" and not mir.trainer.amp


def test_the_release_temperature_reaches_export_and_evaluation_alike():
    """`task.temperature` (PP-MIR, PP-SIR) and `task.rid_temperature` (PP-RID) of the pipeline:
    what each generator ships is what the report scores."""
    from hydra.utils import instantiate

    from tests.conftest import make_cfg

    stage = composed_stage
    # The defaults: PP-RID released at 0.5 with its weight average, PP-MIR at the posterior mean,
    # each recorded by its training; export and evaluation read it from the checkpoint (null).
    cfg = make_cfg("task=pipeline")
    rid, mir = stage(cfg, "pp_rid").objective, stage(cfg, "pp_mir").objective
    assert (rid.ema_half_life, rid.release_temperature) == (2.0, 0.5)
    assert (mir.ema_half_life, mir.release_temperature) == (0.0, 0.0)
    # The 128 px preset keeps the trained generator at t = 0, as measured (not chosen with them).
    long = make_cfg("task=anonymizer", "model=rid_gan", "objective=pp_rid_long")
    assert (long.objective.ema_half_life, long.objective.release_temperature) == (0.0, 0.0)
    for m in ("pp_mir", "pp_sir", "pp_rid"):
        assert stage(cfg, f"export_{m}").task.temperature is None
        assert instantiate(stage(cfg, "evaluate").task.methods[m]).temperature is None
    for t, rid_t in ((0.0, 0.25), (0.25, 0.0)):
        cfg = make_cfg("task=pipeline", f"task.temperature={t}", f"task.rid_temperature={rid_t}")
        for m, want in (("pp_mir", t), ("pp_rid", rid_t)):
            assert stage(cfg, f"export_{m}").task.temperature == want
            method = stage(cfg, "evaluate").task.methods[m]
            assert instantiate(method).temperature == want


def test_finished_stages_are_compared_by_what_they_released(tmp_path):
    """A finished export/evaluation is reused only with the same task settings, a null release
    temperature read as its checkpoint's: a stage saved by an older ppgan with the value spelled
    out is the same stage, another value or another set of methods is not."""
    from ppgan.pipeline import same_task_settings

    rid, old = tmp_path / "rid.pt", tmp_path / "old.pt"
    torch.save({"release_temperature": 0.5}, rid)
    torch.save({}, old)  # from before checkpoints recorded it: t = 0

    def cfg(checkpoint, temperature, **methods):
        task = {"name": "export", "checkpoint": str(checkpoint), "temperature": temperature}
        return OmegaConf.create({"seed": 0, "task": task | methods})

    stage = tmp_path / "export_pp_rid"
    for saved, now in (
        (cfg(rid, 0.5), cfg(rid, None)),
        (cfg(rid, None), cfg(rid, 0.5)),
        (cfg(old, 0.0), cfg(old, None)),
        (cfg(rid, None, methods={"a": 1}), cfg(rid, None, methods={"a": 1})),
        # a method without a checkpoint (skipped) releases nothing, whatever its temperature
        (cfg(rid, None, pp_sir={"checkpoint": None, "temperature": 0.0}), cfg(rid, None)),
    ):
        same_task_settings("export_pp_rid", stage, saved, now)  # the same release
    for saved, now, change in (
        (cfg(old, 0.5), cfg(old, None), "task.temperature: 0.5 -> 0.0"),
        (cfg(rid, None), cfg(rid, 0.25), "task.temperature: 0.5 -> 0.25"),
        (cfg(rid, None), cfg(rid, None, methods={"a": 1}), "task.methods.a: None -> 1"),
    ):
        with pytest.raises(PpganError, match=rf"finished with other settings \({change}\).*"):
            same_task_settings("export_pp_rid", stage, saved, now)


def test_pipeline_on_the_per_image_gray_three_class_shape_without_masks(run):
    """The second data shape (1 channel, 3 classes, disease per image) without masks, tiny:
    every stage of the default pipeline runs; report and panels are written, metrics finite."""
    from tests.conftest import make_cfg

    metrics, out = run(
        "task=pipeline",
        "dataset=synthetic_per_image",
        "dataset.generator.masks=false",
        name="per_image",
    )
    with h5py.File(out / "synthesize" / "synthetic_iris.h5", "r") as f:
        assert "masks" not in f and f["images"].shape[1:] == (32, 32)
        dis, ids = f["dis"][()], f["id"][()]
    assert len(np.unique(dis)) == 3 and all(len(np.unique(dis[ids == i])) == 3 for i in range(6))
    pipeline = make_cfg("task=pipeline").task
    for stage in set(pipeline.stages) - set(pipeline.skip) - {"roi_masks"}:
        assert (out / stage / "metrics.json").exists(), stage
    assert not (out / "roi_masks").exists()  # task.roi_masks=false: no stage, no mask_path
    report = (out / "evaluate" / "report.md").read_text()
    assert "no ROI masks" in report and "## Adaptive attackers" in report
    # Disease independent of identity: `chance | disease` is plain chance.
    assert metrics["chance/identity_disease"] == pytest.approx(metrics["chance/identity"])
    methods = [k.split("/")[0] for k in metrics if k.endswith("/privacy_score")]
    assert "original" in methods and len(methods) >= 5
    for method in methods:
        for key in ("privacy_score", "utility_score", "privacy/adaptive_acc"):
            assert np.isfinite(metrics[f"{method}/{key}"]), (method, key)
    flips = [v for k, v in metrics.items() if k.endswith("_cf/cf/indep_flip_rate")]
    assert flips and all(0 <= v <= 1 for v in flips)  # counterfactuals with 3 classes
    assert len(list((out / "explain" / "panels").glob("*.png"))) == 4


def test_pipeline_roi_masks_reach_every_stage_that_reads_masks(run):
    """task.roi_masks=true: the masks derived from the disease network are what PP-RID trains
    with and what its export reads."""
    from tests.conftest import make_cfg

    keep = {"synthesize", "disease", "roi_masks", "identity", "siamese", "pp_rid", "export_pp_rid"}
    stages = make_cfg("task=pipeline").task.stages
    skip = ",".join(sorted(set(stages) - keep))
    _, out = run(
        "task=pipeline",
        "dataset=synthetic_per_image",
        "dataset.generator.masks=false",
        "task.roi_masks=true",
        f"task.skip=[{skip}]",
        "task.metrics_from=export_pp_rid",
        name="roi",
    )
    masks = out / "roi_masks" / "masks.h5"
    with h5py.File(masks, "r") as f:
        assert f["masks"].shape[1:] == (32, 32)
    for stage in ("pp_rid", "export_pp_rid"):
        saved = OmegaConf.load(out / stage / ".hydra" / "config.yaml")
        assert saved.dataset.mask_path == str(masks), stage
    assert OmegaConf.load(out / "identity" / ".hydra" / "config.yaml").dataset.mask_path is None
