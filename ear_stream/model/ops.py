"""The fused operators ``excise`` and ``msgms``: extension when built, reference otherwise.

``ear_stream._C`` registers ``torch.ops.ear.excise`` / ``torch.ops.ear.msgms``
with CPU and CUDA kernels (``csrc/``). This module registers their fake (meta)
implementations so the ops trace under ``torch.compile`` and CUDA graphs, and
exposes Python wrappers with the documented signatures. Set
``EAR_STREAM_BACKEND=reference`` to force the pure-PyTorch path.
"""

from __future__ import annotations

import logging
import os
import warnings

import torch

from . import reference as ref

_EXTENSION_ERROR: str | None = None
try:
    if os.environ.get("EAR_STREAM_BACKEND", "").lower() == "reference":
        raise ImportError("EAR_STREAM_BACKEND=reference")
    from .. import _C  # type: ignore[attr-defined]  # noqa: F401  (registers torch.ops.ear.*)

    #: the CUDA kernels' limits (csrc/ops/limits.h); a library built from older sources lacks the op
    _CUDA_LIMITS: tuple[int, int] = tuple(int(v) for v in torch.ops.ear._cuda_limits())  # type: ignore[assignment]
    _HAS_EXTENSION = True
except ImportError as exc:  # not built, or built against another torch
    _HAS_EXTENSION = False
    _EXTENSION_ERROR = str(exc)
except (AttributeError, RuntimeError):  # built from older sources than this checkout: the reference ops, said once
    _HAS_EXTENSION = False
    _EXTENSION_ERROR = "ear_stream._C is older than csrc/ (no ear::_cuda_limits): rebuild it (make build)"


def backend() -> str:
    """``"extension"`` when the compiled ops are in use, ``"reference"`` otherwise."""
    return "extension" if _HAS_EXTENSION else "reference"


def extension_error() -> str | None:
    """Why the extension did not load (``None`` when it did)."""
    return _EXTENSION_ERROR


def extension_has_cuda() -> bool:
    return _HAS_EXTENSION and bool(torch.ops.ear._cuda_available())


def backend_description() -> str:
    """What runs the fused ops, for the start-up log line: ``extension (cpu+cuda)``, ``extension (cpu)``
    or ``reference (why)``."""
    if not _HAS_EXTENSION:
        return f"reference ({_EXTENSION_ERROR})"
    return "extension (cpu+cuda)" if extension_has_cuda() else "extension (cpu; built without CUDA kernels)"


#: largest box the CUDA msgms kernel filters in shared memory, read from the op library (``kMaxCudaBox`` in
#: csrc/ops/limits.h); larger boxes run the reference ops on that device, with the same numerics. Without the
#: extension every box runs the reference ops, and the bound is moot (0).
MAX_CUDA_BOX: int = _CUDA_LIMITS[0] if _HAS_EXTENSION else 0
#: CUDA devices whose architecture the extension has no kernel image for: they use the reference ops
_REFERENCE_DEVICES: set[int] = set()
log = logging.getLogger("ear_stream.model.ops")


def _guarded(call, device: torch.device):
    """Run an extension op; on a CUDA device without a kernel image, warn once and return None.

    A fat binary covers every architecture from Turing on (setup.py), but a
    newer GPU than the toolkit knew, or a build with a narrowed
    ``TORCH_CUDA_ARCH_LIST``, must degrade to the reference ops rather than fail
    every batch.
    """
    try:
        return call()
    except RuntimeError as exc:
        if device.type != "cuda" or "no kernel image" not in str(exc):
            raise
        index = device.index if device.index is not None else torch.cuda.current_device()
        _REFERENCE_DEVICES.add(index)
        log.warning("ear_stream._C has no kernel image for CUDA device %d; using the reference ops on it", index)
        return None


if _HAS_EXTENSION:

    @torch.library.register_fake("ear::excise")
    def _excise_fake(images, attention, m, hint=True):
        return torch.empty_like(images), images.new_empty((images.shape[0],), dtype=torch.float32)

    @torch.library.register_fake("ear::msgms")
    def _msgms_fake(images, recon, scales, c, median, box, want_map):
        b, _, h, w = images.shape
        score = images.new_empty((b,), dtype=torch.float32)
        dmap = images.new_empty((b, 1, h, w) if want_map else (0,), dtype=torch.float32)
        return score, dmap


def _use_extension(t: torch.Tensor) -> bool:
    if not _HAS_EXTENSION:
        return False
    if t.device.type == "cuda":
        if not extension_has_cuda():
            warnings.warn("ear_stream._C was built without CUDA; using the reference ops", stacklevel=3)
            return False
        return (t.device.index if t.device.index is not None else torch.cuda.current_device()) not in _REFERENCE_DEVICES
    return t.device.type == "cpu"


def excise(
    images: torch.Tensor, attention: torch.Tensor | None, m: int, hint: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Q3 mask + nearest upsample + tile means + composition → (composite, mask_ratio[B])."""
    ref.check_excise_args(images, attention, m)
    if _use_extension(images):
        out = _guarded(lambda: torch.ops.ear.excise(images, attention, int(m), bool(hint)), images.device)
        if out is not None:
            return out
    return ref.excise_reference(images, attention, int(m), hint)


def msgms(
    images: torch.Tensor,
    recon: torch.Tensor,
    scales: int = 3,
    c: float = ref.GMS_C,
    median: bool = True,
    box: int = 21,
    want_map: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-image max of the MSGMS distance map → (score[B], map[B,1,H,W] or None)."""
    ref.check_msgms_args(images, recon, scales, box)
    if _use_extension(images) and not (images.device.type == "cuda" and box > MAX_CUDA_BOX):
        out = _guarded(
            lambda: torch.ops.ear.msgms(images, recon, int(scales), float(c), bool(median), int(box), bool(want_map)),
            images.device,
        )
        if out is not None:
            return out[0], (out[1] if want_map else None)
    return ref.msgms_reference(images, recon, scales, c, median, box, want_map)
