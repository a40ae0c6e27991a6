"""Average the generator weights of several checkpoints of one training run into one checkpoint.

Stochastic weight averaging (Izmailov et al., "Averaging Weights Leads to Wider Optima and Better
Generalization", UAI 2018) and the averaged generators of GAN training (Yazici et al., "The
Unusual Effectiveness of Averaging in GAN Training", ICLR 2019; the generator EMA of ProGAN and
StyleGAN) release a mean of the weights along the trajectory instead of its last point, whose
numbers move from one epoch to the next. Here the points are checkpoints kept by
`task.keep_every` (README, "Resume"); the result is read by task=export, task=evaluate
(`ppgan.baselines.Generator`) and task=explain like any `best.pt`.

What is averaged: every floating-point tensor of the encoder and the decoder, BatchNorm's
running means and variances included (a plain mean of the statistics, not recomputed on the
training data as SWA's `update_bn` would: the release path's statistics mix reconstructions and
random codes, and recomputing them is a choice of its own). Integer tensors (BatchNorm's batch
counters), `epoch` and the rest of the metadata come from the last checkpoint given. Only the
generator and what describes it are kept (the networks' specs, the training config, `variant`,
`margin`, `n_ids`, `n_classes`, `averaged_from`): no critic, in-loop adversary, optimizer or RNG
state, so the result cannot be resumed as a training run. The inputs must be distinct epochs of
one run (the same training config, up to its budget).

    python experiments/average_checkpoints.py OUT.pt IN1.pt IN2.pt [...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ppgan.engine.checkpoint import load_checkpoint, save_checkpoint
from ppgan.engine.context import config_changes
from ppgan.errors import PpganError

PARTS = ("encoder", "decoder")
META = ("train_config", "variant", "margin", "n_ids", "n_classes", "epoch")


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("inputs", type=Path, nargs="+")
    args = parser.parse_args(argv)
    try:
        if args.out.exists():
            raise PpganError(f"average_checkpoints: {args.out} exists; choose another name")
        payload = average(args.inputs)
    except PpganError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    save_checkpoint(args.out, payload)
    print(f"{args.out}: mean of epochs {payload['averaged_from']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
