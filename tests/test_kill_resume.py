"""A training run killed by SIGKILL and re-run in the same run dir ends with the same metrics as
an uninterrupted run: one test per training loop (classifier, siamese, GAN, counterfactual)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ppgan.tasks import run_task
from tests.conftest import judge_overrides, make_cfg

pytestmark = pytest.mark.slow

GAN = [
    "task=anonymizer",
    "objective=pp_mir",
    "task.selection_warmup=0",
    "objective.n_critic=1",
    "model.encoder.units=16",
    "model.decoder.units=16",
    "model.critic.channels=[8,16,16,16]",
]


def kill_and_resume(run_dir: Path, overrides: list[str], data_dir: Path) -> dict[str, float]:
    """Start `python -m ppgan` into `run_dir`, SIGKILL it as soon as its first `last.pt` exists,
    re-run the same command, and return the re-run's metrics."""
    cmd = [
        sys.executable,
        "-m",
        "ppgan",
        "debug=tiny",
        f"paths.data_dir={data_dir}",
        *overrides,
        f"hydra.run.dir={run_dir}",
    ]
    last = run_dir / "checkpoints" / "last.pt"
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not last.exists():
        if proc.poll() is not None:
            pytest.fail(f"the run ended before it could be killed: {proc.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("no checkpoint within 300 s")
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert not (run_dir / "metrics.json").exists(), "killed after the end, not during training"
    killed_at = torch.load(last, weights_only=True)["epoch"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"resuming from {last} (epoch {killed_at})" in done.stderr + done.stdout
    return json.loads((run_dir / "metrics.json").read_text())


def uninterrupted(run_dir: Path, overrides: list[str], data_dir: Path) -> dict[str, float]:
    return run_task(make_cfg(f"paths.data_dir={data_dir}", *overrides), run_dir)


def check(tmp_path: Path, overrides: list[str], data_dir: Path) -> None:
    full = uninterrupted(tmp_path / "full", overrides, data_dir)
    resumed = kill_and_resume(tmp_path / "killed", overrides, data_dir)
    assert resumed.keys() == full.keys()
    assert resumed == pytest.approx(full, rel=1e-5, abs=1e-6, nan_ok=True)


def test_classifier_killed_resumes_to_the_same_metrics(tmp_path, data_dir):
    check(tmp_path, ["task=identity", "task.epochs=5", "task.patience=0"], data_dir)


def test_siamese_killed_resumes_to_the_same_metrics(tmp_path, data_dir):
    check(tmp_path, ["task=siamese", "task.epochs=3", "task.pairs.max_positive=60"], data_dir)


def test_gan_killed_resumes_to_the_same_metrics(tmp_path, data_dir, judges):
    check(tmp_path, [*GAN, "task.epochs=5", *judge_overrides(judges)], data_dir)


def test_counterfactual_killed_resumes_to_the_same_metrics(tmp_path, data_dir, judges):
    gan = uninterrupted(
        tmp_path / "gan", [*GAN, "task.epochs=1", *judge_overrides(judges)], data_dir
    )
    assert gan
    overrides = [
        "task=counterfactual",
        f"task.checkpoint={tmp_path / 'gan' / 'checkpoints' / 'best.pt'}",
        "task.epochs=5",
        "objective.n_critic=1",
        "task.selection_warmup=0",
        *judge_overrides(judges),
    ]
    check(tmp_path, overrides, data_dir)
