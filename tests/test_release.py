"""The release as shipped: hygiene of task=export's release and the side-channel attacks that
check it; collapse/diversity and bootstrap known answers."""

from __future__ import annotations

import copy

import h5py
import numpy as np
import pytest
import torch

from ppgan.baselines import Original, Prototype
from ppgan.data import load_dataset
from ppgan.data.hdf5 import atomic_h5, load_images
from ppgan.data.release import class_canonical_masks, export_release, to_source_format
from ppgan.metrics import release as side
from ppgan.metrics.bootstrap import auc_counts, clustered_auc_ci, mean_ci
from ppgan.metrics.diversity import diversity_ratio, near_duplicate_fraction
from tests.conftest import make_cfg


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny synthetic data set (6 identities x 15 images, 32 px, masks), in memory."""
    cfg = make_cfg(f"paths.data_dir={tmp_path_factory.mktemp('data')}")
    return load_dataset(cfg.dataset, require_splits=())


def _attack(path, data):
    """The side-channel attacks on every row of a release; truth = its evaluation-only `id`."""
    rel = load_images(path, require_splits=())
    with h5py.File(path) as f:
        cols = {k: f[k][()] for k in f if k != "images"}
    with h5py.File(data.path) as f:
        orig_cols = {k: f[k][()] for k in f if k != "images"}
    truth, orig_ids = rel.ids.numpy(), data.ids.numpy()
    out = {
        "position": side.identity_hits(
            side.position_join(rel.split.numpy(), data.split.numpy()), truth, orig_ids
        ).mean(),
        "metadata": side.candidate_hits(
            side.metadata_join(cols, orig_cols)[0], truth, orig_ids
        ).mean(),
        "position_chance": side.chance_rate(truth, rel.split.numpy(), orig_ids, data.split.numpy()),
        "chance": side.chance_rate(truth, rel.dis.numpy(), orig_ids, data.dis.numpy()),
    }
    if "masks" in cols:
        guess = side.mask_join(cols["masks"], data.masks[:, 0].numpy())
        out["mask"] = side.identity_hits(guess, truth, orig_ids).mean()
    return out, cols


def leaky_export(path, data, with_ids: bool = True):
    """What the exporter used to do: original order, original masks (ids for the evaluation)."""
    with atomic_h5(path) as f:
        f.create_dataset("images", data=to_source_format(data.images, data))
        f.create_dataset("dis", data=data.dis.numpy())
        f.create_dataset("set", data=data.split_code(data.split).numpy())
        f.create_dataset("masks", data=data.masks[:, 0].to(torch.uint8).numpy())
        if with_ids:
            f.create_dataset("id", data=data.ids.numpy())


def test_side_channel_attacks_catch_a_leaky_exporter(tiny, tmp_path):
    leaky_export(tmp_path / "leaky.h5", tiny)
    m, _ = _attack(tmp_path / "leaky.h5", tiny)
    # Every row re-identified by its position; by its mask all but exact ties (32 px masks).
    assert m["position"] == 1.0 and m["mask"] >= 0.95
    assert m["position_chance"] < 0.25 and m["chance"] < 0.5
    # A leaked per-row column (a file index) makes the metadata join exact too.
    with h5py.File(tmp_path / "leaky.h5", "a") as f:
        f["index"] = np.arange(len(tiny))
    with h5py.File(tiny.path, "r") as f:
        orig = {k: f[k][()] for k in f if k != "images"} | {"index": np.arange(len(tiny))}
    with h5py.File(tmp_path / "leaky.h5") as f:
        cols = {k: f[k][()] for k in f if k != "images"}
    candidates, keys = side.metadata_join(cols, orig)
    assert "index" in keys
    assert side.candidate_hits(candidates, tiny.ids.numpy(), tiny.ids.numpy()).mean() == 1.0


def test_export_order_is_fresh_and_independent_of_identity(tiny, tmp_path):
    idx = torch.arange(len(tiny))
    orders, hits = [], []
    for i in range(3):  # same data, same (global) seed: the order must still differ
        torch.manual_seed(0)
        np.random.seed(0)
        path = tmp_path / f"release{i}.h5"
        export_release(path, tiny, idx, Original(), 32, keep_identity=True)
        m, cols = _attack(path, tiny)
        assert set(cols) == {"dis", "set", "case_id", "id"}  # no masks, no index, no attrs
        with h5py.File(path) as f:
            assert len(f.attrs) == 0 and all(len(f[k].attrs) == 0 for k in f)
            # Rows are the original images, permuted: recover the permutation to compare.
            images = f["images"][()].reshape(len(tiny), -1)
        orig = to_source_format(tiny.images, tiny).reshape(len(tiny), -1)
        lookup = {row.tobytes(): j for j, row in enumerate(orig)}
        orders.append([lookup[row.tobytes()] for row in images])
        assert len(set(cols["case_id"].tolist())) == len(tiny)  # distinct opaque ids
        hits.append(m["position"])
        assert m["metadata"] <= m["chance"] + 0.2  # dis + set only: chance | disease level
    assert orders[0] != orders[1] != orders[2]
    assert sorted(orders[0]) == list(range(len(tiny)))
    # 90 rows, 6 identities: position-join chance ~1/6; the leaky export scores 1.0.
    assert np.mean(hits) < 0.4


def test_class_canonical_masks_do_not_join(tiny, tmp_path):
    path = tmp_path / "canonical.h5"
    export_release(
        path, tiny, torch.arange(len(tiny)), Original(), 32, masks="class_canonical",
        keep_identity=True,
    )  # fmt: skip
    m, cols = _attack(path, tiny)
    masks = cols["masks"]
    for c in np.unique(cols["dis"]):  # one mask per class
        assert (masks[cols["dis"] == c] == masks[cols["dis"] == c][0]).all()
    assert m["mask"] <= m["chance"] + 0.2  # far from the leaky export's 1.0


def test_class_canonical_mask_of_a_small_class_is_not_its_people(tiny):
    """A class whose training masks come from too few people gets the vote over all classes."""
    train = tiny.indices("train")
    small = copy.copy(tiny)
    small.dis = tiny.dis.clone()
    small.dis[train[:4]] = tiny.n_classes  # a new class: 4 training images
    small.n_classes = tiny.n_classes + 1
    masks = class_canonical_masks(small)
    overall = tiny.batch(train)["masks"][:, 0].mean(0) >= 0.5
    assert torch.equal(masks[-1], overall.to(torch.uint8))
    own = tiny.batch(train[:4])["masks"][:, 0].mean(0) >= 0.5
    assert not torch.equal(own, overall)  # else this test could not fail


def test_pixel_join_and_chance_known_answers():
    orig = torch.randn(5, 1, 4, 4)
    rel = orig[[3, 1]] + 0.01
    assert side.pixel_join(rel, orig).tolist() == [3, 1]
    ids = np.array([0, 0, 1, 1, 2])
    assert side.chance_rate(np.array([0]), np.array([0]), ids, np.zeros(5)) == pytest.approx(0.4)
    assert side.position_join(np.array([1, 0, 0]), np.array([0, 1, 0])).tolist() == [1, 0, 2]


def test_diversity_prototype_zero_original_one(tiny):
    idx = tiny.indices("test")
    b = tiny.batch(idx)
    flat = b["images"].flatten(1)
    assert diversity_ratio(flat, flat, b["dis"]) == pytest.approx(1.0)
    proto = Prototype().fit(tiny)(b).flatten(1)
    assert diversity_ratio(proto, flat, b["dis"]) == pytest.approx(0.0, abs=1e-6)
    same = b["images"][:1].repeat(4, 1, 1, 1)
    assert near_duplicate_fraction(same) == 1.0
    assert near_duplicate_fraction(b["images"][:4]) == 0.0


def test_bootstrap_intervals_known_answers():
    lo, hi = mean_ci(np.r_[np.ones(50), np.zeros(50)], 1000, seed=0)
    assert 0.38 < lo < 0.45 and 0.55 < hi < 0.62  # ~ 0.5 +- 1.96 * 0.05
    assert mean_ci(np.ones(10)) == (1.0, 1.0)
    assert mean_ci(np.r_[np.ones(5), np.zeros(5)], seed=3) == mean_ci(
        np.r_[np.ones(5), np.zeros(5)], seed=3
    )
    # The weighted (Mann-Whitney) AUC equals scikit-learn's with unit weights, ties included.
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    score = rng.integers(0, 5, 200).astype(float)
    positive = rng.random(200) < score / 8
    m, n_pos, n_neg = auc_counts(score, positive, np.arange(200) // 10, 20)
    assert m.sum() / (n_pos.sum() * n_neg.sum()) == pytest.approx(roc_auc_score(positive, score))
    lo, hi = clustered_auc_ci(score, positive, np.arange(200) // 10, 20, 500, seed=0)
    assert lo < roc_auc_score(positive, score) < hi


def test_aggregate_seeds_script(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    for seed, acc in enumerate([0.1, 0.2, 0.3]):
        (tmp_path / str(seed)).mkdir()
        metrics = {"pp_mir/privacy/unseen_acc": acc, "pp_mir/privacy/unseen_acc_ci_lo": 0.0}
        (tmp_path / str(seed) / "metrics.json").write_text(json.dumps(metrics))
    script = Path(__file__).parents[1] / "experiments" / "aggregate_seeds.py"
    res = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stderr
    stats = json.loads((tmp_path / "seeds.json").read_text())
    assert list(stats) == ["pp_mir/privacy/unseen_acc"]  # interval bounds left out
    assert stats["pp_mir/privacy/unseen_acc"]["mean"] == pytest.approx(0.2)
    assert stats["pp_mir/privacy/unseen_acc"]["sd"] == pytest.approx(0.1)
    assert "0.200 ± 0.100" in (tmp_path / "seeds.md").read_text()


def test_truth_of_a_collapsed_release_is_shared_among_equal_outputs():
    outputs = torch.zeros(4, 1, 4, 4)
    outputs[3] = 1.0  # rows 0-2 (identities 0, 0, 1) collapse to one image, row 3 (id 2) differs
    truth = side.match_truth(outputs[[3, 0]], outputs, np.array([0, 0, 1, 2]), n_ids=3)
    assert truth[0].tolist() == [0, 0, 1] and truth[1] == pytest.approx([2 / 3, 1 / 3, 0])
    # A guess of original row 2 (identity 1) is right with probability 1/3 for the second row.
    assert side.identity_hits(np.array([3, 2]), truth, np.array([0, 0, 1, 2])).tolist() == [
        1.0,
        pytest.approx(1 / 3),
    ]
    assert side.match_truth(outputs[:1] + 0.5, outputs, np.array([0, 0, 1, 2]), n_ids=3) is None


def test_a_stochastic_release_is_attacked_through_a_twin_not_a_made_up_truth(tiny, tmp_path):
    """A method that draws anew per call (as PP-RID does) matches none of its own outputs, so
    the shipped file's truth is unknown: the joins are scored on a twin export with identities.
    A pixel leak is still caught; without the method it is an error, not a chance-level number."""
    from omegaconf import OmegaConf

    from ppgan.errors import PpganError
    from ppgan.tasks.evaluate import anonymize_all, release_side_channels

    class Noisy:  # the original plus fresh noise on every call: stochastic and leaky
        stochastic = True

        def __call__(self, b):
            return (b["images"] + 0.3 * torch.randn_like(b["images"])).clamp(-1, 1)

    method = Noisy()
    path = tmp_path / "shipped.h5"
    export_release(path, tiny, torch.arange(len(tiny)), method, 32)  # no ids, like task=export
    anon = anonymize_all(method, tiny, 32)  # another draw: matches no released image
    boot = OmegaConf.create({"n": 200, "seed": 0})
    m = release_side_channels(str(path), tiny, anon, "test", boot, 32, method)
    assert m["release/twin"] == 1.0 and m["release/n_attributes"] == 0
    # Nearest original in pixel space: the same person (a made-up uniform truth gave 1/6).
    assert m["release/pixel_join"] > 0.5
    assert m["release/position_join"] < 0.6  # the exporter's order is random
    with pytest.raises(PpganError, match="match no output"):
        release_side_channels(str(path), tiny, anon, "test", boot, 32)
    with h5py.File(path, "a") as f:  # a column the exporter does not write: refused
        f["index"] = np.arange(len(tiny))
    with pytest.raises(PpganError, match="not a release of this exporter"):
        release_side_channels(str(path), tiny, anon, "test", boot, 32, method)
