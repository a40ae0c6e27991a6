"""Average the generator weights of several checkpoints of one training run into one checkpoint.

Stochastic weight averaging (Izmailov et al., "Averaging Weights Leads to Wider Optima and Better
Generalization", UAI 2018) and the averaged generators of GAN training (Yazici et al., "The
Unusual Effectiveness of Averaging in GAN Training", ICLR 2019; the generator EMA of ProGAN and
StyleGAN) release a mean of the weights along the trajectory instead of its last point, whose
numbers move from one epoch to the next. Here the points are checkpoints kept by
`task.keep_every` (README, "Resume"); the result is read by task=export, task=evaluate
(`ppgan.baselines.Generator`) and task=explain like any `best.pt`.

What is averaged: every floating-point tensor of the encoder and the decoder, BatchNorm's
running means and variances included. By default the statistics are a plain mean of the
checkpoints' statistics. With `--recompute-bn` they are estimated afresh for the averaged
weights, as SWA's `torch.optim.swa_utils.update_bn` does: every BatchNorm layer's statistics are
reset and accumulated as a plain (cumulative) mean over one pass of the training split, in
batches of the run's `task.batch_size` (last incomplete batch dropped, order drawn from
`--seed`), with the networks in training mode and the forward passes of the generator phase of
training (`ppgan.gan.rid.random_identity_step` and `ppgan.gan.step.anonymizer_step`): the encoder
on the training images; the decoder on a draw z ~ N(mu, sigma^2) and, for PP-RID, in the same
batch on the release latent (the content of z with a fresh N(0, I) identity code); for PP-RID
with the `code` term on, the encoder again on that release image. A weight average's statistics
are not the average of its points' statistics (the activations of averaged weights are not the
averaged activations), which is why SWA recomputes them; the critic phase's passes are left out
(they show the same two kinds of input). The training data is the file the run's config names
(`dataset.path`, `dataset.mask_path`), relative paths read from the working directory.

Integer tensors (BatchNorm's batch counters), `epoch` and the rest of the metadata come from the
last checkpoint given. Only the generator and what describes it are kept (the networks' specs,
the training config, `variant`, `margin`, `n_ids`, `n_classes`, `averaged_from`, and with
`--recompute-bn` what the statistics were computed on, `bn_recomputed`): no critic, in-loop
adversary, optimizer or RNG state, so the result cannot be resumed as a training run. The inputs
must be distinct epochs of one run (the same training config, up to its budget).

    python experiments/average_checkpoints.py OUT.pt IN1.pt IN2.pt [...] [--recompute-bn]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import nn

from ppgan.data import load_dataset
from ppgan.engine.checkpoint import load_checkpoint, network_from, save_checkpoint
from ppgan.engine.context import config_changes, epoch_generator
from ppgan.errors import PpganError
from ppgan.models.vae import reparameterize

PARTS = ("encoder", "decoder")
META = ("train_config", "variant", "release_temperature", "margin", "n_ids", "n_classes", "epoch")


def average(paths: list[Path]) -> dict:
    """The averaged checkpoint of `paths` (at least two, the same networks)."""
    if len(paths) < 2:
        raise PpganError("average_checkpoints: give at least two checkpoints to average")
    ckpts = [load_checkpoint(p, "average_checkpoints") for p in paths]
    last = ckpts[-1]
    for path, ckpt in zip(paths, ckpts, strict=True):
        for key in (*PARTS, "epoch", "train_config"):
            if key not in ckpt:
                raise PpganError(f"average_checkpoints: {path} has no '{key}' (not a generator)")
        if "averaged_from" in ckpt:
            raise PpganError(f"average_checkpoints: {path} is itself an average")
        for part in PARTS:
            if ckpt.get(f"{part}_spec") != last.get(f"{part}_spec"):
                raise PpganError(f"average_checkpoints: {path} holds another '{part}' network")
        # Budget and output keys are ignored: the epochs of one run kept along the way.
        if changes := config_changes(ckpt["train_config"], last["train_config"]):
            raise PpganError(f"average_checkpoints: {path} is of another run ({changes})")
    epochs = [int(c["epoch"]) for c in ckpts]
    if len(set(epochs)) < len(epochs):
        raise PpganError(f"average_checkpoints: epochs {epochs} repeat (last.pt and its epoch?)")
    payload = {k: last[k] for k in META if k in last}
    for part in PARTS:
        payload[f"{part}_spec"] = last[f"{part}_spec"]
        state = {}
        for key, value in last[part].items():
            if value.is_floating_point():
                wide = torch.promote_types(value.dtype, torch.float32)  # fp16/bf16 summed in fp32
                stacked = torch.stack([c[part][key].to(wide) for c in ckpts])
                state[key] = stacked.mean(0).to(value.dtype)
            else:
                state[key] = value
        payload[part] = state
    payload["averaged_from"] = epochs
    return payload


@torch.no_grad()
def recompute_bn(payload: dict, seed: int = 0) -> None:
    """Replace the BatchNorm statistics of `payload`'s encoder and decoder (in place) by those of
    its weights on the training split (module docstring, `--recompute-bn`)."""
    config = payload["train_config"]
    dataset = OmegaConf.create({})
    for key, value in config.items():
        if key.startswith("dataset."):
            OmegaConf.update(dataset, key.removeprefix("dataset."), value, force_add=True)
    data = load_dataset(dataset, require_splits=("train",))
    enc, dec = (network_from(payload, part, "average_checkpoints") for part in PARTS)
    norms = [
        m
        for m in (*enc.modules(), *dec.modules())
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
    ]
    if not norms:
        raise PpganError(
            "average_checkpoints: --recompute-bn: the generator has no BatchNorm layer"
        )
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative mean over the pass, as update_bn
    enc.train(), dec.train()  # dropout on, as in the training passes the statistics come from
    identity_dim = getattr(enc, "identity_dim", 0)
    code_term = float(config.get("objective.loss.code") or 0.0) > 0  # PP-RID only
    batch_size = int(config["task.batch_size"])
    torch.manual_seed(seed)  # the draws of z and of the identity codes
    order = epoch_generator(seed, 0, data.device, stream="recompute_bn")
    n = 0
    for b in data.batches("train", batch_size, shuffle=True, generator=order, drop_last=True):
        real, mask = b["images"], b["masks"]
        z = reparameterize(*enc.posterior(real, mask))
        if identity_dim:
            content, _ = enc.split(z)
            code = torch.randn(len(real), identity_dim, device=z.device, dtype=z.dtype)
            _, fake = dec(torch.cat([z, torch.cat([content, code], 1)])).chunk(2)
            if code_term:
                enc.posterior(fake, mask)
        else:
            dec(z)
        n += len(real)
    if not n:
        raise PpganError(f"average_checkpoints: --recompute-bn: no training batch of {batch_size}")
    payload["encoder"], payload["decoder"] = enc.state_dict(), dec.state_dict()
    payload["bn_recomputed"] = {
        "split": "train",
        "images": n,
        "batch_size": batch_size,
        "seed": seed,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("inputs", type=Path, nargs="+")
    parser.add_argument(
        "--recompute-bn",
        action="store_true",
        help="estimate BatchNorm statistics for the averaged weights on the training split",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="batch order and draws of --recompute-bn"
    )
    args = parser.parse_args(argv)
    try:
        if args.out.exists():
            raise PpganError(f"average_checkpoints: {args.out} exists; choose another name")
        payload = average(args.inputs)
        if args.recompute_bn:
            recompute_bn(payload, args.seed)
    except PpganError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    save_checkpoint(args.out, payload)
    bn = payload.get("bn_recomputed")
    how = f", BatchNorm statistics recomputed on {bn['images']} training images" if bn else ""
    print(f"{args.out}: mean of epochs {payload['averaged_from']}{how}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
