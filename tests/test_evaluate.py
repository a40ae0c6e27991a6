"""The evaluation suite: every attack detects leakage when there is leakage, and only then."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from ppgan.baselines import GaussianBlur, KSamePixel, Noise, Pixelate
from ppgan.data import load_dataset
from ppgan.data.hdf5 import ImageData
from ppgan.errors import PpganError
from ppgan.metrics.realism import region_psnr, region_ssim
from ppgan.metrics.retrieval import precision_at_k
from tests.conftest import judge_overrides, load_experiment

ADAPTIVE = ("resnet", "resnet_aug", "linear", "knn")  # task.adaptive's defaults
ATTACK = ["task.attack.epochs=15", "task.attack.batch_size=16", "task.n_samples=4"]


class DrawnNoise(Noise):
    """Noise drawn from the global RNG, as PP-RID draws its random person: the evaluation must
    seed the draw itself for the same seed to give the same metrics."""

    stochastic = True

    def __call__(self, batch):
        return torch.rand(batch["images"].shape, device=batch["images"].device) * 2 - 1


@pytest.fixture(scope="module")
def leak_vs_noise(tmp_path_factory, judges, data_dir):
    """Evaluate the identity 'anonymizer' (output = input), pure noise and the class prototype;
    the identity anonymizer's release is attacked as a file, exported the old, leaky way."""
    from ppgan.tasks import run_task
    from tests.conftest import make_cfg
    from tests.test_release import leaky_export

    out = tmp_path_factory.mktemp("eval")
    args = [f"paths.data_dir={data_dir}", "task=evaluate", *judge_overrides(judges), *ATTACK]
    data = load_dataset(make_cfg(*args).dataset, require_splits=())
    leaky_export(out / "leaky.h5", data, with_ids=False)  # truth: matched by pixels
    cfg = make_cfg(
        *args,
        "~task.methods.blur",
        "~task.methods.pixelate",
        "~task.methods.ksame",
        "~task.methods.pp_mir",
        "~task.methods.pp_sir",
        "+task.methods.noise={_target_: ppgan.baselines.Noise}",
        "+task.methods.drawn={_target_: tests.test_evaluate.DrawnNoise}",
        f"+task.release_files.original={out / 'leaky.h5'}",
    )
    return run_task(cfg, out / "test"), out / "test"


def test_attacks_report_leakage_on_originals(leak_vs_noise):
    m, _ = leak_vs_noise
    chance = m["chance/identity"]  # 6 identities in debug=tiny
    assert m["original/privacy/unseen_acc"] >= 0.6
    assert m["original/privacy/adaptive_acc"] >= 0.6
    for attacker in ADAPTIVE:  # every adaptive attacker learns, each with its interval
        key = f"original/privacy/adaptive_{attacker}_acc"
        assert m[key] >= 0.6, attacker
        assert m[key + "_ci_lo"] <= m[key] <= m[key + "_ci_hi"]
    assert m["original/privacy/seen_acc"] >= 0.6
    for space in ("siamese", "unseen"):
        assert m[f"original/privacy/link_{space}_rank1"] >= 0.6
        assert m[f"original/privacy/link_{space}_auc"] >= 0.75
    assert m["original/privacy/unseen_acc"] > 3 * chance
    assert m["original/utility/agreement"] == 1.0
    assert m["original/realism/ssim_roi"] == pytest.approx(1.0)
    assert m["original/realism/fid"] == pytest.approx(0.0, abs=1e-3)


def test_attacks_report_chance_on_noise(leak_vs_noise):
    m, _ = leak_vs_noise
    chance = m["chance/identity"]
    # 12 test images, 6 identities: allow sampling noise around chance (1/6), far below originals.
    for key in (
        "unseen_acc",
        "adaptive_acc",
        "seen_acc",
        "link_siamese_rank1",
        "link_unseen_rank1",
    ):
        assert m[f"noise/privacy/{key}"] <= 2.5 * chance + 1e-9, key
    for attacker in ADAPTIVE:
        assert m[f"noise/privacy/adaptive_{attacker}_acc"] <= 2.5 * chance + 1e-9, attacker
    assert m["noise/privacy/link_siamese_auc"] == pytest.approx(0.5, abs=0.2)
    assert m["noise/realism/fid"] > m["original/realism/fid"]
    assert m["noise/realism/ssim_roi"] < 0.2


def test_report_and_artefacts(leak_vs_noise):
    m, out = leak_vs_noise
    text = (out / "report.md").read_text()
    assert "| original |" in text and "| noise |" in text and "| *chance* |" in text
    assert (out / "privacy_utility.png").stat().st_size > 1000
    assert (out / "samples" / "methods.png").exists()
    assert {"unseen_identity.pt", "independent_disease.pt"} <= {
        p.name for p in (out / "attackers").iterdir()
    }
    worst = max(
        m[f"original/privacy/{k}"]
        for k in ("unseen_acc", "adaptive_acc", "link_siamese_rank1", "link_unseen_rank1")
    )
    assert m["original/privacy/worst_ratio"] == pytest.approx(worst / m["chance/identity_disease"])
    assert m["original/privacy_score"] == pytest.approx(
        min(1, 1 / m["original/privacy/worst_ratio"])
    )
    # Intervals, the chance | disease row and the side-channel section are in the report.
    assert "| *chance ∣ disease* |" in text and "| prototype |" in text
    for key in ("original/privacy/unseen_acc", "noise/utility/disease_acc"):
        assert m[f"{key}_ci_lo"] <= m[key] <= m[f"{key}_ci_hi"]
    assert m["noise/utility/disease_acc_ci_lo"] < m["noise/utility/disease_acc_ci_hi"]
    assert m["chance/identity"] < m["chance/identity_disease"] <= 1
    assert "## The release as shipped" in text
    # The adaptive attack is the strongest adaptive attacker; each has its row in the report.
    for method in ("original", "noise", "prototype"):
        best = max(m[f"{method}/privacy/adaptive_{a}_acc"] for a in ADAPTIVE)
        assert m[f"{method}/privacy/adaptive_acc"] == best
    assert "## Adaptive attackers" in text
    assert "| method | " + " | ".join(f"{a} ↓" for a in ADAPTIVE) + " |" in text
    assert {f"adaptive_original_{a}.pt" for a in ADAPTIVE} <= {
        p.name for p in (out / "attackers").iterdir()
    }


def test_collapse_is_visible(leak_vs_noise):
    m, _ = leak_vs_noise
    assert m["original/realism/diversity"] == pytest.approx(1.0)
    assert m["prototype/realism/diversity"] < 0.05
    assert m["prototype/realism/fid_disease"] > m["original/realism/fid_disease"] + 1e-3


def test_leaky_release_is_caught_by_side_channels(leak_vs_noise):
    m, _ = leak_vs_noise
    assert m["original/release/position_join"] == 1.0
    assert m["original/release/mask_join"] >= 0.9
    assert m["original/release/pixel_join"] == 1.0
    assert m["original/release/position_chance"] < 0.5
    assert m["original/release/metadata_join"] < 0.9  # dis + set carry no identity by themselves


# The leak_vs_noise evaluation less the methods it does not need.
KEEP = [
    "~task.methods." + k for k in ("blur", "pixelate", "ksame", "pp_mir", "pp_sir", "prototype")
]


def evaluate_again(judges, data_dir, attackers: Path | None, out: Path, *overrides):
    """task=evaluate with this module's settings and `overrides` into `out`, starting from a copy
    of the cached attackers in `attackers` (None: none)."""
    import shutil

    from ppgan.tasks import run_task
    from tests.conftest import make_cfg

    args = [f"paths.data_dir={data_dir}", "task=evaluate", *judge_overrides(judges), *ATTACK]
    if attackers is not None:
        shutil.copytree(attackers, out / "attackers")
    return run_task(make_cfg(*args, *KEEP, *overrides), out)


def test_same_seed_same_metrics_and_val_split(leak_vs_noise, judges, data_dir, tmp_path):
    """Re-running reuses the cached attackers (same key) and gives the same numbers, also for a
    method drawn from the global RNG after other methods were left out; the val split is
    evaluated on its own images."""
    m, out = leak_vs_noise
    again = evaluate_again(
        judges,
        data_dir,
        out / "attackers",
        tmp_path / "again",
        "+task.methods.drawn={_target_: tests.test_evaluate.DrawnNoise}",
        f"+task.release_files.original={out.parent / 'leaky.h5'}",
    )
    assert any(k.startswith("drawn/") for k in again)
    for k, v in again.items():
        assert v == pytest.approx(m[k], nan_ok=True), k
    val = evaluate_again(judges, data_dir, out / "attackers", tmp_path / "val", "task.split=val")
    assert "**val split.**" in (tmp_path / "val" / "report.md").read_text()
    assert val["original/realism/fid"] == pytest.approx(0.0, abs=1e-3)
    assert val["chance/disease"] != m["chance/disease"] or val != m


def _batch(n=6, size=32):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(n, 3, size, size, generator=g) * 2 - 1
    return {
        "images": images,
        "masks": torch.ones(n, 1, size, size),
        "id": torch.arange(n) % 3,
        "index": torch.arange(n),
    }


def test_blur_and_pixelate_change_images_but_keep_range():
    b = _batch()
    for method in (GaussianBlur(2.0), Pixelate(8)):
        out = method(b)
        assert out.shape == b["images"].shape and out.abs().max() <= 1
        assert not torch.allclose(out, b["images"])
    assert Pixelate(8)(b)[:, :, :8, :8].std(dim=(2, 3)).max() < 1e-6  # constant cells


def test_ksame_averages_other_identities_only():
    b = _batch()
    data = ImageData(
        path=None,
        shape=(3, 32, 32),
        dis=torch.zeros(6, dtype=torch.long),
        split=torch.zeros(6, dtype=torch.long),
        ids=b["id"],
        n_ids=3,
        n_classes=1,
        images=b["images"],
    )
    out = KSamePixel(k=2).fit(data)(b)
    for i in range(6):  # the average of 2 images of the *other* identities
        others = b["images"][b["id"] != b["id"][i]]
        d = (others - b["images"][i]).flatten(1).norm(dim=1)
        assert torch.allclose(out[i], others[d.topk(2, largest=False).indices].mean(0), atol=1e-6)


def test_region_metrics_and_precision_known_answers():
    a = torch.zeros(1, 1, 8, 8)
    b = a.clone()
    b[..., :4] = 1.0  # differ only in the left half
    left = torch.zeros(1, 1, 8, 8)
    left[..., :4] = 1
    assert float(region_psnr(a, b, 1 - left)) > 90  # identical outside: PSNR at its cap
    # A plain float on the right: pytest >= 9 iterates a 0-d tensor given to approx and fails.
    assert float(region_psnr(a, b, left)) == pytest.approx(10 * math.log10(4.0), abs=1e-4)
    assert float(region_ssim(a, a, left)) == pytest.approx(1.0)
    q, base = torch.tensor([[0.0], [10.0]]), torch.tensor([[0.1], [0.2], [9.9], [10.1]])
    assert precision_at_k(q, torch.tensor([0, 1]), base, torch.tensor([0, 0, 1, 0]), 2) == 0.75


def test_link_auc_given_disease_does_not_reward_kept_disease():
    """A release that keeps only the disease (distance 0 within a class, 1 across) looks linkable
    by the plain AUC when disease is a trait of the person; over same-disease pairs it is 0.5."""
    from omegaconf import OmegaConf

    from ppgan.tasks.evaluate import Scores

    ids = torch.arange(8)  # one query per identity
    train_ids = torch.arange(8).repeat_interleave(3)
    person_dis = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    dis, train_dis = person_dis[ids], person_dis[train_ids]
    d = (dis[:, None] != train_dis[None, :]).float()
    same = ids[:, None] == train_ids[None, :]
    m = Scores(OmegaConf.create({"n": 200, "seed": 0}))
    m.auc("plain", d, same)
    m.auc("given", d, same, dis[:, None] == train_dis[None, :])
    assert m["plain"] > 0.7 and m["given"] == pytest.approx(0.5)
    assert m["given_ci_lo"] <= 0.5 <= m["given_ci_hi"]


def test_gate_script_takes_the_strongest_attacker_and_the_same_disease_auc():
    """experiments/gates.py (the issue's acceptance table) on a hand-made metrics file: the best
    adaptive attacker decides, the same-disease AUC replaces the plain one, baselines set bars."""
    module = load_experiment("gates")
    common = {"utility/indep_acc": 1.0, "realism/diversity": 1.0, "realism/ssim_roi": 0.3,
              "realism/fid_disease": 10.0}  # fmt: skip
    metrics = {"chance/identity_disease": 0.05}
    metrics |= {f"original/{k}": v for k, v in common.items()}
    metrics |= {"ksame/realism/fid_disease": 20.0, "blur/realism/ssim_roi": 0.2}
    metrics |= {f"m/{k}": v for k, v in common.items()}
    metrics |= {
        "m/privacy/adaptive_resnet_acc": 0.05,
        "m/privacy/adaptive_linear_acc": 0.2,  # the strongest: fails 2x chance | disease
        "m/privacy/adaptive_linear_acc_ci_lo": 0.1,
        "m/privacy/adaptive_linear_acc_ci_hi": 0.3,
        "m/privacy/unseen_acc": 0.05,
        "m/privacy/link_siamese_rank1": 0.05,
        "m/privacy/link_siamese_auc": 0.7,  # plain AUC: ignored where the same-disease one exists
        "m/privacy/link_siamese_auc_same_disease": 0.52,
    }
    table = module.gates(metrics)
    m = table["m"]
    assert m["adaptive <= 2x chance|disease"]["metric"] == "privacy/adaptive_linear_acc"
    assert not m["adaptive <= 2x chance|disease"]["pass"]
    assert m["adaptive <= 2x chance|disease"]["ci"] == [0.1, 0.3]
    assert m["link AUC <= 0.55"]["value"] == 0.52 and m["link AUC <= 0.55"]["pass"]
    assert m["FD(disease) < k-Same-Pixel"]["pass"] and m["SSIM(ROI) > blur"]["pass"]
    assert m["passed"] == 7
    assert module.cell(m["adaptive <= 2x chance|disease"]) == "0.200 [0.100, 0.300] ✗"

    # At the bound, with `chance | disease` a float mean a few ulps below 1/20 (as evaluate
    # writes it): 6 of 60 is 2x chance | disease and passes; 7 of 60 does not.
    cid = float(np.mean([1 / 20] * 60))
    assert cid < 0.05 and 2 * cid < 6 / 60  # the rounding the gate has to allow
    at_bound = metrics | {"chance/identity_disease": cid, "m/privacy/adaptive_linear_acc": 6 / 60}
    assert module.gates(at_bound)["m"]["adaptive <= 2x chance|disease"]["pass"]
    over = at_bound | {"m/privacy/adaptive_linear_acc": 7 / 60}
    assert not module.gates(over)["m"]["adaptive <= 2x chance|disease"]["pass"]


def test_gate_table_has_as_many_header_cells_as_columns(tmp_path, capsys, monkeypatch):
    """The printed Markdown table renders: a header name holding `|` ("chance|disease") is
    escaped, so the header, the rule line and every row have the same number of cells."""
    module = load_experiment("gates")
    metrics = {"chance/identity_disease": 0.05, "original/utility/indep_acc": 1.0,
               "original/realism/diversity": 1.0, "m/privacy/adaptive_resnet_acc": 0.05,
               "m/privacy/unseen_acc": 0.05, "m/utility/indep_acc": 1.0}  # fmt: skip
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(metrics))
    monkeypatch.setattr("sys.argv", ["gates.py", str(path)])
    module.main()
    lines = capsys.readouterr().out.splitlines()

    def cells(line: str) -> int:  # cells between unescaped pipes
        return len(re.split(r"(?<!\\)\|", line.strip().strip("|")))

    assert len(lines) == 3 and "chance\\|disease" in lines[0]
    assert cells(lines[0]) == cells(lines[1]) == cells(lines[2])


def test_several_independent_disease_networks_give_a_range(
    leak_vs_noise, judges, data_dir, tmp_path
):
    """task.indep_networks=2: the first network is the one of the single-network run (its
    cached weights reused: same score), the range over both brackets it."""
    m, out = leak_vs_noise
    noise = "+task.methods.noise={_target_: ppgan.baselines.Noise}"
    two = evaluate_again(
        judges, data_dir, out / "attackers", tmp_path / "two", noise, "task.indep_networks=2"
    )
    assert (tmp_path / "two" / "attackers" / "independent_disease_1.pt").is_file()
    for method in ("original", "noise"):
        acc = two[f"{method}/utility/indep_acc"]
        assert acc == pytest.approx(m[f"{method}/utility/indep_acc"])
        lo, hi = (
            two[f"{method}/utility/indep_acc_nets_min"],
            two[f"{method}/utility/indep_acc_nets_max"],
        )
        assert 0.0 <= lo <= acc <= hi <= 1.0
    assert "original/utility/indep_acc_nets_min" not in m  # one network: no range
    with pytest.raises(PpganError, match="task.indep_networks"):
        evaluate_again(judges, data_dir, None, tmp_path / "zero", "task.indep_networks=0")
