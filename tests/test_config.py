"""Every task and experiment config composes, and its networks build."""

from __future__ import annotations

import pytest
import torch

from ppgan.config import CONF_DIR
from ppgan.engine import build, build_model
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


@pytest.mark.parametrize("experiment, identity", [("paper_pp_mir", 1.0), ("paper_pp_sir", 10.0)])
def test_paper_presets_build_the_papers_networks_and_weights(experiment, identity):
    # README "Deviations": the paper's loss weights and its critic dropout of 0.5, which the
    # default objectives change.
    cfg = make_cfg(f"experiment={experiment}")
    loss = cfg.objective.loss
    assert (loss.adv, loss.disease, loss.identity) == (0.4, 0.001, identity)
    shape = [3, 64, 64]
    enc, _ = build_model(cfg.model.encoder, in_shape=shape)
    dec, _ = build_model(cfg.model.decoder, in_shape=shape)
    critic, _ = build_model(cfg.model.critic, in_shape=shape)
    assert {m.p for m in critic.modules() if isinstance(m, torch.nn.Dropout)} == {0.5}
    default_critic, _ = build_model(make_cfg("task=anonymizer").model.critic, in_shape=shape)
    assert {m.p for m in default_critic.modules() if isinstance(m, torch.nn.Dropout)} != {0.5}
    with torch.no_grad():
        mu, _ = enc(torch.zeros(2, *shape), torch.ones(2, 1, 64, 64))
        fake = dec(mu)
        assert mu.shape == (2, 128) and fake.shape == (2, *shape)
        assert critic(fake).shape[0] == 2
