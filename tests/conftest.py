"""Shared fixtures: composing configs the way the CLI does, tiny data, running tasks in-process."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import h5py
import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from ppgan.config import CONF_DIR
from ppgan.pipeline import run as run_job
from ppgan.tasks import run_task


def load_experiment(name: str) -> ModuleType:
    """The script experiments/<name>.py as a module (experiments/ is not a package), registered
    in sys.modules so that its dataclasses and pickling resolve it."""
    path = Path(__file__).resolve().parents[1] / "experiments" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def make_cfg(*overrides: str) -> DictConfig:
    """Compose the root config with `debug=tiny` plus `overrides`, as `python -m ppgan` would."""
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR), job_name="test"):
        return compose(config_name="config", overrides=["debug=tiny", *overrides])


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """One cache of the tiny synthetic data set for the whole session."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture
def run(tmp_path, data_dir):
    """Run a task in-process into `tmp_path/<name>`; returns (metrics, run dir)."""

    def _run(*overrides: str, name: str = "run") -> tuple[dict, Path]:
        args = ["debug=tiny", f"paths.data_dir={data_dir}", *overrides]
        cfg = make_cfg(*args)
        out = tmp_path / name
        metrics = run_job(cfg, out, args)  # the task, or the pipeline with these user overrides
        assert json.loads((out / "metrics.json").read_text()) == pytest.approx(metrics, nan_ok=True)
        return metrics, out

    return _run


def write_h5(path: Path, **arrays) -> Path:
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            f.create_dataset(key, data=value)
    return path


@pytest.fixture
def valid_arrays() -> dict[str, np.ndarray]:
    """A small valid data set in the paper's format (3 identities, 2 classes, 32x32 RGB)."""
    rng = np.random.default_rng(0)
    n = 18
    return {
        "images": rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8),
        "id": np.repeat(np.arange(3), 6),
        "dis": np.repeat([0, 1, 0], 6),
        "set": np.tile([0, 0, 0, 0, 1, 2], 3),
        "masks": np.ones((n, 32, 32), dtype=np.uint8),
    }


@pytest.fixture(scope="session")
def judges(tmp_path_factory, data_dir) -> dict[str, Path]:
    """Tiny trained disease, identity and siamese checkpoints, shared by the GAN tests."""
    root = tmp_path_factory.mktemp("judges")
    paths = {}
    for task, extra in [
        ("disease", ["task.epochs=6"]),
        ("identity", ["task.epochs=12"]),
        ("siamese", ["task.epochs=3", "task.pairs.max_positive=300"]),
    ]:
        cfg = make_cfg(f"paths.data_dir={data_dir}", f"task={task}", *extra)
        run_task(cfg, root / task)
        paths[task] = root / task / "checkpoints" / "best.pt"
    return paths


# A GAN small enough for the tests: two epochs of small networks, one critic step per iteration.
SMALL_GAN = [
    "task.epochs=2",
    "task.selection_warmup=0",
    "objective.n_critic=1",
    "model.encoder.units=16",
    "model.decoder.units=16",
    "model.critic.channels=[8,16,16,16]",
]


def judge_overrides(judges: dict[str, Path]) -> list[str]:
    return [f"task.{name}_ckpt={path}" for name, path in judges.items()]


def pytest_addoption(parser):
    parser.addoption(
        "--pin", action="store_true", help="print new values for tests/test_pinned_losses.py"
    )
