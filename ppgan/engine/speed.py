"""The trainer's speed switches (`trainer.*`): autocast, memory format, backend flags, fused Adam,
stride-1 (sub-pixel) convolutions, torch.compile. Config decides which are on; this module is how
each is applied, once, for the training loops (through `RunContext`) and the benchmark alike."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from omegaconf import DictConfig
from torch import nn

from ppgan.errors import PpganError
from ppgan.models.subpixel import to_subpixel

log = logging.getLogger(__name__)

# Networks whose forward must stay eager: the gradient penalty differentiates the critic twice
# (autograd.grad(create_graph=True), then backward), which compiled autograd does not support.
NOT_COMPILED = ("critic",)


def cpu_bf16_native() -> bool | None:
    """Whether oneDNN has native bfloat16 kernels on this CPU (AVX-512 BF16 or AMX); None when
    this PyTorch build cannot tell."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a private op: absent from some builds
        return None


@dataclass(frozen=True)
class Speed:
    """How to run the networks on `device`; none of these switches changes the model or the
    objective, but `amp` and `tf32` compute in lower precision (see conf/trainer/default.yaml)."""

    device: torch.device
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False
    cudnn_benchmark: bool = False
    tf32: bool = False
    fused_adam: bool = False
    subpixel: bool = False
    compile: bool = False

    @classmethod
    def from_config(cls, trainer: DictConfig | Mapping, device: torch.device) -> Speed:
        amp_dtype = None
        if trainer.get("amp"):
            name = str(trainer.get("amp_dtype", "bfloat16"))
            if name not in ("bfloat16", "float16"):
                raise PpganError(f"trainer.amp_dtype={name}: choose bfloat16 or float16")
            amp_dtype = getattr(torch, name)
            if device.type == "cpu" and amp_dtype == torch.float16:
                raise PpganError("trainer.amp_dtype=float16: CPU autocast here is bfloat16 only")
            if device.type == "cpu" and cpu_bf16_native() is False:
                # Not an error: the user may need the bf16 run's numbers (a committed result).
                log.warning(
                    "trainer.amp=true on a CPU without native bfloat16 kernels (no AVX-512 BF16 "
                    "or AMX): autocast emulates them, 16.8x slower than float32 on a GAN "
                    "iteration (experiments/results/perf/README.md); trainer.amp=false is faster"
                )
        cuda = device.type == "cuda"

        def switch(key: str) -> bool:
            value = trainer.get(key, False)
            if value == "auto":  # on CUDA only (see conf/trainer/default.yaml)
                return cuda
            if not isinstance(value, bool):
                raise PpganError(f"trainer.{key}={value}: choose true, false or auto")
            return value

        return cls(
            device=device,
            amp_dtype=amp_dtype,
            channels_last=switch("channels_last"),
            # Backend flags of cuDNN / cuBLAS: meaningless on the CPU, so off there.
            cudnn_benchmark=cuda and switch("cudnn_benchmark"),
            tf32=cuda and switch("tf32"),
            fused_adam=switch("fused_adam"),
            subpixel=switch("subpixel"),
            compile=switch("compile"),
        )

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 (or fp16, CUDA only) autocast when `trainer.amp=true`, else a no-op."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def apply_backends(self) -> None:
        """Set the process-wide backend flags; every flag is assigned, so a second `Speed` in the
        same process (the benchmark's settings) does not inherit the first one's."""
        torch.backends.cudnn.benchmark = self.cudnn_benchmark
        # TF32 for cuDNN convolutions *and* cuBLAS matmuls, or for neither: PyTorch's own default
        # (convolutions TF32, matmuls fp32) is neither fp32 nor the fast setting.
        torch.backends.cuda.matmul.allow_tf32 = self.tf32
        torch.backends.cudnn.allow_tf32 = self.tf32

    def prepare(
        self,
        nets: Mapping[str, nn.Module],
        opts: Iterable[torch.optim.Optimizer] = (),
    ) -> None:
        """Apply the switches to a loop's trained networks (in place, so the loop's references and
        its optimizers' parameter lists stay valid) and optimizers.

        channels_last converts 4-D parameters (and their optimizer state) to NHWC strides: the
        same values, so the same math, but oneDNN and cuDNN pick faster convolution kernels.
        Fused Adam is the same update in one kernel per parameter group. `subpixel` computes every
        stride-2 convolution at stride 1 (models/subpixel.py: the same parameters and function).
        `compile` compiles the forward of every network but those in `NOT_COMPILED`.
        """
        for net in nets.values():
            to_memory_format(net, self.memory_format)
            if self.subpixel:
                to_subpixel(net)
        for opt in opts:
            if self.channels_last:
                _state_to_memory_format(opt, self.memory_format)
            if self.fused_adam and isinstance(opt, torch.optim.Adam | torch.optim.AdamW):
                for group in opt.param_groups:
                    group["foreach"], group["fused"] = None, True
        if self.compile:
            for name, net in nets.items():
                if name not in NOT_COMPILED:
                    net.compile()


def to_memory_format(net: nn.Module, memory_format: torch.memory_format) -> nn.Module:
    """`net.to(memory_format=...)` in place (parameters keep their identity)."""
    return net.to(memory_format=memory_format)


def memory_format_of(net: nn.Module) -> torch.memory_format:
    """channels_last when the network's first 4-D parameter has NHWC strides."""
    for p in net.parameters():
        if p.dim() == 4:
            nhwc = p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
            return torch.channels_last if nhwc else torch.contiguous_format
    return torch.contiguous_format


def _state_to_memory_format(opt: torch.optim.Optimizer, memory_format: torch.memory_format):
    # Adam's moments are created like their parameter; a resumed state is contiguous and would
    # make every update mix layouts.
    for state in opt.state.values():
        for key, value in state.items():
            if torch.is_tensor(value) and value.dim() == 4:
                state[key] = value.contiguous(memory_format=memory_format)
