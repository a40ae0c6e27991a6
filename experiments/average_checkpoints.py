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
counters) and the metadata come from the last checkpoint given. The critic, the in-loop adversary
and the optimizer states are left out, so the result cannot be resumed as a training run.

    python experiments/average_checkpoints.py OUT.pt IN1.pt IN2.pt [...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ppgan.engine.checkpoint import load_checkpoint, save_checkpoint
from ppgan.errors import PpganError

PARTS = ("encoder", "decoder")


def average(paths: list[Path]) -> dict:
    """The averaged checkpoint of `paths` (at least two, the same networks)."""
    if len(paths) < 2:
        raise PpganError("average_checkpoints: give at least two checkpoints to average")
    ckpts = [load_checkpoint(p, "average_checkpoints") for p in paths]
    last = ckpts[-1]
    for path, ckpt in zip(paths, ckpts, strict=True):
        for part in PARTS:
            if part not in ckpt:
                raise PpganError(f"average_checkpoints: {path} has no '{part}' (not a generator)")
            if ckpt.get(f"{part}_spec") != last.get(f"{part}_spec"):
                raise PpganError(f"average_checkpoints: {path} holds another '{part}' network")
    payload = {k: v for k, v in last.items() if k not in PARTS and not k.endswith("_opt")}
    for drop in ("critic", "critic_spec", "adversary", "adversary_spec", "selection"):
        payload.pop(drop, None)
    for part in PARTS:
        state = {}
        for key, value in last[part].items():
            if value.is_floating_point():
                stacked = torch.stack([c[part][key].float() for c in ckpts])
                state[key] = stacked.mean(0).to(value.dtype)
            else:
                state[key] = value
        payload[part] = state
    payload["averaged_from"] = [int(c["epoch"]) for c in ckpts]
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
