"""Tasks `disease` and `identity` end to end on tiny synthetic data."""

from __future__ import annotations

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ppgan.engine import load_frozen
from ppgan.errors import PpganError


@pytest.mark.parametrize("task", ["identity", "disease"])
def test_learns_beyond_chance_and_writes_artefacts(run, task):
    metrics, out = run(f"task={task}", "task.epochs=12", name=task)
    # 6 identities (chance 0.17) / 2 classes (chance 0.5) in debug=tiny.
    assert metrics["test/acc"] >= min(1.0, 3 * metrics["chance"])
    assert all(k in metrics for k in ("test/balanced_acc", "test/macro_f1", "test/roc_auc"))
    assert {p.name for p in (out / "checkpoints").iterdir()} == {"best.pt", "last.pt"}
    events = EventAccumulator(str(out / "tb"))
    events.Reload()
    assert {"train/loss", "val/acc"} <= set(events.Tags()["scalars"])
    assert len(events.Scalars("val/acc")) >= 1


def test_checkpoint_rebuilds_frozen_model(run):
    metrics, out = run("task=identity", "task.epochs=2")
    net, ckpt = load_frozen(out / "checkpoints" / "best.pt", expect={"n_classes": 6})
    assert not any(p.requires_grad for p in net.parameters()) and not net.training
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 6)
    with pytest.raises(PpganError, match="trained with in_shape=.*needs in_shape"):
        load_frozen(out / "checkpoints" / "best.pt", expect={"in_shape": [1, 64, 64]})
    with pytest.raises(PpganError, match="does not exist"):
        load_frozen(out / "nope.pt", key="task.identity_ckpt")


def test_resume_continues_to_the_same_result(run):
    full, _ = run("task=identity", "task.epochs=4", "task.patience=0", name="full")
    run("task=identity", "task.epochs=2", "task.patience=0", name="killed")
    # Re-running into the same dir with the full budget picks up at epoch 2 from last.pt.
    resumed, out = run("task=identity", "task.epochs=4", "task.patience=0", name="killed")
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 4
    assert resumed == pytest.approx(full, rel=1e-5, nan_ok=True)


def test_same_seed_same_metrics(run):
    a, _ = run("task=disease", "task.epochs=2", name="a")
    b, _ = run("task=disease", "task.epochs=2", name="b")
    assert a == pytest.approx(b, nan_ok=True)


def test_resume_refuses_a_different_model(run):
    run("task=identity", "task.epochs=1", name="x")
    with pytest.raises(PpganError, match=r"another config \(model.hidden: 32 -> 8\)"):
        run("task=identity", "task.epochs=2", "model.hidden=8", name="x")
    with pytest.raises(PpganError, match=r"another config \(optimizer.lr"):
        run("task=identity", "task.epochs=2", "optimizer.lr=0.5", name="x")
