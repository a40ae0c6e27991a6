"""Regression pins: a short PP-MIR, PP-SIR and counterfactual run log exactly these losses.

Refactoring the GAN step must not change what it computes: same seed, same CPU, same numbers.
A deliberate change of the method updates the pins (`python -m pytest tests/test_pinned_losses.py
--pin` prints the new values) and says so in its commit message.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ppgan.tasks import run_task
from tests.conftest import judge_overrides, make_cfg

SMALL = [
    "task.epochs=2",
    "task.selection_warmup=0",
    "model.encoder.units=16",
    "model.decoder.units=16",
    "model.critic.channels=[8,16,16,16]",
]
TAGS = ("critic/loss", "critic/gp", "gen/total", "gen/identity", "gen/disease", "gen/roi_rec")
CF_TAGS = ("critic/loss", "cf/total", "cf/disease", "cf/roi_complement", "cf/adv")

PINNED = {
    "counterfactual": {
        "critic/loss": [9.234127, 8.419984],
        "cf/total": [2.568835, 2.518703],
        "cf/disease": [0.694657, 0.689719],
        "cf/roi_complement": [0.004321, 0.001946],
        "cf/adv": [0.012136, 0.021342],
    },
    "pp_mir": {
        "critic/loss": [9.996095, 9.840243],
        "critic/gp": [0.999629, 0.984898],
        "gen/total": [2.79262, 2.730536],
        "gen/identity": [1.94492, 1.87269],
        "gen/disease": [0.684224, 0.690333],
        "gen/roi_rec": [0.032098, 0.032733],
    },
    "pp_sir": {
        "critic/loss": [9.995887, 9.815472],
        "critic/gp": [0.999608, 0.982429],
        "gen/total": [5.32605, 3.139208],
        "gen/identity": [2.960831, 1.305141],
        "gen/disease": [0.687218, 0.692864],
        "gen/roi_rec": [0.032528, 0.035013],
    },
}


def logged(run_dir: Path, tags: tuple[str, ...]) -> dict[str, list[float]]:
    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0}).Reload()
    have = set(events.Tags()["scalars"])
    return {t: [round(e.value, 6) for e in events.Scalars(t)] for t in tags if t in have}


@pytest.fixture(scope="module")
def pinned_runs(tmp_path_factory, judges, data_dir) -> dict[str, dict[str, list[float]]]:
    root = tmp_path_factory.mktemp("pins")
    base = [f"paths.data_dir={data_dir}", *judge_overrides(judges)]
    out = {}
    for variant in ("pp_mir", "pp_sir"):
        run_task(make_cfg(*base, "task=anonymizer", f"objective={variant}", *SMALL), root / variant)
        out[variant] = logged(root / variant, TAGS)
    gan = root / "pp_mir" / "checkpoints" / "best.pt"
    cf = ["task=counterfactual", f"task.checkpoint={gan}", "task.epochs=2", "objective.n_critic=1"]
    run_task(make_cfg(*base, *cf), root / "cf")
    out["counterfactual"] = logged(root / "cf", CF_TAGS)
    return out


@pytest.mark.parametrize("name", sorted(PINNED))
def test_logged_losses_match_the_pins(pinned_runs, name, request):
    got = pinned_runs[name]
    if request.config.getoption("--pin"):
        print(f"\n{name!r}: {got!r},")
        return
    assert got.keys() == PINNED[name].keys()
    for tag, values in PINNED[name].items():
        assert got[tag] == pytest.approx(values, rel=1e-4, abs=1e-6), tag
