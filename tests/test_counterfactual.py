"""Counterfactual decoder and case-based explanations."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch

from ppgan.data import dataset_path
from ppgan.data.hdf5 import load_images
from ppgan.errors import PpganError
from ppgan.losses.counterfactual import target_classes
from tests.conftest import SMALL_GAN, judge_overrides, make_cfg

GAN = SMALL_GAN


def test_target_class_binary_is_the_other_class():
    logits = torch.tensor([[2.0, -1.0], [0.1, 0.3], [-5.0, 5.0]])
    assert target_classes(logits).tolist() == [1, 0, 0]


def test_target_class_three_classes():
    logits = torch.tensor([[3.0, 1.0, 2.0], [0.0, 5.0, 1.0], [0.0, 1.0, 4.0]])
    assert target_classes(logits).tolist() == [2, 2, 1]  # most likely other class
    assert target_classes(logits, target_class=2).tolist() == [2, 2, 1]  # 2 unless already 2
    assert target_classes(logits, target_class=0).tolist() == [2, 0, 0]
    with pytest.raises(ValueError, match="target_class=3"):
        target_classes(logits, target_class=3)


@pytest.fixture(scope="module")
def gan_and_cf(tmp_path_factory, judges, data_dir):
    from ppgan.tasks import run_task

    root = tmp_path_factory.mktemp("cf")
    base = [f"paths.data_dir={data_dir}", *judge_overrides(judges)]
    run_task(make_cfg(*base, "task=anonymizer", "objective=pp_mir", *GAN), root / "gan")
    gan = root / "gan" / "checkpoints" / "best.pt"
    metrics = run_task(
        make_cfg(*base, "task=counterfactual", f"task.checkpoint={gan}", "task.epochs=2"),
        root / "cf",
    )
    run_task(
        make_cfg(f"paths.data_dir={data_dir}", "task=export", f"task.checkpoint={gan}"),
        root / "export",
    )
    return root, metrics


def test_counterfactual_run_and_frozen_parts(gan_and_cf):
    root, metrics = gan_and_cf
    assert 0 <= metrics["val/flip_rate"] <= 1 and metrics["val/roi_complement"] >= 0
    gan = torch.load(root / "gan" / "checkpoints" / "best.pt", weights_only=True)
    cf = torch.load(root / "cf" / "checkpoints" / "last.pt", weights_only=True)
    for net in ("encoder", "decoder"):  # weights and BatchNorm statistics unchanged by training
        for k, v in gan[net].items():
            assert torch.equal(v, cf[net][k]), f"{net}.{k} changed"
    changed = any(not torch.equal(v, gan["decoder"][k]) for k, v in cf["cf_decoder"].items())
    assert changed  # the counterfactual decoder did train
    assert (root / "cf" / "samples" / "epoch_0002.png").exists()


def test_explain_panels_show_only_anonymized_cases(run, judges, gan_and_cf, data_dir):
    root, _ = gan_and_cf
    anon_file = root / "export" / "anonymized.h5"
    _, out = run(
        "task=explain",
        f"task.disease_ckpt={judges['disease']}",
        f"task.anonymized_file={anon_file}",
        "task.indices=[0,2]",
        "task.k=3",
        f"task.counterfactual_ckpt={root / 'cf' / 'checkpoints' / 'best.pt'}",
        name="explain",
    )
    base = torch.load(out / "case_base.pt", weights_only=True)
    with h5py.File(anon_file) as f:
        train = f["set"][()] == 0
        anon_train = f["images"][()][train]
        release_ids = [bytes(v).decode() for v in f["case_id"][()][train]]
    original = load_images(dataset_path(make_cfg(f"paths.data_dir={data_dir}").dataset))
    orig_train = original.images[original.indices("train")]
    for name in ("test_0000", "test_0002"):
        panel = json.loads((out / "panels" / f"{name}.json").read_text())
        assert (out / "panels" / f"{name}.png").stat().st_size > 5000
        shown = [c["case_id"] for c in panel["cases"]] + [panel["other_class_case"]["case_id"]]
        assert 0 <= panel["near_duplicate_fraction"] <= 1
        assert "index" not in (out / "panels" / f"{name}.json").read_text()  # no row numbers
        assert len(panel["cases"]) == 3 and panel["counterfactual"] is not None
        assert panel["other_class_case"]["label"] != panel["prediction"]
        for case_id in shown:  # named by the release's opaque id, not by a row number
            img = base["images"][base["case_id"].index(case_id)]
            as_uint8 = ((img.permute(1, 2, 0) + 1) * 127.5).round().numpy().astype(np.uint8)
            assert (as_uint8 == anon_train[release_ids.index(case_id)]).all()
            assert not (orig_train - img).abs().flatten(1).amax(1).lt(1e-6).any()  # not original
    # A second explanation in the same run dir reuses the saved case base.
    mtime = (out / "case_base.pt").stat().st_mtime
    run(
        "task=explain", f"task.disease_ckpt={judges['disease']}", "task.indices=[1]", name="explain"
    )
    assert (out / "case_base.pt").stat().st_mtime == mtime
    # A changed source file makes the saved case base stale: it is rebuilt, not reused.
    changed = root / "changed.h5"
    changed.write_bytes(anon_file.read_bytes())
    explain = ["task=explain", f"task.disease_ckpt={judges['disease']}", "task.indices=[1]"]
    run(*explain, f"task.anonymized_file={changed}", name="explain")
    assert torch.load(out / "case_base.pt", weights_only=True)["source"]["path"] == str(changed)
    with pytest.raises(PpganError, match="task.case_base: .* was built from"):
        run(*explain, f"task.anonymized_file={anon_file}", f"task.case_base={out / 'case_base.pt'}")


def test_explain_an_image_file_and_reject_a_wrong_size(run, judges, gan_and_cf, tmp_path):
    from PIL import Image

    from ppgan.errors import PpganError

    root, _ = gan_and_cf
    args = [
        "task=explain",
        f"task.disease_ckpt={judges['disease']}",
        f"task.anonymized_file={root / 'export' / 'anonymized.h5'}",
    ]
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "eye.png")
    metrics, out = run(*args, f"task.image={tmp_path / 'eye.png'}", name="file")
    assert metrics["n_panels"] == 1 and (out / "panels" / "eye.png").exists()
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(tmp_path / "big.png")
    with pytest.raises(
        PpganError, match=r"task.image: .*big.png is 40x40, the networks expect 32x32"
    ):
        run(*args, f"task.image={tmp_path / 'big.png'}", name="file2")
