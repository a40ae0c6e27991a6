"""Data-parallel training under torchrun: process group, the rank-0 run dir, sharded batches,
DistributedDataParallel with synchronised BatchNorm.

One process per device. `task.batch_size` stays the *global* batch: every rank draws the same
global batch from the same seeded generator and keeps its own contiguous part of it, so N ranks
with B/N images each train on exactly the images one process sees with batch B. Rank 0 alone
writes the run dir; the other ranks write nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from ppgan.errors import PpganError

log = logging.getLogger(__name__)

# What torchrun sets in every worker's environment.
TORCHRUN_ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK")


def launched_world_size() -> int:
    """WORLD_SIZE of a torchrun launch (1 when not launched by torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def launched_rank() -> int:
    return int(os.environ.get("RANK", "0"))


@dataclass(frozen=True)
class Dist:
    """This process's place in the job; every collective is a no-op for a single process.

    Attributes:
        joined: a member of a torchrun job's process group (also with WORLD_SIZE=1 and
            `trainer.distributed=true`, which runs the data-parallel code on one device).
    """

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    joined: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.joined:
            dist.barrier()

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (e.g. generating the cached data set), then the others."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    def broadcast(self, obj):
        """Rank 0's `obj` on every rank (picklable objects: paths, dicts of floats)."""
        if not self.joined:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def sum(self, tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Element-wise sums over ranks (one all-reduce per tensor; per epoch, not per step)."""
        out = {k: v.detach().clone() for k, v in tensors.items()}
        if self.joined:
            for v in out.values():
                dist.all_reduce(v)
        return out

    def mean(self, tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Means over ranks: the global-batch mean of per-rank means over equal shards."""
        return {k: v / self.world for k, v in self.sum(tensors).items()}

    def part(self, idx: Tensor) -> Tensor:
        """This rank's contiguous part of a global batch of indices (sizes differ by at most 1)."""
        return idx if self.world == 1 else idx.tensor_split(self.world)[self.rank]

    def scale(self, loss: Tensor, n_local: int, n_global: int) -> Tensor:
        """A per-rank mean loss weighted so that DDP's average over ranks of the gradients is the
        gradient of the global batch's mean, also when the shards differ in size (a last,
        incomplete batch)."""
        if self.world == 1 or n_local * self.world == n_global:
            return loss
        return loss * (self.world * n_local / n_global)

    def check_batch(self, batch_size: int, n_items: int, what: str, drop_last: bool) -> None:
        """Every rank needs images in every batch: the global batch must split evenly, and (when
        the last incomplete batch is kept) that last batch must give every rank at least one."""
        if self.world == 1:
            return
        if batch_size % self.world:
            raise PpganError(
                f"task.batch_size={batch_size}: not divisible by the {self.world} ranks "
                f"(WORLD_SIZE) of {what}; it is the global batch, each rank trains on "
                f"batch_size / WORLD_SIZE images, so choose a multiple of {self.world}"
            )
        last = 0 if drop_last else n_items % batch_size
        if 0 < last < self.world:
            raise PpganError(
                f"task.batch_size={batch_size}: the last batch of {what} ({last} of {n_items}) "
                f"leaves a rank of {self.world} without images; choose a batch size whose "
                f"remainder is 0 or at least {self.world}"
            )

    def wrap(self, module: nn.Module, sync_batchnorm: bool) -> nn.Module:
        """`module` for training: itself for one process, else DDP (with BatchNorm synchronised
        over ranks when `sync_batchnorm`). Checkpoints keep using `module`, never the wrapper."""
        if not self.joined:
            return module
        if sync_batchnorm:
            convert_batchnorm(module)
        device = next(module.parameters()).device
        return DistributedDataParallel(
            module, device_ids=[device] if device.type == "cuda" else None
        )


def current() -> Dist:
    """The job as torch.distributed knows it (a single process when no group is initialised)."""
    if not (dist.is_available() and dist.is_initialized()):
        return Dist()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    return Dist(dist.get_rank(), dist.get_world_size(), local_rank, joined=True)


def wanted(setting: bool | str) -> bool:
    """Whether this process joins a data-parallel job (`trainer.distributed`): `auto` under
    torchrun with WORLD_SIZE > 1, `true` under any torchrun (WORLD_SIZE=1 runs the data-parallel
    code on one device: a smoke test of the backend), `false` never."""
    world = launched_world_size()
    missing = [k for k in TORCHRUN_ENV if k not in os.environ]
    if setting == "auto":
        return world > 1 and not missing
    if setting is True or setting == "true":
        if missing:
            raise PpganError(
                f"trainer.distributed=true: not launched by torchrun ({', '.join(missing)} "
                "unset); run `torchrun --nproc_per_node=N -m ppgan ...`"
            )
        return True
    if setting is False or setting == "false":
        if world > 1:
            raise PpganError(
                f"trainer.distributed=false: launched by torchrun with WORLD_SIZE={world}; every "
                "rank would train the whole run into the same run dir"
            )
        return False
    raise PpganError(f"trainer.distributed={setting}: must be auto, true or false")


@contextlib.contextmanager
def process_group(trainer_cfg: Mapping, multirun: bool = False) -> Iterator[Dist]:
    """Join the torchrun job for the block (gloo on CPU, nccl on CUDA, one device per rank)."""
    if not wanted(trainer_cfg.get("distributed", "auto")):
        yield Dist()
        return
    if multirun:
        raise PpganError(
            "-m (multirun) under torchrun: one torchrun per run; sweeps fan out with "
            "hydra/launcher=slurm (README, 'Scaling up')"
        )
    local_rank = int(os.environ["LOCAL_RANK"])
    device = str(trainer_cfg.get("device", "auto"))
    cuda = torch.cuda.is_available() and (device == "auto" or device.startswith("cuda"))
    backend = trainer_cfg.get("dist_backend", "auto")
    if backend == "auto":
        backend = "nccl" if cuda else "gloo"
    kwargs = {}
    if cuda:
        torch.cuda.set_device(local_rank)
        kwargs["device_id"] = torch.device("cuda", local_rank)
    timeout = timedelta(minutes=float(trainer_cfg.get("dist_timeout_min", 30)))
    dist.init_process_group(backend, timeout=timeout, **kwargs)
    try:
        yield current()
    finally:
        dist.destroy_process_group()


def shared_run_dir(own: Path, where: Dist) -> Path:
    """Rank 0's Hydra run dir on every rank.

    Hydra names the run dir per process (`${now:...}` can differ by a second between ranks), so
    the ranks take rank 0's. Another rank's own dir, if it differs, is empty (its Hydra writes no
    `.hydra/` and no log file, see `ppgan.__main__`) and is removed again.
    """
    shared = Path(where.broadcast(str(Path(own).resolve())))
    if not where.is_main and Path(own).resolve() != shared:
        with contextlib.suppress(OSError):  # not empty: not ours to remove
            Path(own).rmdir()
    return shared


def worker_overrides(argv: list[str]) -> list[str]:
    """Hydra overrides for torchrun ranks other than 0: no `.hydra/` config copy, no log file
    (console only, warnings and errors), so that rank 0 alone writes the run dir."""
    if launched_world_size() <= 1 or launched_rank() == 0:
        return []
    extra = ["hydra.output_subdir=null"]
    if not any(a.lstrip("+~").startswith("hydra/job_logging") for a in argv):
        extra.append("hydra/job_logging=ppgan_worker")
    return extra


class SyncBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the global batch over all ranks.

    In training mode (with more than one rank) the per-channel mean and variance come from one
    differentiable all-reduce of (count, Σ(x − K), Σ(x − K)²), K = the running mean (identical
    on every rank; the shift keeps E[x²] − E[x]² away from cancellation once it has warmed up).
    Its backward all-reduces the gradients of those sums, so DDP's averaged gradient equals the
    single-process gradient of the global batch. Evaluation mode is plain BatchNorm2d.
    torch.nn.SyncBatchNorm would do the same on CUDA only (it refuses CPU tensors, so gloo runs
    and the CPU tests could not use it); this one runs on both.
    """

    def forward(self, x: Tensor) -> Tensor:  # [N, C, H, W]
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        shift = (
            self.running_mean.detach()
            if self.track_running_stats
            else x.new_zeros(self.num_features)
        )
        centred = x.float() - shift[None, :, None, None]
        count = centred.new_full((1,), float(x.shape[0] * x.shape[2] * x.shape[3]))
        local = torch.cat([count, centred.sum((0, 2, 3)), centred.pow(2).sum((0, 2, 3))])
        n, s1, s2 = _AllReduceSum.apply(local).split([1, self.num_features, self.num_features])
        mean_shifted = s1 / n
        var = (s2 / n - mean_shifted.pow(2)).clamp(min=0)  # biased, as BatchNorm normalises
        mean = shift + mean_shifted
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                # momentum=None: a cumulative average, as in BatchNorm2d.
                tracked = float(self.num_batches_tracked)
                factor = 1.0 / tracked if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
                unbiased = var * n / (n - 1).clamp(min=1)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)
        y = (x.float() - mean[None, :, None, None]) * torch.rsqrt(var + self.eps)[
            None, :, None, None
        ]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y.to(x.dtype)


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; the gradient of each rank's input is the sum of the output gradients."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def convert_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d under `module` (in place) by a `SyncBatchNorm2d` that shares its
    parameters and buffers, so optimizers and checkpoints keep working (same state_dict keys)."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            sync = SyncBatchNorm2d(
                child.num_features,
                child.eps,
                child.momentum,
                child.affine,
                child.track_running_stats,
            )
            sync.weight, sync.bias = child.weight, child.bias
            for buf in ("running_mean", "running_var", "num_batches_tracked"):
                setattr(sync, buf, getattr(child, buf))
            sync.train(child.training)
            setattr(module, name, sync)
        else:
            convert_batchnorm(child)
    return module
