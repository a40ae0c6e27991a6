"""Anonymizers the evaluation compares (each selectable by config): the identity "anonymizer",
pure noise, Gaussian blur, pixelation, k-Same-Pixel, the class prototype, and a trained ppgan
generator."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms.functional import gaussian_blur

from ppgan.data import ImageData
from ppgan.engine.checkpoint import load_frozen_parts
from ppgan.errors import require_nonnegative


class Anonymizer:
    """`fit(data)` once (most need nothing), then `__call__(batch) -> images` in [-1, 1].

    `stochastic`: the output is drawn from the global RNG (PP-RID's random person), so the
    evaluation seeds it (`ppgan.tasks.evaluate`)."""

    stochastic = False

    def fit(self, data: ImageData) -> Anonymizer:
        return self

    def __call__(self, batch: dict[str, Tensor]) -> Tensor:
        raise NotImplementedError


class Original(Anonymizer):
    """Output = input: every attack must report its numbers on the original images."""

    def __call__(self, batch):
        return batch["images"]


class Noise(Anonymizer):
    """Uniform noise: every attack must report chance."""

    def __init__(self, seed: int = 0):
        self.seed = seed

    def __call__(self, batch):
        g = torch.Generator(device=batch["images"].device).manual_seed(
            self.seed + int(batch["index"][0])
        )
        return torch.rand(batch["images"].shape, generator=g, device=batch["images"].device) * 2 - 1


class GaussianBlur(Anonymizer):
    def __init__(self, sigma: float = 3.0):
        self.sigma = sigma

    def __call__(self, batch):
        k = 2 * round(3 * self.sigma) + 1
        return gaussian_blur(batch["images"], [k, k], [self.sigma, self.sigma])


class Pixelate(Anonymizer):
    """Average over `block` x `block` cells, shown at full size."""

    def __init__(self, block: int = 8):
        self.block = block

    def __call__(self, batch):
        x = batch["images"]
        small = F.avg_pool2d(x, self.block, ceil_mode=True)
        return F.interpolate(small, size=x.shape[-2:], mode="nearest")


class KSamePixel(Anonymizer):
    """k-Same-Pixel (Newton et al. 2005): the average of the k training images nearest in pixel
    space among *other* identities, so no output is closer to its own person than to k others."""

    def __init__(self, k: int = 5, max_pool: int = 4096):
        self.k, self.max_pool = k, max_pool

    def fit(self, data: ImageData) -> KSamePixel:
        idx = data.indices("train")[: self.max_pool]
        pool = data.batch(idx)
        self.pool = pool["images"]
        self.flat = self.pool.flatten(1)
        self.pool_ids = data.require_ids("baseline ksame")[idx]
        return self

    def __call__(self, batch):
        d = torch.cdist(batch["images"].flatten(1), self.flat)  # [B, P]
        d = d.masked_fill(batch["id"][:, None] == self.pool_ids[None, :], float("inf"))
        nearest = d.topk(self.k, dim=1, largest=False).indices  # [B, k]
        return self.pool[nearest].mean(1)


class Prototype(Anonymizer):
    """The mean training image of the case's disease class: a fully collapsed "anonymizer".
    It keeps the disease and no person, so it saturates identity and disease metrics; the
    evaluation must still make it look bad (within-class diversity, realism)."""

    def fit(self, data: ImageData) -> Prototype:
        idx = data.indices("train")
        images, dis = data.batch(idx)["images"], data.dis[idx]
        self.means = torch.stack(
            [
                images[dis == c].mean(0) if bool((dis == c).any()) else images.mean(0)
                for c in range(data.n_classes)
            ]
        )
        return self

    def __call__(self, batch):
        return self.means[batch["dis"]]


class Generator(Anonymizer):
    """A trained ppgan generator (checkpoint of task=anonymizer): z = mu, or with
    `temperature > 0` the posterior's noise scaled by it (`Encoder.release`; task=export's
    `task.temperature`). `temperature=None`: the one its checkpoint records
    (`release_temperature`)."""

    def __init__(self, checkpoint: str, quantize: bool = True, temperature: float | None = None):
        if temperature is not None:
            check_temperature(temperature, "task.methods.*.temperature")
        self.checkpoint, self.quantize, self.temperature = checkpoint, quantize, temperature

    @property
    def stochastic(self) -> bool:
        # PP-RID draws a new identity code per image; a temperature redraws part of the content
        return bool(self.enc.identity_dim) or self.temperature > 0

    def fit(self, data: ImageData) -> Generator:
        (self.enc, self.dec), ckpt = load_frozen_parts(
            self.checkpoint,
            ("encoder", "decoder"),
            data.shape,
            data.device,
            "task.methods.*.checkpoint",
        )
        self.variant = ckpt.get("variant")  # what it was trained against: mir / sir
        self.temperature = release_temperature(self.temperature, ckpt, "task.methods.*.temperature")
        return self

    @torch.no_grad()
    def __call__(self, batch):
        x = self.dec(self.enc.release(batch["images"], batch["masks"], self.temperature))
        return quantize(x) if self.quantize else x


def check_temperature(t, key: str) -> None:
    """A release temperature (`Encoder.release`) is a number >= 0; `key` names it in the error."""
    require_nonnegative(t, key, " (0: the posterior mean)")


def release_temperature(asked: float | None, ckpt: dict, key: str) -> float:
    """The temperature a generator is released at: `asked` (the `key` of task=export or
    task=evaluate), or when that is null the one its checkpoint records (task=anonymizer's
    `objective.release_temperature`, chosen with the method; 0 for checkpoints from before it
    was recorded)."""
    if asked is None:
        asked, key = ckpt.get("release_temperature", 0.0), "the checkpoint's release_temperature"
    check_temperature(asked, key)
    return float(asked)


def quantize(x: Tensor) -> Tensor:
    """Round [-1, 1] images to the 256 levels of uint8: what task=export ships is evaluated."""
    return ((x + 1) * 127.5).round() / 127.5 - 1
