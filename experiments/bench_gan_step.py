"""Benchmark: PP-MIR / PP-SIR training iterations per second, timing the training loop's own step.

The step is `ppgan.gan.anonymizer_step`, exactly what `task=anonymizer` runs each iteration, built
from the composed config (objective, optimizers, networks); only the judges have random weights
(speed only). Settings: the default (CPU-sized) and the paper's network sizes, fp32 and, on CUDA,
bf16 autocast. Writes one JSON line per setting to stdout.

    python experiments/bench_gan_step.py [--device cuda] [--iters 30] [--objective pp_sir]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from collections.abc import Iterator

import torch

from ppgan.config import compose_config
from ppgan.engine import build
from ppgan.engine.judges import Judges
from ppgan.gan import anonymizer_step
from ppgan.models.classifier import Classifier
from ppgan.models.siamese import EmbeddingNet


def make_step(overrides: list[str], device: str, amp: bool, batch: int, n_ids: int = 40):
    """The real training step for `overrides`, on random data of the paper's shape."""
    cfg = compose_config(["task=anonymizer", *overrides, f"trainer.device={device}"])
    m, shape = cfg.model, [3, 64, 64]
    enc, dec, critic = (
        build(n, in_shape=shape).to(device) for n in (m.encoder, m.decoder, m.critic)
    )

    def frozen(net: torch.nn.Module) -> torch.nn.Module:
        return net.to(device).eval().requires_grad_(False)

    judges = Judges(
        disease=frozen(Classifier(shape, 2)),
        identity=frozen(Classifier(shape, n_ids)),
        siamese=frozen(EmbeddingNet(shape)),
    )
    opt_g = build(cfg.optimizer, params=[*enc.parameters(), *dec.parameters()])
    opt_c = build(cfg.critic_optimizer, params=critic.parameters())
    refs = judges.siamese(torch.rand(n_ids, *shape, device=device) * 2 - 1).float()

    def autocast() -> contextlib.AbstractContextManager:
        if amp and device.startswith("cuda"):
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    step = anonymizer_step(enc, dec, critic, opt_g, opt_c, judges, cfg.objective, refs, autocast)
    return step, cfg


def random_stream(batch: int, device: str) -> Iterator[dict]:
    images = torch.rand(batch, 3, 64, 64, device=device) * 2 - 1
    b = {"images": images, "masks": torch.ones(batch, 1, 64, 64, device=device)}
    while True:
        yield b


def bench(overrides: list[str], device: str, amp: bool, iters: int, batch: int) -> dict:
    step, cfg = make_step(overrides, device, amp, batch)
    stream = random_stream(batch, device)
    for _ in range(3):  # warm-up (cuDNN autotuning, allocator)
        step(stream)
    times = []
    for _ in range(iters):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        step(stream)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    ms = 1000 * statistics.median(times)
    obj = cfg.objective
    return {
        "preset": " ".join(overrides) or "default",
        "device": device,
        "amp_bf16": amp,
        "batch": batch,
        "n_critic": obj.n_critic,
        "n_gen": obj.n_gen,
        "ms_per_iter": ms,
        "iters_per_s": 1000 / ms,
        "images_per_s": 1000 / ms * batch * (obj.n_critic + obj.n_gen),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--objective", default="pp_mir", choices=["pp_mir", "pp_sir"])
    args = p.parse_args()
    presets = [[f"objective={args.objective}"], [f"experiment=paper_{args.objective}"]]
    for preset in presets:
        for amp in [False, True] if args.device.startswith("cuda") else [False]:
            print(json.dumps(bench(preset, args.device, amp, args.iters, 64)), flush=True)


if __name__ == "__main__":
    main()
