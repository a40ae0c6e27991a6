"""Stride-2 convolutions computed at stride 1 on a 2x2 space-to-depth view (`trainer.subpixel`).

Every convolution of the generator and the critic is a stride-2 convolution (or transposed
convolution) with an even kernel k and Keras' 'same' padding (k - 2) / 2 (models/vae.py). The same
function can be computed at stride 1 with kernel k / 2 on four times the channels:

* Conv2d: pad the input by p = (k - 2) / 2, fold each 2x2 block of pixels into 4 channels
  (`pixel_unshuffle`), and correlate with the kernel's four phases stacked as input channels
  (weight [O, I, k, k] -> [O, 4I, k/2, k/2]); out[i] = sum_b sum_r w[2b + r] x_pad[2(i + b) + r].
* ConvTranspose2d: each output pixel's parity r selects one phase of the kernel, so a stride-1
  correlation of the input with the phases stacked as output channels, followed by `pixel_shuffle`
  and a crop, gives the transposed convolution (the "sub-pixel convolution" of Shi et al. 2016).

The parameters, their names and the checkpoints are those of the plain modules (the weight is
re-arranged on every call: one more small kernel each time, and autocast cannot cache its cast);
only the order of floating-point sums differs, like any other `trainer.*` switch. Stride-1
kernels are what cuDNN and oneDNN optimise best, while a stride-2 convolution's data gradient --
taken twice per critic step by the gradient penalty -- runs on strided kernels. Whether it pays
is measured (experiments/bench_gan_step.py), not assumed. Only the trained networks are
converted (`Speed.prepare`); frozen networks loaded from checkpoints stay plain.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def eligible(m: nn.Module) -> bool:
    """A stride-2, even-kernel, 'same'-padded, ungrouped convolution of exactly this class."""
    if type(m) not in (nn.Conv2d, nn.ConvTranspose2d):
        return False
    k = m.kernel_size
    return (
        k[0] == k[1]
        and k[0] % 2 == 0
        and m.stride == (2, 2)
        and m.padding == ((k[0] - 2) // 2,) * 2
        and m.dilation == (1, 1)
        and m.groups == 1
        and m.padding_mode == "zeros"
        and getattr(m, "output_padding", (0, 0)) == (0, 0)
    )


def _phases(w: Tensor) -> Tensor:
    """[A, B, k, k] -> [A, 4B, k/2, k/2]: the kernel's four 2x2 phases stacked with the second
    dimension, in `pixel_unshuffle`'s channel order (b * 4 + 2 * row parity + column parity)."""
    a, b, k, _ = w.shape
    h = k // 2
    w = w.reshape(a, b, h, 2, h, 2).permute(0, 1, 3, 5, 2, 4)  # [A, B, 2, 2, h, h]
    return w.reshape(a, b * 4, h, h)


def _layout(x: Tensor, weight: Tensor) -> torch.memory_format:
    """The layout cuDNN and oneDNN give a convolution's output: NHWC when the input *or* the
    weight is (trainer.channels_last converts the weights; the inputs come NCHW). pad and
    pixel_(un)shuffle return NCHW tensors, so the operands are put back in it explicitly."""

    def nhwc(t: Tensor) -> bool:
        return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()

    return torch.channels_last if nhwc(x) or nhwc(weight) else torch.contiguous_format


class SubpixelConv2d(nn.Conv2d):
    """nn.Conv2d(stride 2, kernel k, padding (k - 2) / 2) computed at stride 1 (module doc)."""

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] % 2 or x.shape[-2] % 2:  # nn.Conv2d floors an odd size: no 2x2 blocks
            return super().forward(x)
        p, fmt = self.padding[0], _layout(x, self.weight)
        x = F.pixel_unshuffle(F.pad(x, (p, p, p, p)), 2).contiguous(memory_format=fmt)
        return F.conv2d(x, _phases(self.weight).contiguous(memory_format=fmt), self.bias)


class SubpixelConvTranspose2d(nn.ConvTranspose2d):
    """nn.ConvTranspose2d(stride 2, kernel k, padding (k - 2) / 2) at stride 1 (module doc)."""

    def forward(self, x: Tensor, output_size=None) -> Tensor:
        if output_size is not None:
            raise ValueError("SubpixelConvTranspose2d: output_size is not supported")
        k, p, fmt = self.kernel_size[0], self.padding[0], _layout(x, self.weight)
        h = k // 2
        n_rows, n_cols = x.shape[-2:]
        # Output j = 2q + r - p reads input rows q - b (b < h) with kernel row 2b + r: only the
        # q in [lo, hi] that reach an output in [0, 2H) are computed.
        lo, hi_r, hi_c = p // 2, (2 * n_rows - 1 + p) // 2, (2 * n_cols - 1 + p) // 2
        x = F.pad(x, (h - 1 - lo, hi_c - (n_cols - 1), h - 1 - lo, hi_r - (n_rows - 1)))
        x = x.contiguous(memory_format=fmt)
        # y[(o, r), q] = sum_b w[:, o, 2b + r] x[q - b]: a true convolution with the phases,
        # i.e. conv2d (a correlation) with them flipped.
        w = _phases(self.weight).transpose(0, 1).flip(-2, -1)  # [O * 4, I, h, h]
        bias = None if self.bias is None else self.bias.repeat_interleave(4)
        y = F.pixel_shuffle(F.conv2d(x, w.contiguous(memory_format=fmt), bias), 2)
        s = p - 2 * lo
        return y[..., s : s + 2 * n_rows, s : s + 2 * n_cols].contiguous(memory_format=fmt)


SUBPIXEL = {nn.Conv2d: SubpixelConv2d, nn.ConvTranspose2d: SubpixelConvTranspose2d}


def to_subpixel(net: nn.Module) -> int:
    """Swap every eligible convolution of `net` to its stride-1 form, in place (same parameters,
    same state_dict); returns how many were swapped."""
    n = 0
    for m in net.modules():
        if eligible(m):
            m.__class__ = SUBPIXEL[type(m)]
            n += 1
    return n
