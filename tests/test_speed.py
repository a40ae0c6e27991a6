"""Speed: the benchmark times the loop's own step, the trainer's switches parse and apply, the
critic phase's one-forward scoring, the original's three-update structure, the lazy penalty."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from torch import nn

import ppgan.gan.step as step_mod
from ppgan.engine import RunContext, Selection, build_model
from ppgan.engine.speed import Speed, memory_format_of
from ppgan.errors import PpganError
from ppgan.gan import GanStep, critic_phase
from ppgan.gan.step import critic_scores
from ppgan.models.critic import Critic
from ppgan.models.subpixel import SubpixelConv2d, to_subpixel
from ppgan.models.vae import Decoder
from tests.conftest import load_experiment, make_cfg

ROOT = Path(__file__).resolve().parents[1]


def load_bench():
    return load_experiment("bench_gan_step")


def test_benchmark_times_the_training_loops_own_step(monkeypatch, capsys, tmp_path):
    bench = load_bench()
    assert bench.anonymizer_step is step_mod.anonymizer_step  # not a copy of it
    calls = []
    real_call = GanStep.__call__

    def spy(self, stream):
        calls.append(self)
        return real_call(self, stream)

    monkeypatch.setattr(GanStep, "__call__", spy)
    out = tmp_path / "bench.jsonl"
    args = ["--device", "cpu", "--iters", "1", "--warmup", "0", "--batch", "4"]
    args += ["--objectives", "pp_mir", "--presets", "default", "--out", str(out)]
    bench.main([*args, "--settings", "reference", "bf16+channels_last"])
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert capsys.readouterr().out.splitlines() == out.read_text().splitlines()
    by_setting = {x["setting"]: x for x in lines if "setting" in x}
    assert "error" not in by_setting["reference"], by_setting["reference"]
    # One counted + one timed iteration per setting, all through GanStep.__call__.
    assert len(calls) == 4
    assert {c.critic_updates for c in calls} == {"separate", "combined"}
    fast = by_setting["bf16+channels_last"]
    assert fast["dtype"] == "bfloat16" and fast["trainer"]["channels_last"]
    assert fast["flops_per_iter"] > 0 and fast["ms_per_iter"] > 0
    assert by_setting["reference"]["ratio_to_reference"] == 1.0
    assert lines[-1]["summary"] == "pp_mir default"
    assert lines[-1]["fastest"] == "bf16+channels_last"  # the reference is not a candidate


def test_benchmark_reports_a_failing_setting_and_goes_on(monkeypatch, capsys):
    bench = load_bench()

    def broken(*args, **kwargs):
        raise RuntimeError("no kernel")

    monkeypatch.setattr(bench, "make_step", broken)
    args = ["--device", "cpu", "--iters", "1", "--objectives", "pp_mir", "--presets", "default"]
    bench.main([*args, "--settings", "fp32"])
    line = json.loads(capsys.readouterr().out.splitlines()[0])
    assert line["setting"] == "fp32" and line["error"].startswith("RuntimeError: no kernel")


def test_trainer_switches_parse_and_apply_on_the_cpu(tmp_path):
    cfg = make_cfg(
        "task=anonymizer",
        "trainer.amp=true",
        "trainer.channels_last=true",
        "trainer.fused_adam=true",
    )
    ctx = RunContext(cfg, tmp_path)
    assert ctx.speed.amp_dtype == torch.bfloat16 and ctx.speed.channels_last
    assert not ctx.speed.cudnn_benchmark and not ctx.speed.tf32  # CUDA-only flags
    critic, spec = build_model(cfg.model.critic, in_shape=[3, 32, 32])
    opt = torch.optim.Adam(critic.parameters())
    assert memory_format_of(critic) == torch.contiguous_format
    ctx.resume({"critic": (critic, spec)}, {"opt_c": opt}, Selection(patience=0))
    assert memory_format_of(critic) == torch.channels_last
    assert opt.param_groups[0]["fused"]
    with ctx.autocast():  # bf16 autocast on the CPU
        out = critic.body[0](torch.rand(2, 3, 32, 32))
    assert out.dtype == torch.bfloat16
    assert out.is_contiguous(memory_format=torch.channels_last)
    critic(torch.rand(2, 3, 32, 32)).sum().backward()
    opt.step()  # fused Adam runs on the CPU


def test_trainer_switch_defaults_keep_the_cpu_plain_fp32():
    speed = Speed.from_config(make_cfg().trainer, torch.device("cpu"))
    assert speed == Speed(device=torch.device("cpu"))
    on_cuda = Speed.from_config(make_cfg().trainer, torch.device("cuda"))
    assert on_cuda.channels_last and on_cuda.fused_adam and on_cuda.cudnn_benchmark
    assert on_cuda.amp_dtype is None


@pytest.mark.parametrize("native", [True, False, None])
def test_cpu_amp_warns_only_where_bf16_is_emulated(monkeypatch, caplog, native):
    """On a CPU without native bf16 kernels autocast ran 16.8x slower than fp32: say so, once, at
    the start of the run; where the kernels are native (or this build cannot tell) say nothing."""
    import ppgan.engine.speed as speed_mod

    monkeypatch.setattr(speed_mod, "cpu_bf16_native", lambda: native)
    trainer = make_cfg("trainer.amp=true").trainer
    with caplog.at_level("WARNING", logger="ppgan.engine.speed"):
        speed = Speed.from_config(trainer, torch.device("cpu"))
        Speed.from_config(make_cfg().trainer, torch.device("cpu"))  # amp off: nothing to say
    assert speed.amp_dtype == torch.bfloat16  # the user's choice stands either way
    warned = [r.getMessage() for r in caplog.records if r.name == "ppgan.engine.speed"]
    assert len(warned) == (1 if native is False else 0)
    assert all("trainer.amp=true" in w and "16.8x" in w for w in warned)


def test_cpu_bf16_native_answers_on_this_build():
    from ppgan.engine.speed import cpu_bf16_native

    native = cpu_bf16_native()
    if native is None:
        pytest.skip("this PyTorch build has no torch.ops.mkldnn._is_mkldnn_bf16_supported")
    assert native in (True, False)


@pytest.mark.parametrize(
    "override, message",
    [
        ("trainer.channels_last=maybe", "trainer.channels_last=maybe"),
        ("trainer.amp_dtype=float64", "trainer.amp_dtype=float64"),
    ],
)
def test_bad_trainer_switch_is_a_one_line_error(tmp_path, override, message):
    cfg = make_cfg("trainer.amp=true", override)
    with pytest.raises(PpganError, match=message):
        RunContext(cfg, tmp_path)


def tiny_critic() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 8), nn.LeakyReLU(0.2), nn.Linear(8, 1))


def batches():
    gen = torch.Generator().manual_seed(1)
    while True:
        yield {"images": torch.rand(6, 3, 4, 4, generator=gen)}


def fake_of(b: dict) -> torch.Tensor:
    return b["images"].flip(0) * 0.5


def test_one_forward_scores_equal_two():
    critic = tiny_critic()
    real, fake = torch.rand(5, 3, 4, 4), torch.rand(5, 3, 4, 4)
    for one_forward in (True, False, None):  # None: one forward on CUDA only
        d_real, d_fake = critic_scores(critic, real, fake, one_forward)
        assert torch.allclose(d_real, critic(real)) and torch.allclose(d_fake, critic(fake))
    with_bn = nn.Sequential(nn.BatchNorm2d(3), critic)  # batch statistics: two forwards
    d_real, d_fake = critic_scores(with_bn, real, fake, one_forward=True)
    assert torch.allclose(d_real, with_bn(real)) and torch.allclose(d_fake, with_bn(fake))


def count_penalties(monkeypatch) -> list[int]:
    calls = []
    real_gp = step_mod.gradient_penalty

    def spy(critic, real, fake):
        calls.append(len(real))
        return real_gp(critic, real, fake)

    monkeypatch.setattr(step_mod, "gradient_penalty", spy)
    return calls


@pytest.mark.parametrize("k", [1, 3])
def test_lazy_penalty_every_kth_critic_step_weighted_k(monkeypatch, k):
    calls = count_penalties(monkeypatch)
    critic = tiny_critic()
    opt = torch.optim.SGD(critic.parameters(), lr=0.0)  # lr 0: the terms are comparable
    for first in range(6):
        n = len(calls)
        terms = critic_phase(critic, opt, batches(), fake_of, 1, 10.0, gp_every=k, first_step=first)
        penalised = first % k == 0
        assert len(calls) - n == int(penalised)
        if penalised:
            expect = terms["wasserstein"] + k * 10.0 * terms["gp"]
            assert float(terms["loss"].detach()) == pytest.approx(float(expect.detach()))
        else:
            assert "gp" not in terms and torch.equal(terms["loss"], terms["wasserstein"])


def test_gan_step_counts_critic_steps_across_iterations(monkeypatch):
    calls = count_penalties(monkeypatch)
    critic, gen = tiny_critic(), nn.Linear(1, 1)
    step = GanStep(
        critic=critic,
        opt_c=torch.optim.Adam(critic.parameters()),
        opt_g=torch.optim.Adam(gen.parameters()),
        fake_of=fake_of,
        terms_of=lambda b: {"adv": -critic(fake_of(b) * gen.weight.sum()).mean()},
        weights={"adv": 1.0},
        n_critic=2,
        n_gen=1,
        gp_weight=10.0,
        gp_every=3,
    )
    stream = batches()
    logged = [step(stream) for _ in range(3)]  # critic steps 0..5: penalised at 0 and 3
    assert len(calls) == 2 and step.critic_steps == 6
    assert all(torch.isfinite(t["critic/gp"]) for t in logged)  # the latest penalty is logged
    # Kept across iterations without its autograd graph (which would hold the critic's gradient
    # accumulators and activations: memory, and a CUDA-graph capture error).
    assert step.last_gp is not None and step.last_gp.grad_fn is None


def test_separate_updates_take_three_optimizer_steps_per_round():
    critic = tiny_critic()
    opt = torch.optim.Adam(critic.parameters())
    steps = []
    opt.register_step_post_hook(lambda *a: steps.append(1))
    terms = critic_phase(critic, opt, batches(), fake_of, 2, 10.0, updates="separate")
    assert len(steps) == 6
    assert set(terms) == {"wasserstein", "gp", "loss"}
    with pytest.raises(ValueError, match="critic updates"):
        critic_phase(critic, opt, batches(), fake_of, 1, 10.0, updates="fused")


@pytest.mark.parametrize("kernel", [2, 4, 8])
@pytest.mark.parametrize("cls", [nn.Conv2d, nn.ConvTranspose2d])
def test_subpixel_convolution_is_the_same_function_and_gradients(cls, kernel):
    """trainer.subpixel: the stride-1 form computes the stride-2 convolution's output, input
    gradient and weight gradient, twice differentiable (the gradient penalty), on non-square
    inputs; and keeps the module's parameters and state_dict."""
    torch.manual_seed(0)
    plain = cls(3, 5, kernel, stride=2, padding=(kernel - 2) // 2).double()
    fast = copy.deepcopy(plain)
    assert to_subpixel(fast) == 1 and type(fast) is not cls
    assert fast.state_dict().keys() == plain.state_dict().keys()
    x = torch.randn(2, 3, 8, 12, dtype=torch.double, requires_grad=True)
    outs = []
    for m in (plain, fast):
        y = m(x)
        (gx, gw) = torch.autograd.grad(y.square().sum(), [x, m.weight], create_graph=True)
        (ggw,) = torch.autograd.grad(gx.square().sum(), [m.weight])  # double backward
        outs.append((y, gx, gw, ggw))
    assert outs[0][0].shape == outs[1][0].shape
    for a, b in zip(*outs):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-10)
    odd = torch.randn(2, 3, 9, 7, dtype=torch.double)  # Conv2d floors: the plain path
    assert torch.allclose(plain(odd), fast(odd), rtol=1e-10, atol=1e-10)


def test_subpixel_keeps_the_channels_last_layout():
    """With channels_last weights (trainer.channels_last) a plain convolution's output is NHWC
    although its input is not; the stride-1 form must give the same layout, or every layer
    converts back and forth."""
    critic = Critic([3, 32, 32], channels=(8, 16), kernel=4).eval()  # no dropout draws
    critic = critic.to(memory_format=torch.channels_last)
    fast = copy.deepcopy(critic)
    assert to_subpixel(fast) == 2
    x = torch.rand(2, 3, 32, 32)  # NCHW, as the batches come
    for net in (critic, fast):
        h = x
        for layer in net.body[:4]:
            h = layer(h)
            if isinstance(layer, nn.Conv2d):
                assert h.is_contiguous(memory_format=torch.channels_last), type(layer).__name__
    assert torch.allclose(critic(x), fast(x), atol=1e-5)
    dec = Decoder([3, 32, 32], z_dim=8, units=16, kernel=4, start_channels=8)
    dec = dec.to(memory_format=torch.channels_last)
    assert to_subpixel(dec) == 4
    y = dec.body[0](torch.rand(2, 8, 2, 2))
    assert y.is_contiguous(memory_format=torch.channels_last)


def test_subpixel_swaps_only_eligible_convolutions_and_applies_as_a_switch(tmp_path):
    net = nn.Sequential(
        nn.Conv2d(3, 4, 8, stride=2, padding=3),  # the models' stride-2 'same' convolution
        nn.Conv2d(4, 4, 3, padding=1),  # stride 1: left alone
        nn.Conv2d(4, 4, 4, stride=2, padding=0),  # not 'same': left alone
        nn.ConvTranspose2d(4, 4, 4, stride=2, padding=1, output_padding=0),
    )
    assert to_subpixel(net) == 2
    assert [type(m).__name__ for m in net] == [
        "SubpixelConv2d",
        "Conv2d",
        "Conv2d",
        "SubpixelConvTranspose2d",
    ]
    cfg = make_cfg("task=anonymizer", "trainer.subpixel=true")
    ctx = RunContext(cfg, tmp_path)
    enc, spec = build_model(cfg.model.encoder, in_shape=[3, 32, 32])
    x, mask = torch.rand(2, 3, 32, 32), torch.ones(2, 1, 32, 32)
    enc.eval()
    before = enc(x, mask)[0]
    ctx.resume({"encoder": (enc, spec)}, {}, Selection(patience=0))
    assert isinstance(enc.image_branch[0], SubpixelConv2d)
    assert torch.allclose(enc(x, mask)[0], before, atol=1e-5)
