"""The worker of tests/test_distributed.py's spawned gloo job, in a module of its own so that
each spawned process imports only what it needs (not the test module's imports)."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ppgan.engine.distributed import current, shared_run_dir
from ppgan.losses.adversarial import critic_terms
from ppgan.models.classifier import Classifier
from ppgan.models.critic import Critic
from ppgan.models.vae import Decoder, Encoder, reparameterize

WORLD = 2
SHAPE = [3, 16, 16]


def _relative_grad_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    """The largest difference of two networks' gradients, relative to the largest gradient."""
    pairs = list(zip(a.parameters(), b.parameters()))
    scale = max(float(q.grad.abs().max()) for _, q in pairs)
    return max(float((p.grad - q.grad).abs().max()) for p, q in pairs) / scale


def gradient_worker(rank: int, store: str, run_dirs: list[str]) -> None:
    """Per rank: a WGAN-GP critic step (double backward), a VAE generator step with synced
    BatchNorm and a classifier step on uneven shards (4 + 3 images), each DDP-wrapped on this
    rank's part of the batch, against the same steps on the whole batch in one process (each
    rank's random draws replayed from the seed that rank used)."""
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        where = current()
        own = Path(run_dirs[rank])
        own.mkdir(exist_ok=True)  # what each rank's Hydra creates
        assert shared_run_dir(own, where) == Path(run_dirs[0]).resolve()

        torch.manual_seed(0)  # the same networks and data on every rank
        critic = Critic(SHAPE, channels=[4, 8, 8, 8], kernel=4, hidden=8, dropout=0.0)
        enc = Encoder(SHAPE, z_dim=4, units=16, kernel=4, dropout=0.0)
        dec = Decoder(SHAPE, z_dim=4, units=16, kernel=4, start_channels=8)
        clf = Classifier(SHAPE, 3, channels=[4, 4], kernels=[3, 3], hidden=8, dropout=0.0)
        real, fake = torch.rand(2, 8, *SHAPE) * 2 - 1
        mask = (torch.rand(8, 1, *SHAPE[1:]) > 0.5).float()
        labels = torch.randint(3, (7,))
        nets = {"critic": critic, "enc": enc, "dec": dec, "clf": clf}
        one = {name: copy.deepcopy(net) for name, net in nets.items()}
        ddp = {name: where.wrap(net, sync_batchnorm=True) for name, net in nets.items()}

        def critic_loss(net, r, f):
            terms = critic_terms(net, r, f)
            return terms["wasserstein"] + 10 * terms["gp"]

        torch.manual_seed(100 + rank)
        critic_loss(ddp["critic"], where.part(real), where.part(fake)).backward()
        mu, logvar = ddp["enc"](where.part(real), where.part(mask))
        rec = ddp["dec"](reparameterize(mu, logvar))
        ((rec - where.part(real)).pow(2).mean() + mu.pow(2).mean()).backward()
        mine = where.part(torch.arange(7))
        loss = F.cross_entropy(ddp["clf"](real[mine]), labels[mine])
        where.scale(loss, len(mine), 7).backward()

        # One process, the whole batch. The critic has no BatchNorm: the mean of the per-shard
        # losses is the whole batch's loss, with each shard's interpolation draw.
        total = 0
        for r in range(WORLD):
            torch.manual_seed(100 + r)
            shard = real.tensor_split(WORLD)[r], fake.tensor_split(WORLD)[r]
            total = total + critic_loss(one["critic"], *shard) / WORLD
        total.backward()
        eps = []  # each rank's latent noise, drawn after its interpolation draw
        for r in range(WORLD):
            torch.manual_seed(100 + r)
            torch.rand(4, 1, 1, 1)
            eps.append(torch.randn(4, 4))
        mu, logvar = one["enc"](real, mask)
        rec = one["dec"](mu + torch.cat(eps) * torch.exp(0.5 * logvar))
        ((rec - real).pow(2).mean() + mu.pow(2).mean()).backward()
        F.cross_entropy(one["clf"](real[:7]), labels).backward()

        for name, net in nets.items():
            assert _relative_grad_diff(net, one[name]) < 1e-5, name
            for a, b in zip(net.buffers(), one[name].buffers()):
                assert torch.allclose(a.float(), b.float(), atol=1e-5), f"{name} BN statistics"
    finally:
        dist.destroy_process_group()
