"""How wide an encoder's posterior is, against how far its means spread across images: the scale
a release temperature (`Encoder.release`, README "A second data shape") works on.

    python experiments/posterior_spread.py <anonymizer checkpoint> <data.h5> [--split val]
        [--json out.json]

For the content part of the latent (the identity code of PP-RID is left out: it is redrawn
anyway), prints the mean over dimensions of the standard deviation of `mu` across the split's
images and the mean posterior sigma `exp(logvar / 2)`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ppgan.data.hdf5 import load_images
from ppgan.engine import load_frozen_parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("data")
    parser.add_argument("--split", default="val")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    data = load_images(args.data, require_splits=(args.split,))
    (enc,), _ = load_frozen_parts(
        args.checkpoint, ("encoder",), data.shape, torch.device("cpu"), "checkpoint"
    )
    with torch.no_grad():
        mu, logvar = (
            torch.cat(parts)
            for parts in zip(
                *(enc.posterior(b["images"], b["masks"]) for b in data.batches(args.split, 64))
            )
        )
    content, content_logvar = enc.split(mu)[0], enc.split(logvar)[0]
    out = {
        "checkpoint": args.checkpoint,
        "split": args.split,
        "n_images": len(mu),
        "content_dims": content.shape[1],
        "mu_std_across_images": round(content.std(0).mean().item(), 4),
        "posterior_sigma": round(torch.exp(0.5 * content_logvar).mean().item(), 4),
    }
    print(json.dumps(out))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
