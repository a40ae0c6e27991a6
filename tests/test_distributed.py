"""Data-parallel training on CPU with gloo: ranks split each global batch, DDP gradients equal
one process's, and `torchrun --nproc_per_node=2 -m ppgan` writes one run dir (rank 0 alone) with
the metrics of one process; a killed torchrun run resumes."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from ppgan.config import CONF_DIR
from ppgan.data import load_dataset
from ppgan.engine.distributed import (
    TORCHRUN_ENV,
    Dist,
    wanted,
    worker_overrides,
)
from ppgan.errors import PpganError
from ppgan.gan import train_stream
from ppgan.tasks import run_task
from ppgan.tasks.anonymizer import rank_objective
from tests.conftest import SMALL_GAN, judge_overrides, make_cfg
from tests.ddp_worker import WORLD, gradient_worker

# Measured on 2 CPU cores: the 2-rank identity run's metrics differ from one process's by at
# most 1e-5 (relative, test/loss: reduction order), the GAN's (2 epochs) by at most 0.09 %
# (val/roi_rec: each rank draws its own latent and penalty noise, one process one stream).
TOL_CLASSIFIER = {"rel": 1e-4, "abs": 1e-6}
TOL_GAN = {"rel": 2e-2, "abs": 1e-3}
IDENTITY = ["task=identity", "task.epochs=4", "task.patience=0", "model.dropout=0"]
GAN = ["task=anonymizer", "objective=pp_mir", *SMALL_GAN]


def test_ranks_split_each_global_batch_into_contiguous_parts():
    idx = torch.arange(7)
    parts = [Dist(rank, WORLD).part(idx) for rank in range(WORLD)]
    assert [len(p) for p in parts] == [4, 3]
    assert torch.equal(torch.cat(parts), idx)


def test_ranks_see_exactly_the_batches_of_one_process(data_dir):
    data = load_dataset(make_cfg(f"paths.data_dir={data_dir}").dataset)
    one = train_stream(data, 8, seed=0, epoch=1)
    ranks = [train_stream(data, 8, 0, 1, part=Dist(r, WORLD).part) for r in range(WORLD)]
    for _ in range(12):  # more than one pass over the 60 training images
        batch, parts = next(one), [next(stream) for stream in ranks]
        assert [len(p["index"]) for p in parts] == [4, 4]
        for key, value in batch.items():
            assert torch.equal(torch.cat([p[key] for p in parts]), value)


def test_batches_the_ranks_cannot_split_are_one_line_errors():
    four = Dist(0, 4)
    with pytest.raises(PpganError, match=r"task.batch_size=10: not divisible by the 4 ranks"):
        four.check_batch(10, 100, "task=anonymizer", drop_last=True)
    with pytest.raises(PpganError, match=r"last batch of the training split \(1 of 17\)"):
        four.check_batch(8, 17, "the training split", drop_last=False)
    four.check_batch(8, 20, "the training split", drop_last=False)  # last batch of 4: one each
    four.check_batch(8, 17, "task=anonymizer", drop_last=True)  # the last batch is dropped


def test_a_sum_reduced_roi_term_is_weighted_by_the_number_of_ranks():
    # A rank's sum covers 1/N of the global batch and DDP averages over N ranks: weight x N.
    paper = OmegaConf.create({"roi_rec_reduction": "sum", "loss": {"roi_rec": 0.002, "kl": 1.0}})
    objective, scale = rank_objective(paper, 4)
    assert (objective.loss.roi_rec, objective.loss.kl, scale) == (0.008, 1.0, 4)
    assert paper.loss.roi_rec == 0.002  # the run's config is left as it was
    mean = OmegaConf.create({"roi_rec_reduction": "mean", "loss": {"roi_rec": 5.0}})
    assert rank_objective(mean, 4) == (mean, 1)
    assert rank_objective(paper, 1) == (paper, 1)


def test_torchrun_environment_decides(monkeypatch):
    for key in TORCHRUN_ENV:
        monkeypatch.delenv(key, raising=False)
    assert not wanted("auto") and worker_overrides([]) == []
    with pytest.raises(PpganError, match="trainer.distributed=true: not launched by torchrun"):
        wanted(True)
    for key, value in zip(TORCHRUN_ENV, ("1", "0", "0")):
        monkeypatch.setenv(key, value)
    assert not wanted("auto") and wanted(True)  # one rank: joins only when asked to
    for key, value in zip(TORCHRUN_ENV, ("2", "1", "1")):
        monkeypatch.setenv(key, value)
    assert wanted("auto") and wanted(True)
    with pytest.raises(PpganError, match="trainer.distributed=false: launched by torchrun"):
        wanted(False)
    extra = worker_overrides([])
    assert extra == ["hydra.output_subdir=null", "hydra/job_logging=ppgan_worker"]
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR), job_name="test"):
        cfg = compose("config", overrides=extra, return_hydra_config=True)
    assert cfg.hydra.output_subdir is None
    assert list(cfg.hydra.job_logging.handlers) == ["console"]  # no log file
    monkeypatch.setenv("RANK", "0")
    assert worker_overrides([]) == []


def test_ddp_gradients_equal_one_process_on_the_whole_batch(tmp_path):
    run_dirs = [str(tmp_path / f"rank{r}") for r in range(WORLD)]
    mp.spawn(gradient_worker, args=(str(tmp_path / "store"), run_dirs), nprocs=WORLD)
    # Rank 1's own (empty) run dir is gone; everything goes to rank 0's.
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["rank0"]


def torchrun_cmd(*overrides: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={WORLD}",
        "-m",
        "ppgan",
        "debug=tiny",
        *overrides,
    ]


def torchrun(cwd: Path, *overrides: str) -> str:
    done = subprocess.run(
        torchrun_cmd(*overrides), cwd=cwd, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def identity_one_process(tmp_path_factory, data_dir) -> dict[str, float]:
    out = tmp_path_factory.mktemp("identity_one") / "run"
    return run_task(make_cfg(f"paths.data_dir={data_dir}", *IDENTITY), out)


def test_slurm_launcher_config_composes_one_gpu_per_job():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="the slurm extra")
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR), job_name="test"):
        cfg = compose(
            "config",
            overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu"],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (1, 1, 1)
    assert launcher.partition == "gpu"


def _kill_workers(proc: subprocess.Popen) -> None:
    """SIGKILL torchrun's workers (each runs in its own session), as a crashed node would."""
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)
    proc.communicate(timeout=120)


@pytest.mark.slow
def test_torchrun_one_run_dir_resumes_to_the_metrics_of_one_process(
    tmp_path, data_dir, identity_one_process
):
    """2 ranks, no hydra.run.dir: one run dir (rank 0's); the run is killed after its first
    checkpoint, re-run in that dir, resumes on every rank and ends with one process's metrics."""
    overrides = [*IDENTITY, f"paths.data_dir={data_dir}"]
    proc = subprocess.Popen(
        torchrun_cmd(*overrides), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 300
    while not (lasts := list(tmp_path.glob("outputs/identity/*/checkpoints/last.pt"))):
        assert proc.poll() is None, f"ended before it could be killed: {proc.stderr.read()}"
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.005)
    _kill_workers(proc)
    assert proc.returncode != 0
    # Each rank's Hydra named a run dir of its own; rank 0's is the one, the other left nothing.
    assert [p.name for p in tmp_path.iterdir()] == ["outputs"]
    (run,) = (tmp_path / "outputs" / "identity").iterdir()
    assert not (run / "metrics.json").exists(), "killed after the end, not during training"
    last = lasts[0]
    killed_at = torch.load(last, weights_only=True)["epoch"]

    out = torchrun(tmp_path, *overrides, f"hydra.run.dir={run}")
    assert f"resuming from {last} (epoch {killed_at})" in out
    # A rank that started afresh would have other optimizer state or epochs: other metrics.
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics == pytest.approx(identity_one_process, **TOL_CLASSIFIER)
    # Rank 0 alone wrote: one config record, its log lines, TensorBoard events of the two
    # launches' rank 0.
    assert sorted(p.name for p in (run / ".hydra").iterdir()) == [
        "config.yaml",
        "hydra.yaml",
        "overrides.yaml",
    ]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    (log_file,) = run.glob("*.log")
    assert log_file.read_text().count("metrics: ") == 1
    events = list((run / "tb").rglob("events.out.tfevents.*"))
    assert len({re.search(r"\.(\d+)\.\d+$", p.name).group(1) for p in events}) == 2


@pytest.mark.slow
def test_torchrun_gan_metrics_of_one_process(tmp_path, data_dir, judges):
    overrides = [*GAN, f"paths.data_dir={data_dir}", *judge_overrides(judges)]
    one = run_task(make_cfg(*overrides), tmp_path / "one")
    torchrun(tmp_path, *overrides, f"hydra.run.dir={tmp_path / 'ddp'}")
    metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert metrics.keys() == one.keys()
    assert metrics == pytest.approx(one, **TOL_GAN)
    assert len(list((tmp_path / "ddp" / "samples").iterdir())) == 2  # once per epoch
