"""Which numeric path the U-Net runs on: fp32, bf16 autocast, channels_last — chosen at run time.

On the CPU the U-Net is almost all of the time. CPUs with bf16 units (AMX-BF16 on
Intel since Sapphire Rapids, AVX512-BF16 on Intel and AMD Zen 4/5) run oneDNN's
bf16 convolutions several times faster than fp32, and channels_last (NHWC) is
oneDNN's native layout with or without them (measured in BENCHMARKS.md). The
choice is made from what torch/oneDNN report on the machine at hand, never from
a list of CPU names, so one artifact runs at the best speed wherever it lands.

bf16 is autocast only: weights stay fp32, losses and the fused ``excise``/``msgms``
ops compute in fp32 (the reconstruction is cast back once, see :meth:`Precision.run`).
``int8`` (post-training quantisation) is refused: it lost 0.09 image AUROC against a
bar of 0.01 (``benchmarks/int8_ptq.py``, BENCHMARKS.md).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from functools import lru_cache

import torch

from ..errors import ConfigError
from .config import DEFAULT_PRECISION, PRECISION_CHOICES

__all__ = ["DEFAULT_PRECISION", "PRECISION_CHOICES", "Precision", "PrecisionUnavailable", "resolve_precision"]


class PrecisionUnavailable(ConfigError):
    """A precision was asked for that this machine or build cannot run."""


@lru_cache(maxsize=1)
def cpu_bf16_units() -> bool:
    """Whether oneDNN reports native bf16 support on this CPU (AVX512-BF16 or AMX-BF16)."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without the probe: assume none
        return False


def cpu_capability() -> str:
    """One line naming the CPU's vector level and its bf16 units, for logs and benchmarks."""
    try:
        level = torch.backends.cpu.get_cpu_capability()
    except AttributeError:
        level = "unknown"
    return f"cpu {level}, bf16 units {'yes' if cpu_bf16_units() else 'no'}"


@dataclass(frozen=True)
class Precision:
    """A resolved numeric path on one device type: what autocast and layout the U-Net runs with."""

    name: str  # "fp32" or "bf16"
    device_type: str  # "cpu" or "cuda"
    channels_last: bool

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.name == "bf16" else torch.float32

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast for the U-Net's forward (and the saliency network's), a no-op in fp32."""
        if self.name != "bf16":
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=torch.bfloat16)

    def layout(self, t: torch.Tensor) -> torch.Tensor:
        """A 4-D input in the layout the U-Net runs fastest with (no copy when it already is)."""
        if self.channels_last and t.dim() == 4:
            return t.contiguous(memory_format=torch.channels_last)
        return t

    def module(self, m: torch.nn.Module) -> torch.nn.Module:
        """A module's weights in that layout (in place, as ``Module.to`` does)."""
        return m.to(memory_format=torch.channels_last) if self.channels_last else m

    def run(self, fn, x: torch.Tensor) -> torch.Tensor:
        """``fn(x)`` on this path, the result back in fp32: the one cast of the U-Net's output."""
        with self.autocast():
            return fn(self.layout(x)).float()

    def describe(self) -> str:
        return f"{self.name}{' autocast' if self.name == 'bf16' else ''}, {'channels_last' if self.channels_last else 'contiguous'}"

    def to_json(self) -> str:
        """What the manifest records (``training.precision``)."""
        return self.describe()


def compile_module(module: torch.nn.Module, dynamic: bool | None = None):
    """``torch.compile`` with inductor, or ``EAR_STREAM_COMPILE_BACKEND`` (tests use aot_eager: the same
    graph capture, without minutes of C++ code generation on a small CPU).

    ``dynamic=True`` for inference: one graph serves every batch size (a stream's batches vary).
    """
    import os

    return torch.compile(module, backend=os.environ.get("EAR_STREAM_COMPILE_BACKEND", "inductor"), dynamic=dynamic)


def resolve_precision(requested: str, device: torch.device | str) -> Precision:
    """``auto``: bf16 + channels_last on CUDA and on CPUs with bf16 units, else fp32 + channels_last.

    fp32 keeps channels_last on both device types (faster than contiguous on every CPU
    measured, BENCHMARKS.md); ``bf16`` on a CPU without bf16 units is allowed (it is
    emulated, slower, but numerically the same path) so parity can be checked anywhere.
    """
    device_type = torch.device(device).type
    if requested not in PRECISION_CHOICES:
        raise PrecisionUnavailable(f"precision must be one of {PRECISION_CHOICES}, got {requested!r}")
    if requested == "int8":
        raise PrecisionUnavailable(
            "--precision int8 is not offered: post-training INT8 (PT2E, x86 inductor quantizer) lost 0.09 image "
            "AUROC on Magnetic Tile, against a bar of 0.01 (BENCHMARKS.md); use auto, bf16 or fp32"
        )
    if requested == "auto":
        fast = device_type == "cuda" or (device_type == "cpu" and cpu_bf16_units())
        requested = "bf16" if fast else "fp32"
    return Precision(requested, device_type, channels_last=True)
