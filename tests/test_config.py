"""Every task and experiment config composes, and its networks build."""

from __future__ import annotations

import pytest
import torch

from ppgan.config import CONF_DIR
from ppgan.engine import build
from tests.conftest import make_cfg

TASKS = sorted(p.stem for p in (CONF_DIR / "task").glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("task", TASKS)
def test_every_task_composes(task):
    cfg = make_cfg(f"task={task}")
    assert cfg.task.name == task
    assert cfg.trainer.device == "cpu"  # debug=tiny overlay applied


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes(experiment):
    cfg = make_cfg(f"experiment={experiment}")
    assert "task" in cfg


def test_cli_model_override_beats_task_default():
    cfg = make_cfg("task=identity", "model.hidden=7")
    assert cfg.model.hidden == 7


def test_classifier_builds_from_config():
    cfg = make_cfg("task=identity")
    model = build(cfg.model, in_shape=[3, 32, 32], n_classes=5)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 5)
    opt = build(cfg.optimizer, params=model.parameters())
    assert opt.param_groups[0]["lr"] == cfg.optimizer.lr
