"""How much identity the content part of a PP-RID checkpoint's release latent still carries.

    python experiments/probe_content.py CHECKPOINT DATA.h5 [--json OUT]

Encodes every image as the release does (eval mode, posterior mean, identity code dropped),
then fits fresh probes on the training split and scores them on the validation split: identity
(linear and MLP; chance 1 / #identities) and disease (linear), and prints
`identity_explained_variance` on each split with its sampling floor (D * #identities / #images),
and on the checkpoint's latent bank when it has one. The release image depends on the person
only through this content, so identity a probe reads here is what a release could carry.
"""

from __future__ import annotations

import argparse
import json

import h5py
import torch
import torch.nn.functional as F
from torch import nn

from ppgan.engine.checkpoint import network_from
from ppgan.losses.privacy import identity_explained_variance


def probe(z, y, n_classes, train, test, hidden: int) -> float:
    torch.manual_seed(0)
    mean, std = z[train].mean(0), z[train].std(0) + 1e-6
    z = (z - mean) / std
    d = z.shape[1]
    net = (
        nn.Linear(d, n_classes)
        if hidden == 0
        else nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, n_classes))
    )
    opt = torch.optim.Adam(net.parameters(), 1e-2, weight_decay=1e-4)
    for _ in range(500):
        opt.zero_grad()
        F.cross_entropy(net(z[train]), y[train]).backward()
        opt.step()
    with torch.no_grad():
        return float((net(z[test]).argmax(1) == y[test]).float().mean())


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("data")
    ap.add_argument("--json")
    args = ap.parse_args()
    ckpt = torch.load(args.checkpoint, weights_only=True)
    enc = network_from(ckpt, "encoder", args.checkpoint).eval()
    with h5py.File(args.data) as f:
        images = torch.from_numpy(f["images"][()]).float() / 127.5 - 1
        masks = torch.from_numpy(f["masks"][()]).float() if "masks" in f else None
        ids, dis, sets = (torch.from_numpy(f[k][()]).long() for k in ("id", "dis", "set"))
    x = images[:, None] if images.ndim == 3 else images.permute(0, 3, 1, 2)
    m = masks[:, None] if masks is not None else torch.ones(len(x), 1, *x.shape[2:])
    mu = torch.cat([enc.posterior(x[i : i + 64], m[i : i + 64])[0] for i in range(0, len(x), 64)])
    content = enc.split(mu)[0]
    n_ids, n_dis = int(ids.max()) + 1, int(dis.max()) + 1
    train, val = sets == 0, sets == 1
    out = {"checkpoint": args.checkpoint, "content_dim": content.shape[1], "chance_id": 1 / n_ids}
    with torch.enable_grad():
        out["probe_id_linear"] = probe(content, ids, n_ids, train, val, 0)
        out["probe_id_mlp"] = probe(content, ids, n_ids, train, val, 128)
        out["probe_disease_linear"] = probe(content, dis, n_dis, train, val, 0)
    for name, sel in (("train", train), ("val", val)):
        every = torch.ones(int(sel.sum()), dtype=torch.bool)
        value = identity_explained_variance(content[sel], ids[sel], dis[sel], every, n_ids, n_dis)
        out[f"explained_variance_{name}"] = float(value)
        out[f"explained_variance_{name}_floor"] = content.shape[1] * n_ids / int(sel.sum())
    bank = ckpt.get("latent_bank")
    if bank is not None:
        v = bank["valid"]
        every = torch.ones(int(v.sum()), dtype=torch.bool)
        out["explained_variance_bank"] = float(
            identity_explained_variance(
                bank["latents"][v], bank["ids"][v], bank["dis"][v], every, n_ids, n_dis
            )
        )
    print(json.dumps(out))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
