"""The run context: device, seeding, TensorBoard, progress bars, checkpoints and final metrics."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from ppgan.engine import distributed
from ppgan.engine.checkpoint import load_checkpoint, save_checkpoint
from ppgan.engine.speed import Speed
from ppgan.errors import PpganError

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present; an explicit `cuda` without a GPU is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise PpganError(f"trainer.device={name}: CUDA is not available on this machine")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise PpganError(f"trainer.device={name}: {exc}") from exc


def rank_device(name: str, local_rank: int) -> torch.device:
    """A torchrun rank's GPU: cuda:LOCAL_RANK (one process per device)."""
    if name not in ("auto", "cuda"):
        raise PpganError(
            f"trainer.device={name}: under torchrun each rank uses cuda:LOCAL_RANK; "
            "set trainer.device=cuda or auto (CUDA_VISIBLE_DEVICES picks the GPUs)"
        )
    return torch.device("cuda", local_rank)


def seed_everything(seed: int) -> None:
    """Seed every RNG a run touches; same seed on the same CPU gives the same metrics."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.backends.cudnn.benchmark = False


def _stream_id(name: str) -> int:
    return zlib.crc32(name.encode())


def epoch_generator(
    seed: int,
    epoch: int,
    device: torch.device | str = "cpu",
    stream: str = "shuffle",
    n_pass: int = 0,
) -> torch.Generator:
    """A generator for one epoch's shuffling/sampling, a function of (seed, stream, epoch, pass).

    Because the order does not depend on how many epochs ran in this process, a resumed run
    draws exactly the batches an uninterrupted run would have drawn. The four numbers are mixed
    by `numpy.random.SeedSequence`, so no two (seed, stream, epoch, pass) share a stream (an
    affine formula such as `seed * K + epoch` collides: seed 0 at epoch K equals seed 1 at 0).
    """
    if min(seed, epoch, n_pass) < 0:
        raise ValueError(f"epoch_generator: negative seed/epoch/pass ({seed}, {epoch}, {n_pass})")
    state = np.random.SeedSequence([seed, _stream_id(stream), epoch, n_pass]).generate_state(2)
    g = torch.Generator(device=device)
    g.manual_seed(int(state[0]) << 32 | int(state[1]))
    return g


def fit_batch_size(n: int, batch_size: int, what: str) -> int:
    """The batch size for a split of `n` images: `batch_size`, or `n` (with a warning) when the
    split is smaller, so that a loop that drops the last incomplete batch still gets one batch
    per pass instead of none (which would never end). An empty split is a user error.
    """
    if n == 0:
        raise PpganError(f"{what}: the training split is empty")
    if n < batch_size:
        log.warning(
            "%s: only %d training images, fewer than task.batch_size=%d; using batches of %d",
            what,
            n,
            batch_size,
            n,
        )
        return n
    return batch_size


# Where things are, not what is trained: never a reason to refuse a run dir.
LOCATION_KEYS = ("dataset.data_dir", "dataset.in_memory_max_gb")
# What is written along the way, not what is trained: kept checkpoints (`RunContext.end_epoch`).
OUTPUT_KEYS = ("task.keep_every",)
# When training stops. Each epoch's randomness is a function of the seed and the epoch alone, so
# more epochs or an early stop (`patience`) extend or end the same trajectory: a run dir may be
# resumed after they change, but a finished pipeline stage trained for another budget is not the
# one asked for (ppgan.pipeline).
BUDGET_KEYS = (
    "task.epochs",
    "task.patience",
    "objective.schedule.epochs",
    "objective.schedule.patience",
)


def training_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config of a training run, flattened to `group.key: value`.

    Stored in every training checkpoint; resuming a run dir with a different one is refused
    (`config_changes`).
    """
    return flatten_groups(
        cfg, ("model", "objective", "task", "dataset", "optimizer", "critic_optimizer")
    )


# What a key that an older checkpoint does not record means, for `config_changes`: the value
# that reproduces those runs (PP-RID's `latent` and `disease_feat` terms are off at 0, the
# latent refresh period does nothing while it is off, one independent disease network, model
# selection by the validation score, no weight average, released at the posterior mean), or
# `UNRECORDED` for budget keys older checkpoints did not store (not compared: their budget is
# unknown), so older run dirs resume and their finished pipeline stages are reused.
UNRECORDED = object()
LATER_KEYS: dict[str, Any] = {
    "objective.loss.latent": 0.0,
    "objective.loss.disease_feat": 0.0,
    "task.indep_networks": 1,
    "objective.latent_refresh": 1,
    "task.select": "best",
    "objective.ema_half_life": 0.0,
    "objective.ema_rampup": 0.5,
    "objective.release_temperature": 0.0,
    **dict.fromkeys(BUDGET_KEYS, UNRECORDED),
}


def config_changes(
    before: dict[str, Any],
    after: dict[str, Any],
    ignore: tuple[str, ...] = LOCATION_KEYS + OUTPUT_KEYS + BUDGET_KEYS,
) -> str:
    """The keys (less `ignore`) whose values differ between two `training_config`s, as
    `key: old -> new` (at most four shown); empty when they are the same. `before` may come
    from an older checkpoint: a key it lacks reads as `LATER_KEYS` says. The default ignores
    what a resumed run may change."""

    def value(config: dict[str, Any], key: str) -> Any:
        return config.get(key, LATER_KEYS.get(key, "<unset>"))

    keys = sorted(
        k
        for k in before.keys() | after.keys()
        if k not in ignore
        and value(before, k) is not UNRECORDED
        and value(before, k) != value(after, k)
    )
    shown = ", ".join(f"{k}: {value(before, k)!r} -> {value(after, k)!r}" for k in keys[:4])
    return shown + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")


def run_file(out_dir: Path, name: str, key: str = "task.filename") -> Path:
    """The path of an output file named by the config (`key`): a plain `.h5` file name inside
    the run dir. Anything else (`/data/x.h5`, `../x.h5`, a hidden name) could replace a file the
    run does not own, such as the input data: a one-line `PpganError` before anything is read."""
    name = str(name)
    if Path(name).name != name or name.startswith(".") or not name.endswith(".h5"):
        raise PpganError(
            f"{key}={name}: a plain file name ending in .h5 (written into the run dir)"
        )
    return Path(out_dir) / name


def write_text(path: Path, text: str) -> None:
    """Write a text file atomically (temp file + rename): a reader never sees half of it."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write JSON atomically (temp file + rename)."""
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def file_stamp(path: str | Path) -> dict[str, Any]:
    """What identifies a file's version cheaply: resolved path, size and modification time."""
    path = Path(path).resolve()
    st = path.stat()
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _flat_hparams(cfg: DictConfig) -> dict[str, Any]:
    """The config groups that define a run, flattened to scalars for TensorBoard's HParams tab."""
    return {
        k: v if isinstance(v, bool | int | float | str) else str(v)
        for k, v in flatten_groups(cfg, ("task", "model", "optimizer", "dataset")).items()
    }


def flatten_groups(cfg: DictConfig, groups: tuple[str, ...]) -> dict[str, Any]:
    """`seed` and the resolved config groups `groups`, flattened to `group.key: value`."""
    out: dict[str, Any] = {"seed": cfg.get("seed")}
    for group in groups:
        node = cfg.get(group)
        if isinstance(node, DictConfig):
            node = OmegaConf.to_container(node, resolve=True)
        stack = [(group, node if node is not None else {})]
        while stack:
            prefix, value = stack.pop()
            if isinstance(value, dict) and value:
                stack.extend((f"{prefix}.{k}", v) for k, v in value.items())
            else:
                out[prefix] = value
    return dict(sorted(out.items()))


class _NullWriter:
    """What ranks other than 0 get for TensorBoard: every call does nothing."""

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


class RunContext:
    """Everything a task's loop needs from its surroundings, bound to one Hydra run dir.

    Under torchrun (`ppgan.engine.distributed`) rank 0 alone writes: run dir, TensorBoard,
    checkpoints, metrics.json; every rank reads the checkpoints and returns the same metrics.
    """

    def __init__(self, cfg: DictConfig, out_dir: Path):
        self.cfg = cfg
        self.dist = distributed.current()
        self.out_dir = Path(out_dir)
        if self.dist.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        self.device = resolve_device(cfg.trainer.device)
        if self.dist.joined and self.device.type == "cuda":
            self.device = rank_device(cfg.trainer.device, self.dist.local_rank)
        self.seed = int(cfg.seed)
        if self.seed < 0:
            raise PpganError(f"seed={self.seed}: must be >= 0")
        seed_everything(self.seed)
        self.ckpt_dir = self.out_dir / "checkpoints"
        keep = self.keep_every = cfg.task.get("keep_every", 0)
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 0:
            raise PpganError(f"task.keep_every={keep!r}: must be an integer >= 0")
        # The trainer's speed switches (autocast, channels_last, cuDNN/TF32 flags, fused Adam,
        # compile): the backend flags now, the rest on the networks in `resume`.
        self.speed = Speed.from_config(cfg.trainer, self.device)
        self.speed.apply_backends()
        self.amp_dtype = self.speed.amp_dtype
        self._writer: SummaryWriter | None = None
        self.train_config = training_config(cfg)

    @property
    def writer(self) -> SummaryWriter:
        if not self.dist.is_main:
            return _NullWriter()
        if self._writer is None:
            self._writer = SummaryWriter(str(self.out_dir / "tb"))
        return self._writer

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        """The module to train: itself, or under torchrun its DistributedDataParallel wrapper
        (`trainer.sync_batchnorm`: BatchNorm statistics of the global batch)."""
        return self.dist.wrap(module, bool(self.cfg.trainer.get("sync_batchnorm", True)))

    def seed_epoch(self, epoch: int) -> None:
        """Under torchrun, seed this rank's global RNG (dropout, latent samples, penalty
        interpolation) from (seed, epoch, rank): ranks draw independent noise, and a resumed
        run draws what an uninterrupted one would have drawn. One process keeps its single
        stream (restored from last.pt on resume)."""
        if self.dist.joined:
            ss = np.random.SeedSequence([self.seed, _stream_id("rank"), epoch, self.dist.rank])
            state = ss.generate_state(2)
            torch.manual_seed(int(state[0]) << 32 | int(state[1]))

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision when `trainer.amp=true`, on CUDA or the CPU (bf16 by default: no loss
        scaler)."""
        return self.speed.autocast()

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A loss scaler, active only for fp16 autocast (bf16 keeps fp32's exponent range)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

    def progress(self, iterable: Iterable, **kwargs: Any) -> Iterator:
        """A tqdm bar on a terminal, silent when stderr is not a TTY (logs, CI, multirun)."""
        disable = None if self.dist.is_main else True
        return tqdm(iterable, disable=disable, dynamic_ncols=True, leave=False, **kwargs)

    def save(self, name: str, payload: dict[str, Any]) -> Path:
        """Write a checkpoint (rank 0); when this returns, every rank can read it."""
        path = self.ckpt_dir / f"{name}.pt"
        if self.dist.is_main:
            save_checkpoint(path, payload)
        self.dist.barrier()
        return path

    def resume_state(self) -> dict[str, Any] | None:
        """The `last.pt` of this run dir, if a previous (killed) run left one."""
        path = self.ckpt_dir / "last.pt"
        if not path.is_file():
            return None
        ckpt = load_checkpoint(path, "hydra.run.dir")
        if "averaged_from" in ckpt:  # experiments/average_checkpoints.py: a generator alone
            raise PpganError(
                f"hydra.run.dir: {path} is an averaged generator, not a training checkpoint; "
                "it cannot be resumed"
            )
        log.info("resuming from %s (epoch %s)", path, ckpt.get("epoch"))
        return ckpt

    def log_means(self, sums: dict[str, torch.Tensor], count: int, step: int) -> None:
        """Write on-device sums as means to TensorBoard (one host read per tag and epoch); a
        non-finite sum stops the run (see `require_finite`). Under torchrun the sums are of
        per-rank means over equal shards: their mean over ranks is the global batch's."""
        sums = self.dist.mean(sums)
        for tag, value in sums.items():
            require_finite(value, tag)
        for tag, value in sums.items():
            self.writer.add_scalar(tag, float(value) / count, step)

    def resume(self, nets: dict, opts: dict, select: Selection) -> int:
        """Restore networks, optimizers, selection state and RNGs from `last.pt` of this run dir,
        then apply the trainer's speed switches to them (`Speed.prepare`): every training loop
        calls this once, after building its networks and optimizers and before training.

        Returns:
            The epoch to start from (0 for a fresh run).
        """
        start = 0
        if (ckpt := self.resume_state()) is not None:
            self.check_same_config(ckpt)
            restore(ckpt, nets, opts)
            select.load_state_dict(ckpt["selection"])
            start = ckpt["epoch"]
        self.speed.prepare({name: net for name, (net, _) in nets.items()}, opts.values())
        return start

    def check_same_config(self, ckpt: dict[str, Any]) -> None:
        """Refuse to resume a run dir whose training config differs from this run's."""
        saved = ckpt.get("train_config")
        if saved is None:
            raise PpganError(
                "hydra.run.dir: last.pt does not record the config it was trained with "
                "(written by an older ppgan); start a new run dir"
            )
        if changes := config_changes(saved, self.train_config):
            raise PpganError(
                f"hydra.run.dir: {self.out_dir} was trained with another config ({changes}); "
                "resume with the original overrides or use a new run dir"
            )

    def end_epoch(
        self, epoch: int, nets: dict, opts: dict, select: Selection, improved: bool, **extra: Any
    ) -> None:
        """Checkpoint a finished epoch: always `last.pt`, `best.pt` when it improved, and
        `epoch_NNNN.pt` every `task.keep_every` epochs (0: none), so a choice among epochs can
        be made afterwards on the validation split (`task.select` fixes one while training)."""
        payload = snapshot(
            epoch + 1,
            nets,
            opts,
            selection=select.state_dict(),
            train_config=self.train_config,
            **extra,
        )
        if improved:
            self.save("best", payload)
        if self.keep_every and (epoch + 1) % self.keep_every == 0:
            self.save(f"epoch_{epoch + 1:04d}", payload)
        self.save("last", payload)

    def finish(self, metrics: dict[str, float]) -> dict[str, float]:
        """Write metrics.json and the HParams entry, close TensorBoard; returns the metrics
        (rank 0's on every rank)."""
        metrics = self.dist.broadcast({k: float(v) for k, v in metrics.items()})
        if not self.dist.is_main:
            return metrics
        if bad := [k for k, v in metrics.items() if not np.isfinite(v)]:
            log.warning("non-finite final metrics: %s", bad)
        write_json(self.out_dir / "metrics.json", metrics)
        # run_name="." keeps the hparams entry in this job's own tb/ so multirun jobs compare.
        self.writer.add_hparams(_flat_hparams(self.cfg), metrics, run_name=".")
        self.writer.close()
        self._writer = None
        log.info("metrics: %s", json.dumps({k: round(v, 4) for k, v in metrics.items()}))
        log.info("run dir: %s", self.out_dir)
        return metrics


def require_finite(value: torch.Tensor, what: str) -> None:
    """Stop a diverging run with a clear message (the last good checkpoint stays on disk)."""
    if not torch.isfinite(value).all():
        raise PpganError(f"training diverged: {what} is not finite; last good checkpoint kept")


class Selection:
    """Model selection and early stopping on a validation score (lower is better).

    A score is a tuple compared lexicographically, e.g. `(1 - val_acc, val_loss)`: the best
    accuracy, ties broken by the loss.
    """

    def __init__(self, patience: int, warmup: int = 0):
        self.patience, self.warmup = patience, warmup
        self.best: list[float] | None = None
        self.best_epoch, self.bad_epochs = -1, 0

    def update(self, score: tuple[float, ...], epoch: int) -> bool:
        """Record `score` of `epoch`; True when it is a new best (never during the warm-up).

        A non-finite entry (NaN, inf) counts as the worst possible value (+inf): it can be a best
        only until any finite score arrives, and never blocks one (NaN compares false to all).
        """
        if epoch < self.warmup:
            return False
        score_ = [float(v) if math.isfinite(v) else math.inf for v in score]
        if self.best is None or score_ < self.best:
            self.best, self.best_epoch, self.bad_epochs = score_, epoch, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.bad_epochs >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        best = state["best"]
        self.best = None if best is None else [v if math.isfinite(v) else math.inf for v in best]
        self.best_epoch, self.bad_epochs = state["best_epoch"], state["bad_epochs"]


def snapshot(
    epoch: int,
    nets: dict[str, tuple[torch.nn.Module, dict]],
    opts: dict[str, torch.optim.Optimizer],
    **extra: Any,
) -> dict[str, Any]:
    """A checkpoint payload: each net's state and spec, optimizers, epoch, RNG states."""
    payload: dict[str, Any] = {"epoch": epoch, "rng": torch.get_rng_state(), **extra}
    if torch.cuda.is_available():
        payload["cuda_rng"] = torch.cuda.get_rng_state_all()
    for name, (net, spec) in nets.items():
        payload[name], payload[f"{name}_spec"] = net.state_dict(), spec
    for name, opt in opts.items():
        payload[f"{name}_opt"] = opt.state_dict()
    return payload


def restore(
    ckpt: dict[str, Any],
    nets: dict[str, tuple[torch.nn.Module, dict]],
    opts: dict[str, torch.optim.Optimizer],
) -> None:
    """Load a `snapshot` back; refuse if the run dir's networks differ from the config's."""
    for name, (net, spec) in nets.items():
        if ckpt.get(f"{name}_spec") != spec:
            raise PpganError(
                f"hydra.run.dir: last.pt holds a different '{name}' network than the config asks "
                "for; resume with the original overrides or use a new run dir"
            )
        net.load_state_dict(ckpt[name])
    for name, opt in opts.items():
        opt.load_state_dict(ckpt[f"{name}_opt"])
    torch.set_rng_state(ckpt["rng"])
    if "cuda_rng" in ckpt and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(ckpt["cuda_rng"])
