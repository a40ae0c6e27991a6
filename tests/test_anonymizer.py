"""The privacy-preserving VAE-GAN: known answers, loss-term directions, runs, resume, export."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ppgan.data.hdf5 import load_images
from ppgan.engine.context import config_changes
from ppgan.errors import PpganError
from ppgan.losses.adversarial import generator_adversarial, gradient_penalty
from ppgan.losses.generator import Objective, random_identity_terms
from ppgan.losses.privacy import (
    different_loss,
    identity_explained_variance,
    jittered_uniform,
    soft_cross_entropy,
)
from ppgan.losses.utility import (
    disease_preservation,
    disease_terms,
    feature_matching,
    roi_reconstruction,
)
from ppgan.losses.vae import kl_divergence
from ppgan.models.bank import LatentBank
from ppgan.models.classifier import Classifier
from ppgan.models.critic import Critic
from ppgan.models.vae import Decoder, Encoder
from tests.conftest import SMALL_GAN, judge_overrides, load_experiment, make_cfg


def test_gradient_penalty_zero_for_unit_norm_linear_critic():
    lin = nn.Linear(3 * 8 * 8, 1)
    with torch.no_grad():
        lin.weight /= lin.weight.norm()
    critic = nn.Sequential(nn.Flatten(), lin)
    real, fake = torch.randn(5, 3, 8, 8), torch.randn(5, 3, 8, 8)
    assert float(gradient_penalty(critic, real, fake).detach()) == pytest.approx(0.0, abs=1e-10)
    with torch.no_grad():
        lin.weight *= 3  # gradient norm 3 everywhere: penalty (3 - 1)^2 = 4
    assert float(gradient_penalty(critic, real, fake).detach()) == pytest.approx(4.0, rel=1e-5)


def test_kl_known_answers():
    assert float(kl_divergence(torch.zeros(4, 8), torch.zeros(4, 8))) == 0.0
    # KL(N(1, 1) || N(0, 1)) = 0.5 per dimension.
    assert float(kl_divergence(torch.ones(2, 3), torch.zeros(2, 3))) == pytest.approx(1.5)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [32, 64])
def test_output_shapes(channels, size):
    shape = [channels, size, size]
    enc = Encoder(shape, z_dim=16, units=32, kernel=4)
    dec = Decoder(shape, z_dim=16, units=32, kernel=4, start_channels=16)
    critic = Critic(shape, channels=[8, 16, 16, 16], kernel=4, hidden=16)
    x, m = torch.rand(2, *shape) * 2 - 1, torch.ones(2, 1, size, size)
    mu, logvar = enc(x, m)
    assert mu.shape == logvar.shape == (2, 16)
    fake = dec(mu)
    assert fake.shape == (2, *shape) and fake.abs().max() <= 1
    assert critic(fake).shape == (2,)
    # The paper's kernel 8 keeps the same geometry.
    assert Decoder(shape, z_dim=16, units=32, kernel=8)(mu).shape == (2, *shape)


def _step(x: torch.Tensor, loss: torch.Tensor, lr: float = 0.1) -> torch.Tensor:
    (grad,) = torch.autograd.grad(loss, x)
    return (x - lr * grad).detach()


def test_each_term_moves_the_generator_the_intended_way():
    torch.manual_seed(0)
    real = torch.rand(4, 3, 8, 8) * 2 - 1
    mask = torch.zeros(4, 1, 8, 8)
    mask[..., 2:6, 2:6] = 1
    net = nn.Sequential(nn.Flatten(), nn.Linear(192, 5))
    fake = torch.rand(4, 3, 8, 8, requires_grad=True)

    # roi_rec: inside the ROI toward the original, outside untouched.
    moved = _step(fake, roi_reconstruction(real, fake, mask, "sum"))
    inside = mask.bool().expand_as(real)
    assert (moved - real)[inside].abs().sum() < (fake - real)[inside].abs().sum()
    assert torch.equal(moved[~inside], fake.detach()[~inside])

    # identity (MIR): the identity prediction moves toward uniform (its entropy rises).
    def entropy(x):
        p = net(x).detach().softmax(1)
        return float(-(p * p.log()).sum(1).mean())

    target = jittered_uniform(4, 5, jitter=False, device="cpu")
    moved = _step(fake, soft_cross_entropy(target, net(fake)))
    assert entropy(moved) > entropy(fake.detach())

    # disease: the prediction on the fake moves toward the prediction on the original.
    def disagreement(x):
        return float(disease_preservation(net(real), net(x)).detach())

    moved = _step(fake, disease_preservation(net(real), net(fake)))
    assert disagreement(moved) < disagreement(fake.detach())

    # adv: the critic rates the fake as more real.
    moved = _step(fake, generator_adversarial(lambda x: net(x)[:, 0], fake))
    assert net(moved)[:, 0].mean() > net(fake.detach())[:, 0].mean()

    # identity (SIR): the embedding moves away from the references closer than the margin.
    refs = net(real).detach()
    dist = lambda x: torch.cdist(net(x), refs).mean()  # noqa: E731
    moved = _step(fake, different_loss(torch.cdist(net(fake), refs), margin=100.0))
    assert dist(moved) > dist(fake.detach())

    # kl: the posterior moves toward N(0, I).
    mu = torch.randn(4, 6, requires_grad=True)
    logvar = torch.zeros(4, 6)
    assert _step(mu, kl_divergence(mu, logvar)).abs().sum() < mu.abs().sum()


GAN = ["task=anonymizer", *SMALL_GAN, "objective.n_gen=1"]


@pytest.mark.parametrize("variant", ["pp_mir", "pp_sir"])
def test_tiny_end_to_end(run, judges, variant):
    metrics, out = run(*GAN, f"objective={variant}", *judge_overrides(judges), name=variant)
    for key in ("val/disease_agreement", "val/identity_acc", "val/siamese_dist", "val/score"):
        assert key in metrics and metrics[key] == metrics[key]  # present and not NaN
    assert (out / "checkpoints" / "best.pt").exists() and (out / "checkpoints" / "last.pt").exists()
    assert sorted(p.name for p in (out / "samples").iterdir()) == [
        "epoch_0001.png",
        "epoch_0002.png",
    ]
    ckpt = torch.load(out / "checkpoints" / "best.pt", weights_only=True)
    assert ckpt["variant"] == variant[3:] and {"encoder", "decoder", "critic"} <= ckpt.keys()


def test_resume_matches_uninterrupted(run, judges):
    args = [*GAN, *judge_overrides(judges)]
    full, _ = run(*args, name="full")
    run(*[a.replace("task.epochs=2", "task.epochs=1") for a in args], name="resumed")
    resumed, _ = run(*args, name="resumed")
    assert resumed == pytest.approx(full, rel=1e-5)


def test_keep_every_keeps_epochs_of_the_same_trajectory_and_resumes_with_it_added(run, judges):
    args = [*GAN, *judge_overrides(judges)]
    _, full = run(*args, name="full")  # task.epochs=2, no kept checkpoints
    assert not list((full / "checkpoints").glob("epoch_*.pt"))
    # A finished 1-epoch run dir extended to 3 epochs, keeping every 2nd: adding keep_every is
    # not a config change, and the kept epoch 2 is the uninterrupted run's epoch 2.
    run(*[a.replace("task.epochs=2", "task.epochs=1") for a in args], name="kept")
    three = [a.replace("task.epochs=2", "task.epochs=3") for a in args]
    _, out = run(*three, "task.keep_every=2", name="kept")
    assert sorted(p.name for p in (out / "checkpoints").glob("epoch_*.pt")) == ["epoch_0002.pt"]
    kept = torch.load(out / "checkpoints" / "epoch_0002.pt", weights_only=True)
    last = torch.load(full / "checkpoints" / "last.pt", weights_only=True)
    assert kept["epoch"] == last["epoch"] == 2
    for net in ("encoder", "decoder"):
        for key, value in last[net].items():
            torch.testing.assert_close(kept[net][key], value, rtol=1e-5, atol=1e-6)
    for bad, shown in [("-1", "-1"), ("true", "True"), ("null", "None"), ("2.0", "2.0")]:
        with pytest.raises(PpganError, match=rf"task.keep_every={shown}: must be an integer >= 0"):
            run(*args, f"task.keep_every={bad}", name="bad")
    # Nor is it a reason to refuse a finished pipeline stage.
    from ppgan.engine.context import training_config
    from ppgan.pipeline import same_stage_config

    trained = training_config(make_cfg("task=anonymizer", "task.keep_every=0"))
    same_stage_config("pp_mir", trained, make_cfg("task=anonymizer", "task.keep_every=10"))
    with pytest.raises(PpganError, match="stage 'pp_mir' finished with another config"):
        same_stage_config("pp_mir", trained, make_cfg("task=anonymizer", "task.n_samples=4"))


def test_average_checkpoints_is_the_mean_generator_and_loads_as_one(run, judges, capsys):
    from ppgan.engine.checkpoint import load_frozen_parts

    avg = load_experiment("average_checkpoints")

    _, out = run(*GAN, *judge_overrides(judges), "task.keep_every=1", name="kept")
    ckpts = out / "checkpoints"
    one, two, mean = ckpts / "epoch_0001.pt", ckpts / "epoch_0002.pt", ckpts / "mean.pt"
    assert avg.main([str(mean), str(one), str(two)]) == 0
    a, b = (torch.load(p, weights_only=True) for p in (one, two))
    m = torch.load(mean, weights_only=True)
    assert m["averaged_from"] == [1, 2] and m["epoch"] == 2
    assert not {"critic", "selection", "rng"} & m.keys() and not any(k.endswith("_opt") for k in m)
    for net in ("encoder", "decoder"):
        for key, value in m[net].items():
            if value.is_floating_point():
                torch.testing.assert_close(value, (a[net][key] + b[net][key]) / 2)
            else:
                assert torch.equal(value, b[net][key])  # counters: the last checkpoint's
    (enc, dec), _ = load_frozen_parts(mean, ("encoder", "decoder"), [3, 32, 32])
    assert dec(enc.release(torch.zeros(2, 3, 32, 32), torch.ones(2, 1, 32, 32))).shape[0] == 2
    # One checkpoint, an existing output, an epoch twice, an average: one-line errors, nothing
    # written. (A checkpoint of another run is refused by its training config.)
    x = ckpts / "x.pt"
    assert avg.main([str(x), str(one)]) == 1
    assert avg.main([str(mean), str(one), str(two)]) == 1
    assert avg.main([str(x), str(two), str(ckpts / "last.pt")]) == 1
    assert avg.main([str(x), str(one), str(mean)]) == 1
    assert not x.exists()
    # Named last.pt by mistake, it is refused as a run to resume.
    mean.replace(ckpts / "last.pt")
    with pytest.raises(PpganError, match="is an averaged generator, not a training checkpoint"):
        run(*GAN, *judge_overrides(judges), "task.keep_every=1", name="kept")
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "error: average_checkpoints: give at least two checkpoints to average",
        f"error: average_checkpoints: {mean} exists; choose another name",
        "error: average_checkpoints: epochs [2, 2] repeat (last.pt and its epoch?)",
        f"error: average_checkpoints: {mean} is itself an average",
    ]


def test_average_checkpoints_recompute_bn_estimates_the_statistics_of_the_averaged_weights(
    run, judges, data_dir
):
    from ppgan.data import load_dataset
    from ppgan.engine.checkpoint import network_from
    from ppgan.engine.context import epoch_generator

    avg = load_experiment("average_checkpoints")
    _, out = run(*RID, *judge_overrides(judges), "task.keep_every=1", name="kept_rid")
    ckpts = out / "checkpoints"
    inputs = [str(ckpts / "epoch_0001.pt"), str(ckpts / "epoch_0002.pt")]
    plain, bn, again, seed1 = (ckpts / f"{n}.pt" for n in ("plain", "bn", "again", "seed1"))
    assert avg.main([str(plain), *inputs]) == 0
    assert avg.main([str(bn), *inputs, "--recompute-bn"]) == 0
    assert avg.main([str(again), *inputs, "--recompute-bn"]) == 0
    assert avg.main([str(seed1), *inputs, "--recompute-bn", "--seed", "1"]) == 0
    p, b, a, s1 = (torch.load(f, weights_only=True) for f in (plain, bn, again, seed1))
    stats = ("running_mean", "running_var", "num_batches_tracked")
    for net in ("encoder", "decoder"):
        for key, value in b[net].items():
            if key.endswith(stats):
                assert torch.equal(value, a[net][key]), key  # same seed, same statistics
            else:
                assert torch.equal(value, p[net][key]), key  # the weights: the plain mean
    assert any(not torch.equal(b["decoder"][k], s1["decoder"][k]) for k in b["decoder"])
    # The first BatchNorm layer follows the first convolution of the images. With the `code`
    # term off the encoder sees only the training images, so its mean is the plain mean of that
    # convolution's output over the pass's batches, not a blend with the averaged statistics.
    data = load_dataset(make_cfg(f"paths.data_dir={data_dir}").dataset)
    batch_size = b["train_config"]["task.batch_size"]
    order = epoch_generator(0, 0, "cpu", stream="recompute_bn")
    idx = torch.cat(list(data.index_batches("train", batch_size, True, order, drop_last=True)))
    n_batches = len(idx) // batch_size
    assert b["bn_recomputed"] == {
        "split": "train",
        "images": len(idx),
        "batch_size": batch_size,
        "seed": 0,
    }
    no_code = avg.average([ckpts / "epoch_0001.pt", ckpts / "epoch_0002.pt"])
    no_code["train_config"]["objective.loss.code"] = 0.0
    avg.recompute_bn(no_code)
    with torch.no_grad():
        conv = network_from(no_code, "encoder").image_branch[0](data.batch(idx)["images"])
    first = "image_branch.1."
    torch.testing.assert_close(no_code["encoder"][first + "running_mean"], conv.mean((0, 2, 3)))
    assert int(no_code["encoder"][first + "num_batches_tracked"]) == n_batches
    assert not torch.allclose(
        b["encoder"][first + "running_var"], p["encoder"][first + "running_var"]
    )
    # With it on (as trained), the encoder also reads each batch's release images.
    assert int(b["encoder"][first + "num_batches_tracked"]) == 2 * n_batches
    assert int(b["decoder"]["body.2.num_batches_tracked"]) == n_batches


def test_patience_comes_from_the_objectives_schedule():
    assert make_cfg("task=anonymizer", "model=rid_gan", "objective=pp_rid").task.patience == 8
    assert make_cfg("task=anonymizer").task.patience == 0  # PP-MIR: the paper's fixed schedule
    assert make_cfg("task=anonymizer", "objective=pp_sir").task.patience == 0


def test_patience_stops_early_and_keeps_the_full_schedules_choice(run, judges, monkeypatch):
    import ppgan.tasks.anonymizer as anonymizer

    # Scripted validation scores (lower is better): best at epoch 2, then two worse epochs.
    script = iter([3.0, 2.0, 2.5, 2.4, 1.0, 0.5])
    real = anonymizer.validate

    def scripted(*a, **k):
        val = real(*a, **k)
        return {**val, "score": next(script, val["score"])}

    monkeypatch.setattr(anonymizer, "validate", scripted)
    args = [*(a.replace("task.epochs=2", "task.epochs=6") for a in GAN), *judge_overrides(judges)]
    _, out = run(*args, "task.patience=2", name="patient")
    last = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    best = torch.load(out / "checkpoints" / "best.pt", weights_only=True)
    assert (last["epoch"], best["epoch"]) == (4, 2)
    # Re-running the stopped run dir trains nothing more, also with a patience it has run out
    # of (patience is not a config change; raising it would train on).
    run(*args, "task.patience=1", name="patient")
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 4
    # The kept checkpoint is the one the full schedule reached at that epoch (same seed).
    monkeypatch.setattr(anonymizer, "validate", real)
    _, two = run(*GAN, *judge_overrides(judges), name="two")
    ref = torch.load(two / "checkpoints" / "last.pt", weights_only=True)
    for k, v in best["encoder"].items():
        assert torch.equal(v, ref["encoder"][k]), k


def test_select_last_keeps_the_final_epoch_whatever_the_score(run, judges, monkeypatch):
    import ppgan.tasks.anonymizer as anonymizer

    cfg = make_cfg("task=anonymizer", "model=rid_gan", "objective=pp_rid_long")
    # (make_cfg's debug budget sets task.epochs; the schedule is the objective's)
    assert (cfg.objective.schedule.epochs, cfg.task.patience, cfg.task.select) == (100, 0, "last")
    assert make_cfg("task=anonymizer", "model=rid_gan", "objective=pp_rid").task.select == "best"
    # Scripted scores that only get worse: select=best would keep the first selectable epoch.
    script = iter([1.0, 2.0, 3.0])
    real = anonymizer.validate
    monkeypatch.setattr(
        anonymizer, "validate", lambda *a, **k: {**real(*a, **k), "score": next(script, 9.0)}
    )
    args = [*(a.replace("task.epochs=2", "task.epochs=3") for a in GAN), *judge_overrides(judges)]
    _, out = run(*args, "task.select=last", "task.selection_warmup=0", name="last")
    best = torch.load(out / "checkpoints" / "best.pt", weights_only=True)
    last = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert best["epoch"] == last["epoch"] == 3
    for k, v in best["decoder"].items():
        assert torch.equal(v, last["decoder"][k]), k
    # Resumed with one more epoch (a worse score): its own last epoch is kept, not epoch 3.
    more = [a.replace("task.epochs=3", "task.epochs=4") for a in args]
    metrics, _ = run(*more, "task.select=last", "task.selection_warmup=0", name="last")
    assert torch.load(out / "checkpoints" / "best.pt", weights_only=True)["epoch"] == 4
    assert metrics["best_epoch"] == 4
    with pytest.raises(PpganError, match=r"task.select=first: must be 'best' or 'last'"):
        run(*args, "task.select=first", name="bad")


def test_missing_or_mismatched_judges_are_clear_errors(run, judges, tmp_path):
    with pytest.raises(PpganError, match=r"task.identity_ckpt: required; train one"):
        run(*GAN, f"task.disease_ckpt={judges['disease']}")
    with pytest.raises(PpganError, match=r"task.disease_ckpt: .*needs in_shape=\[3, 48, 48\]"):
        run(*GAN, *judge_overrides(judges), "dataset.generator.size=48")
    with pytest.raises(PpganError, match=r"task.identity_ckpt: .*n_classes=6, but .*n_classes=5"):
        run(
            *GAN,
            *judge_overrides(judges),
            "dataset.generator.n_identities=5",
            f"task.disease_ckpt={judges['disease']}",
        )
    with pytest.raises(PpganError, match="task.siamese_ckpt: checkpoint .* does not exist"):
        run(*GAN, *judge_overrides(judges), f"task.siamese_ckpt={tmp_path / 'none.pt'}")


def test_export_round_trip(run, judges, tmp_path):
    _, gan = run(*GAN, *judge_overrides(judges), name="gan")
    ckpt = gan / "checkpoints" / "best.pt"
    metrics, out = run("task=export", f"task.checkpoint={ckpt}", name="export")
    path = out / "anonymized.h5"
    with h5py.File(path) as f:
        # No identity, no original masks, no attributes by default; an opaque id per case.
        assert set(f.keys()) == {"images", "dis", "set", "case_id"} and not f.attrs
        assert f["images"].dtype == "uint8" and f["images"].shape[1:] == (32, 32, 3)
    data = load_images(path, require_splits=("train", "val", "test"))
    assert len(data) == metrics["n_images"] == 90 and data.ids is None
    again, out2 = run("task=export", f"task.checkpoint={ckpt}", name="export2")
    with h5py.File(path) as a, h5py.File(out2 / "anonymized.h5") as b:
        rows_a, rows_b = (np.sort(f["images"][()].reshape(90, -1), axis=0) for f in (a, b))
        assert (rows_a == rows_b).all()  # z = mu: the same images...
        # ...in a fresh order each export (seen in `set`: a tiny GAN's images may all be alike)
        assert (a["set"][()] != b["set"][()]).any()
        assert set(a["case_id"][()]).isdisjoint(b["case_id"][()])
    _, out3 = run(
        "task=export",
        f"task.checkpoint={ckpt}",
        "task.keep_identity=true",
        "task.splits=[test]",
        name="export3",
    )
    test_only = load_images(out3 / "anonymized.h5", require_splits=("test",))
    assert test_only.ids is not None and len(test_only) == 12


def test_export_refuses_checkpoint_of_other_shape(run, judges):
    _, gan = run(*GAN, *judge_overrides(judges), name="gan")
    with pytest.raises(
        PpganError, match=r"task.checkpoint: .*in_shape=\[3, 32, 32\].*\[3, 48, 48\]"
    ):
        run(
            "task=export",
            f"task.checkpoint={gan / 'checkpoints' / 'best.pt'}",
            "dataset.generator.size=48",
            name="bad",
        )


def test_divergence_stops_clearly_and_keeps_last_good_checkpoint(run, judges, monkeypatch):
    import ppgan.gan.step as gan_step

    args = [*GAN, *judge_overrides(judges)]
    run(*[a.replace("task.epochs=2", "task.epochs=1") for a in args], name="div")
    # Resumed for epoch 2 (same config), every generator term turns NaN.
    terms = gan_step.generator_terms
    monkeypatch.setattr(
        gan_step,
        "generator_terms",
        lambda *a, **k: {n: t * float("nan") for n, t in terms(*a, **k).items()},
    )
    with pytest.raises(
        PpganError, match=r"training diverged: \S+ is not finite; last good checkpoint kept"
    ):
        run(*args, name="div")
    monkeypatch.undo()
    _, out = run(*[a.replace("task.epochs=2", "task.epochs=1") for a in args], name="div")
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 1


# PP-RID's mechanics on the trained generator itself: the release average (its default, half-life
# 2 epochs) is tested on its own below; on two tiny epochs it smooths the identity code's effect
# away below the export's 8-bit quantization.
RID = [
    *GAN,
    "model=rid_gan",
    "objective=pp_rid",
    "model.encoder.identity_dim=8",
    "objective.ema_half_life=0",
]


def test_rid_encoder_redraws_only_the_identity_code():
    from ppgan.models.vae import Encoder

    torch.manual_seed(0)
    enc = Encoder([3, 32, 32], z_dim=16, units=16, kernel=4, identity_dim=6).eval()
    x, m = torch.rand(4, 3, 32, 32) * 2 - 1, torch.ones(4, 1, 32, 32)
    (a, _), (b, _) = enc(x, m), enc(x, m)
    post, _ = enc.posterior(x, m)
    assert torch.equal(a[:, :10], post[:, :10]) and torch.equal(b[:, :10], post[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:])  # a new person per call...
    assert not torch.allclose(a[:, 10:], post[:, 10:])  # ...never the image's own code
    plain = Encoder([3, 32, 32], z_dim=16, units=16, kernel=4).eval()
    assert torch.equal(plain(x, m)[0], plain.posterior(x, m)[0])


def test_release_temperature_scales_the_posterior_noise_of_the_content(run):
    from ppgan.baselines import Generator, release_temperature
    from ppgan.models.vae import Encoder

    torch.manual_seed(0)
    x, m = torch.rand(4, 3, 32, 32) * 2 - 1, torch.ones(4, 1, 32, 32)
    for identity_dim in (0, 6):
        enc = Encoder([3, 32, 32], z_dim=16, units=16, kernel=4, identity_dim=identity_dim).eval()
        with torch.no_grad():  # sigma = exp(-1) != 1: a wrong sigma (exp(logvar), none) shows
            enc.logvar.bias.fill_(-2.0)
        k = 16 - identity_dim
        mu, logvar = enc.posterior(x, m)
        assert torch.equal(enc.release(x, m)[:, :k], mu[:, :k])  # 0: the content's mean
        for t in (0.5, 2.0):
            draws = [enc.release(x, m, t) for _ in range(50)]
            eps = torch.cat(
                [(z[:, :k] - mu[:, :k]) / torch.exp(0.5 * logvar[:, :k]) / t for z in draws]
            )
            assert 0.9 < eps.std().item() < 1.1 and abs(eps.mean().item()) < 0.1
            if identity_dim:  # the code is still a fresh N(0, I) draw, never the image's own
                codes = torch.cat([z[:, k:] for z in draws])
                assert 0.9 < codes.std().item() < 1.1 and not torch.allclose(codes[:4], mu[:, k:])
        with pytest.raises(ValueError, match="temperature=-1"):
            enc.release(x, m, -1)
        # task=evaluate's method: the same release, stochastic once a temperature is set
        gen = Generator("unused.pt", quantize=False, temperature=0.5)
        gen.enc, gen.dec = enc, nn.Identity()
        batch = {"images": x, "masks": m}
        assert gen.stochastic and not torch.equal(gen(batch), gen(batch))
        gen.temperature = 0.0
        assert gen.stochastic == bool(identity_dim)
        assert torch.equal(gen(batch)[:, :k], mu[:, :k])
    with pytest.raises(PpganError, match=r"task.temperature=-0.5: must be a finite number >= 0"):
        run("task=export", "task.checkpoint=none.pt", "task.temperature=-0.5", name="neg")
    # null is the checkpoint's own temperature: accepted, and the checkpoint is what is missing
    with pytest.raises(PpganError, match=r"task.checkpoint.*none.pt"):
        run("task=export", "task.checkpoint=none.pt", "task.temperature=null", name="null")
    with pytest.raises(PpganError, match=r"release_temperature=-1: must be a finite number"):
        release_temperature(None, {"release_temperature": -1}, "task.temperature")
    assert release_temperature(None, {}, "task.temperature") == 0.0  # older checkpoints: t = 0
    assert release_temperature(0.25, {"release_temperature": 0.5}, "task.temperature") == 0.25
    with pytest.raises(PpganError, match=r"objective.release_temperature=-1: must be a finite"):
        run(*GAN, "objective=pp_mir", "objective.release_temperature=-1", name="bad_t")
    with pytest.raises(PpganError, match=r"task.methods.\*.temperature=-1: must be a finite"):
        Generator("unused.pt", temperature=-1)
    with pytest.raises(PpganError, match=r"task.methods.\*.temperature=nan: must be a finite"):
        Generator("unused.pt", temperature=float("nan"))


def test_rid_trains_its_adversary_and_releases_random_people(run, judges, monkeypatch):
    from types import SimpleNamespace

    from ppgan.baselines import Generator

    metrics, out = run(*RID, *judge_overrides(judges), name="rid")
    for key in ("val/adaptive_acc", "val/disease_agreement", "val/score"):
        assert metrics[key] == metrics[key]
    ckpt = torch.load(out / "checkpoints" / "best.pt", weights_only=True)
    assert ckpt["variant"] == "rid" and {"encoder", "decoder", "adversary"} <= ckpt.keys()
    # objective=pp_rid's release temperature is recorded; what export (below) and evaluation
    # use unless told otherwise.
    assert ckpt["release_temperature"] == 0.5
    used: list[float] = []
    release = Encoder.release

    def spy(self, image, mask, temperature=0.0):
        used.append(temperature)
        return release(self, image, mask, temperature)

    monkeypatch.setattr(Encoder, "release", spy)
    data = SimpleNamespace(shape=ckpt["encoder_spec"]["in_shape"], device="cpu")
    ckpt_path = out / "checkpoints" / "best.pt"
    assert Generator(str(ckpt_path)).fit(data).temperature == 0.5
    assert Generator(str(ckpt_path), temperature=0.0).fit(data).temperature == 0.0
    run("task=export", f"task.checkpoint={ckpt_path}", "task.temperature=0", name="e0")
    assert used and set(used) == {0.0}
    used.clear()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(out / "tb"))
    ea.Reload()
    assert {"adversary/ce", "adversary/acc", "gen/adaptive", "gen/code", "gen/rec"} <= set(
        ea.Tags()["scalars"]
    )
    # Two exports of one checkpoint: the same cases drawn as different people.
    _, e1 = run("task=export", f"task.checkpoint={ckpt_path}", "task.splits=[test]", name="e1")
    _, e2 = run("task=export", f"task.checkpoint={ckpt_path}", "task.splits=[test]", name="e2")
    assert used and set(used) == {0.5}  # the checkpoint's
    with h5py.File(e1 / "anonymized.h5") as a, h5py.File(e2 / "anonymized.h5") as b:
        rows_a, rows_b = (np.sort(f["images"][()].reshape(12, -1), axis=0) for f in (a, b))
        assert (rows_a != rows_b).any()


def test_rid_latent_term_trains_checkpoints_its_bank_and_resumes(run, judges):
    # No refresh: the resumed run must then read the bank it saved.
    args = [*RID, "objective.loss.latent=1", "objective.latent_refresh=0", *judge_overrides(judges)]
    metrics, out = run(*args, name="latent")
    ckpt = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    bank = ckpt["latent_bank"]
    assert bank["valid"].any() and bank["latents"].shape[1] == ckpt["encoder_spec"]["z_dim"] - 8
    run(*[a.replace("task.epochs=2", "task.epochs=1") for a in args], name="resumed")
    resumed, _ = run(*args, name="resumed")
    assert resumed == pytest.approx(metrics, rel=1e-5)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(out / "tb"))
    ea.Reload()
    assert "gen/latent" in ea.Tags()["scalars"]


def test_configs_older_than_the_latent_term_still_match():
    """A checkpoint trained before `objective.loss.latent` (or `task.select`) existed is the
    term switched off (selection by the validation score)."""
    old = {"objective.loss.kl": 0.002}
    new = old | {"objective.loss.latent": 0.0, "objective.latent_refresh": 1}
    new |= {"task.select": "best"}
    assert config_changes(old, new) == ""
    assert "objective.loss.latent" in config_changes(old, new | {"objective.loss.latent": 1.0})
    assert "task.select" in config_changes(old, new | {"task.select": "last"})
    # ... and before the weight average and the recorded release temperature: neither, t = 0.
    new |= {"objective.ema_half_life": 0.0, "objective.release_temperature": 0.0}
    assert config_changes(old, new) == ""
    changed = config_changes(old, new | {"objective.release_temperature": 0.5})
    assert changed == "objective.release_temperature: 0.0 -> 0.5"


def test_identity_explained_variance_known_answers():
    ids, dis = torch.tensor([0, 0, 1, 1, 2, 2]), torch.zeros(6, dtype=torch.long)
    valid = torch.ones(6, dtype=torch.bool)
    apart = torch.tensor([[0.0, 0], [0, 0.1], [5, 5], [5.1, 5], [-5, 5], [-5, 5.1]])
    full = float(identity_explained_variance(apart, ids, dis, valid, 3, 1))
    assert full > 1.9  # about D = 2: identity explains (nearly) everything
    assert float(identity_explained_variance(apart * 1e-3, ids, dis, valid, 3, 1)) == (
        pytest.approx(full, rel=1e-3)  # scale-free: shrinking the latent does not hide it
    )
    mixed = torch.tensor([[0.0, 0], [5, 5], [5, 5], [0, 0], [0, 0], [5, 5]])
    assert float(identity_explained_variance(mixed, ids, dis, valid, 3, 1)) < 1e-6  # none
    # Beyond the disease: when the disease is what separates the rows, nothing is left.
    assert float(identity_explained_variance(apart, ids, ids, valid, 3, 3)) < 1e-3
    # Rows not yet in the bank count for nothing, whatever they hold.
    garbage = apart.clone()
    garbage[5] = torch.tensor([-100.0, 100.0])
    valid[5] = False
    assert float(identity_explained_variance(apart, ids, dis, valid, 3, 1)) == pytest.approx(
        float(identity_explained_variance(garbage, ids, dis, valid, 3, 1))
    )


def _probe_acc(z: torch.Tensor, labels: torch.Tensor, n_out: int) -> float:
    """A fresh MLP probe trained on half of `z`, scored on the other half."""
    torch.manual_seed(1)
    probe = nn.Sequential(nn.Linear(z.shape[1], 64), nn.ReLU(), nn.Linear(64, n_out))
    opt = torch.optim.Adam(probe.parameters(), 1e-2)
    for _ in range(300):
        opt.zero_grad()
        F.cross_entropy(probe(z[::2]), labels[::2]).backward()
        opt.step()
    return float((probe(z[1::2]).argmax(1) == labels[1::2]).float().mean())


@pytest.mark.parametrize("term", ["latent", "adaptive"])
def test_latent_independence_removes_identity_where_an_adversary_is_evaded(term):
    """A toy encoder whose inputs carry an identity and an independent binary finding, trained
    on batches of 32 to keep the finding and, either, to lower the `latent` term's identity
    share of the variance (over a bank of every item's latest latent), or to push an in-loop MLP
    adversary to uniform (`adaptive`). A *fresh* probe then reads identity at about chance after
    the first, and still almost perfectly after the second: the adversary is evaded, not
    answered."""
    torch.manual_seed(0)
    n_ids, n = 4, 512
    ids, finding = torch.randint(0, n_ids, (n,)), torch.randint(0, 2, (n,))
    dis = torch.zeros(n, dtype=torch.long)  # identity is to be removed entirely here
    x = torch.cat([F.one_hot(ids, n_ids), finding[:, None]], 1).float()
    x = x + 0.05 * torch.randn_like(x)
    enc = nn.Sequential(nn.Linear(n_ids + 1, 32), nn.ReLU(), nn.Linear(32, 8))
    head = nn.Linear(8, 2)
    adversary = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, n_ids))
    opt_a = torch.optim.Adam(adversary.parameters(), 1e-2)
    bank = LatentBank(n, 8, n_ids, 1).label(ids, dis)
    objective = Objective(variant="rid", weights={term: 1.0})
    assert _probe_acc(enc(x).detach(), ids, n_ids) > 0.95  # identity in the latent
    opt_g = torch.optim.Adam([*enc.parameters(), *head.parameters()], 1e-2)
    for _ in range(1000):
        b = {"index": torch.randperm(n)[:32]}
        b |= {"id": ids[b["index"]], "dis": dis[b["index"]]}
        if term == "adaptive":  # the adversary catches up on the current latents first
            for _ in range(5):
                opt_a.zero_grad()
                F.cross_entropy(adversary(enc(x[b["index"]]).detach()), b["id"]).backward()
                opt_a.step()
        z = enc(x[b["index"]])
        # `adaptive` judges the release with `adversary`: here the latent itself is "released".
        terms = random_identity_terms(
            *[None] * 3, z, *[None] * 6, adversary, objective, torch.ones(32, n_ids),
            content=z, batch=b, bank=bank,
        )  # fmt: skip
        bank.update(b["index"], z)
        loss = sum(objective.weights[k] * v for k, v in terms.items())
        opt_g.zero_grad()
        (loss + F.cross_entropy(head(z), finding[b["index"]])).backward()
        opt_g.step()
    z = enc(x).detach()
    assert _probe_acc(z, finding, 2) > 0.95  # the finding is kept either way
    if term == "latent":
        assert _probe_acc(z, ids, n_ids) < 0.4  # chance 0.25
    else:
        assert _probe_acc(z, ids, n_ids) > 0.9


def test_rid_needs_its_model_and_vae_gan_refuses_an_identity_code(run, judges):
    with pytest.raises(PpganError, match="objective=pp_rid needs an encoder with an identity"):
        run(*GAN, "objective=pp_rid", *judge_overrides(judges))
    with pytest.raises(PpganError, match="only objective=pp_rid uses an identity code"):
        run(*GAN, "model=rid_gan", "objective=pp_mir", *judge_overrides(judges))


def test_disease_feature_matching_known_answers():
    torch.manual_seed(0)
    judge = Classifier([1, 16, 16], 3).eval()
    real = torch.rand(8, 1, 16, 16)

    def feat(fake):
        return disease_terms(judge, real, fake, decision=False, features=True)["disease_feat"]

    assert feat(real).item() == pytest.approx(0.0, abs=1e-7)
    # In units of the originals' feature variance: scaling the network's features does not
    # change it, and a release of other images is off by about twice that variance.
    other = torch.rand(8, 1, 16, 16)
    value = feat(other).item()
    assert 0.5 < value < 5.0
    both = disease_terms(judge, real, other, decision=True, features=True)
    plain = disease_terms(judge, real, other, decision=True, features=False)
    assert both["disease"].item() == pytest.approx(plain["disease"].item(), rel=1e-6)
    judge.embed[0].weight.data *= 10
    judge.embed[0].bias.data *= 10
    assert feat(other).item() == pytest.approx(value, rel=1e-4)
    # One image: no batch variance, the floor keeps it finite.
    assert torch.isfinite(feature_matching(torch.rand(1, 4), torch.rand(1, 4)))
    with pytest.raises(PpganError, match="objective.loss.disease_feat"):
        disease_terms(nn.Linear(4, 3), real, other, features=True)


def test_rid_disease_feature_term_trains_and_is_logged(run, judges):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    metrics, out = run(*RID, "objective.loss.disease_feat=1", *judge_overrides(judges), name="df")
    ea = EventAccumulator(str(out / "tb"))
    ea.Reload()
    values = [e.value for e in ea.Scalars("gen/disease_feat")]
    assert values and all(v == v and v >= 0 for v in values)


def test_weight_average_known_answers():
    from ppgan.engine.ema import WeightAverage

    net = torch.nn.BatchNorm1d(2)
    with torch.no_grad():
        net.weight.fill_(0.0)
    ema = WeightAverage(net, half_life=2.0, rampup=1.0)
    assert not any(p.requires_grad for p in ema.avg.parameters()) and not ema.avg.training
    # Step 1: half-life min(2, 1·1) = 1 -> beta 0.5; step 2 on: min(2, 2) = 2 -> beta 0.5 ** 0.5.
    assert ema.beta(1) == pytest.approx(0.5) and ema.beta(5) == pytest.approx(0.5**0.5)
    with torch.no_grad():
        net.weight.fill_(4.0)
        net.running_mean.fill_(2.0)
        net.num_batches_tracked.fill_(7)
    ema.update(net)
    torch.testing.assert_close(ema.avg.weight, torch.full((2,), 2.0))
    torch.testing.assert_close(ema.avg.running_mean, torch.full((2,), 1.0))
    assert int(ema.avg.num_batches_tracked) == 7  # counters are copied, not averaged
    ema.update(net)  # 2 + (1 - 0.5 ** 0.5) · (4 - 2)
    torch.testing.assert_close(ema.avg.weight, torch.full((2,), 2 + (1 - 0.5**0.5) * 2))
    with pytest.raises(ValueError, match="must be > 0"):
        WeightAverage(net, half_life=0.0, rampup=1.0)


EMA = ["objective.ema_half_life=1"]


def test_ema_releases_the_average_while_the_trained_networks_keep_their_trajectory(
    run, judges, data_dir, monkeypatch
):
    import ppgan.tasks.anonymizer as anonymizer
    from ppgan.engine.checkpoint import load_frozen_parts

    # Every validation (hence selection) and sample grid runs the average: the frozen copy.
    shown = []
    for name in ("validate", "save_samples"):
        real = getattr(anonymizer, name)

        def spy(*a, _real=real, **k):
            nets = [x for x in a if isinstance(x, nn.Module)][:2]
            shown.append(all(not p.requires_grad for net in nets for p in net.parameters()))
            return _real(*a, **k)

        monkeypatch.setattr(anonymizer, name, spy)

    # Three epochs, so that a resume from epoch 1 goes through a later epoch's update too.
    rid = [a for a in RID if not a.startswith("objective.ema_half_life")]
    args = [a.replace("task.epochs=2", "task.epochs=3") for a in [*rid, *judge_overrides(judges)]]
    _, plain = run(*args, "objective.ema_half_life=0", name="plain")
    assert shown and not any(shown)  # without EMA the trained networks themselves
    shown.clear()
    metrics, out = run(*args, *EMA, name="ema")
    assert len(shown) >= 4 and all(shown)
    last = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    ref = torch.load(plain / "checkpoints" / "last.pt", weights_only=True)
    # The averages draw nothing from the random stream: the trained networks are the plain run's.
    for net in ("encoder", "decoder"):
        for key, value in ref[net].items():
            torch.testing.assert_close(last[f"{net}_live"][key], value, rtol=1e-5, atol=1e-6)
    # What the run keeps as encoder/decoder is the average, not the last iterate.
    moved = [
        (last["decoder"][k] - v).abs().max()
        for k, v in ref["decoder"].items()
        if v.is_floating_point()
    ]
    assert max(moved) > 1e-3
    (enc, dec), _ = load_frozen_parts(
        out / "checkpoints" / "best.pt", ("encoder", "decoder"), [3, 32, 32]
    )
    assert dec(enc(torch.zeros(2, 3, 32, 32), torch.ones(2, 1, 32, 32))[0]).shape == (2, 3, 32, 32)
    # A run killed after epoch 1 resumes to the same averages (the ramp-up's step count too).
    run(*[a.replace("task.epochs=3", "task.epochs=1") for a in args], *EMA, name="resumed")
    resumed, out2 = run(*args, *EMA, name="resumed")
    assert resumed == pytest.approx(metrics, rel=1e-5)
    again = torch.load(out2 / "checkpoints" / "last.pt", weights_only=True)
    for key, value in last["decoder"].items():
        torch.testing.assert_close(again["decoder"][key], value, rtol=1e-5, atol=1e-6)
    # The reported metrics are the kept average's: validation recomputed from best.pt's
    # encoder/decoder reproduces them, and the trained networks of that epoch give other numbers.
    best = torch.load(out / "checkpoints" / "best.pt", weights_only=True)
    assert any(
        not torch.equal(best["encoder"][k], v)
        for k, v in best["encoder_live"].items()
        if v.is_floating_point()
    )
    cfg = make_cfg("debug=tiny", f"paths.data_dir={data_dir}", *args, *EMA)
    assert _validate_checkpoint(cfg, best, "") == pytest.approx(
        {k[4:]: v for k, v in metrics.items() if k.startswith("val/")}, rel=1e-5
    )
    assert _validate_checkpoint(cfg, best, "_live")["disease_ce"] != pytest.approx(
        metrics["val/disease_ce"], rel=1e-4
    )
    for bad in ("-1", "true", "abc", "nan", "inf"):
        with pytest.raises(
            PpganError, match=r"objective.ema_half_life=.*: must be a finite number >= 0"
        ):
            run(*args, f"objective.ema_half_life={bad}", name="bad")


def _validate_checkpoint(cfg, ckpt: dict, suffix: str) -> dict[str, float]:
    """The anonymizer's validation of `ckpt`'s encoder{suffix}/decoder{suffix}, as a run ends."""
    from ppgan.data import load_dataset
    from ppgan.engine.checkpoint import frozen_from
    from ppgan.engine.judges import load_judges
    from ppgan.tasks.anonymizer import validate

    data = load_dataset(cfg.dataset, require_splits=("train", "val"))
    judges = load_judges(cfg.task, data, torch.device("cpu"), ("disease",))
    enc, dec, adversary = (
        frozen_from(ckpt, name) for name in (f"encoder{suffix}", f"decoder{suffix}", "adversary")
    )
    torch.manual_seed(cfg.seed)
    return validate(enc, dec, judges, data, cfg, adversary)
