"""Benchmark: PP-MIR training iterations per second (critic + generator steps) on this machine.

Random weights (speed only): the default (CPU-sized) and the paper's network sizes, fp32 and bf16
autocast on CUDA. Writes a JSON line per setting to stdout.

    python experiments/bench_gan_step.py [--device cuda] [--iters 30]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time

import torch

from ppgan.config import compose_config
from ppgan.engine import build
from ppgan.engine.judges import Judges
from ppgan.losses.adversarial import critic_terms
from ppgan.losses.combine import weighted_sum
from ppgan.losses.generator import generator_terms
from ppgan.models.classifier import Classifier
from ppgan.models.vae import reparameterize


def bench(preset: list[str], device: str, amp: bool, iters: int, batch: int) -> dict:
    cfg = compose_config(["task=anonymizer", "model=pp_mir", *preset, f"trainer.device={device}"])
    m = cfg.model
    shape = [3, 64, 64]
    enc, dec, critic = (
        build(n, in_shape=shape).to(device) for n in (m.encoder, m.decoder, m.critic)
    )
    judges = Judges(
        disease=Classifier(shape, 2).to(device).eval().requires_grad_(False),
        identity=Classifier(shape, 40).to(device).eval().requires_grad_(False),
    )
    opt_g = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=1e-4)
    opt_c = torch.optim.Adam(critic.parameters(), lr=1e-4)
    real = torch.rand(batch, *shape, device=device) * 2 - 1
    mask = torch.ones(batch, 1, 64, 64, device=device)
    model_cfg = dict(m)
    weights = dict(m.loss)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if amp and device == "cuda"
        else contextlib.nullcontext()
    )

    def step() -> None:
        critic.requires_grad_(True)
        for _ in range(m.n_critic):
            with torch.no_grad(), autocast:
                fake = dec(reparameterize(*enc(real, mask)))
            with autocast:
                t = critic_terms(critic, real, fake.float())
            loss_c = t["wasserstein"] + 10 * t["gp"]
            opt_c.zero_grad(set_to_none=True)
            loss_c.backward()
            opt_c.step()
        critic.requires_grad_(False)
        for _ in range(m.n_gen):
            with autocast:
                mu, logvar = enc(real, mask)
                fake = dec(reparameterize(mu, logvar))
                loss_g = weighted_sum(
                    generator_terms(real, mask, fake, mu, logvar, critic, judges, model_cfg),
                    weights,
                )
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()

    for _ in range(3):  # warm-up (cuDNN autotuning, allocator)
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {
        "preset": " ".join(preset) or "default",
        "device": device,
        "amp_bf16": amp,
        "batch": batch,
        "n_critic": m.n_critic,
        "n_gen": m.n_gen,
        "iters_per_s": iters / seconds,
        "images_per_s": iters * batch * (m.n_critic + m.n_gen) / seconds,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--iters", type=int, default=30)
    args = p.parse_args()
    presets = [[], ["experiment=paper_pp_mir"]]
    for preset in presets:
        for amp in [False, True] if args.device == "cuda" else [False]:
            print(json.dumps(bench(preset, args.device, amp, args.iters, 64)), flush=True)


if __name__ == "__main__":
    main()
